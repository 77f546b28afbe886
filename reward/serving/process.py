"""Run `recipes/serve_reward.py` as a child process on a free loopback port (tests, benchmarks).

    with server_process(model_dir, "--max_wait_ms", "10") as (proc, url):
        RewardClient(url).score_groups(...)

The health check is a bounded loop; the process is always terminated (SIGTERM, then SIGKILL) on exit, and its log
tail is in the error when it fails to start. Needs a source checkout (the recipe lives beside the packages).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from common.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "recipes" / "serve_reward.py"


@contextmanager
def server_process(model: str | Path, *flags: str, start_timeout_s: float = 180.0,
                   env: dict | None = None) -> Iterator[tuple[subprocess.Popen, str]]:  # fmt: skip
    """Start the server for `model` with extra CLI `flags`; yield (process, base URL); stop it on exit."""
    port = free_port()
    cmd = [sys.executable, str(SCRIPT), "--model", str(model), "--port", str(port), *flags]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child_env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"reward server did not start (exit code {proc.poll()}):\n{tail}")
                try:
                    if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
