"""Run a script under the real `deepspeed` launcher on CPU, as users run it (used by the distributed tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from common.distributed import free_port

REPO = Path(__file__).resolve().parents[1]


def cpu_env(nprocs: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="offline",
        DS_ACCELERATOR="cpu",
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    if nprocs > 1:
        env["OMP_NUM_THREADS"] = "1"  # 2 ranks on 2 cores: more threads oversubscribe and ZeRO-3 slows 50x
    return env


def run_deepspeed(script: str | Path, args: list[str], nprocs: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus N --master_port P script args...`; raises with the output tail on failure."""
    deepspeed = Path(sys.executable).parent / "deepspeed"
    cmd = [str(deepspeed), "--master_port", str(free_port()), "--num_gpus", str(nprocs), str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=cpu_env(nprocs), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"deepspeed run failed (rc={proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def refusal(run: Callable[[], object], exit_code: int = 2) -> BaseException:
    """The error behind a recipe run in process (`runpy`) that refuses: `common.cli.run_recipe` turns it into
    `SystemExit(exit_code)` raised from it."""
    with pytest.raises(SystemExit) as exit_:
        run()
    assert exit_.value.code == exit_code, f"exit status {exit_.value.code}, expected {exit_code}"
    assert exit_.value.__cause__ is not None
    return exit_.value.__cause__
