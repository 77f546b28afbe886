"""An external evaluator as a command: the rounds' `eval_command:` hook (lmms-eval, VLMEvalKit, a script of yours).

    figures = run_eval_command("lmms-eval --model qwen2_5_vl --model_args pretrained={policy} "
                               "--tasks mmstar --output_path {output_dir}", policy, output_dir)

The template's `{policy}` and `{output_dir}` are filled in shell-quoted and the command runs under `bash -c` (so
`source /opt/lmms/bin/activate && lmms-eval ...` works: a separate environment is the safe way to run lmms-eval,
docs/evaluation.md), its output going to `output_dir/eval_command.log`. A non-zero exit raises an error quoting the
log's tail. Results (`read_results`): the newest `*.json` under `output_dir` holding a `"results"` mapping
(lmms-eval's `<output_path>/<model>/<date>_results.json`: `{"results": {task: {"<metric>,<filter>": value}}}`), else
the newest `*.json`; its numeric leaves, flattened to `"task/metric,filter": value`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import ConfigError, ExpectedError, InputError, InputNotFound

PLACEHOLDERS = ("policy", "output_dir")


class EvalCommandError(ExpectedError, RuntimeError):
    """The evaluator exited non-zero (its message quotes the command and the end of its output); exit status 1."""


def template_problems(template: str, name: str = "eval_command") -> list[str]:
    """What is wrong with a command template (an empty list when nothing)."""
    try:
        template.format(**{p: "x" for p in PLACEHOLDERS})
    except (KeyError, IndexError, ValueError) as e:
        return [f"{name}: {template!r} has a placeholder other than {{policy}} and {{output_dir}} ({e!r}); "
                "write a literal brace as {{ or }}"]  # fmt: skip
    if "{policy}" not in template:
        return [f"{name}: {template!r} never names {{policy}}: every round would evaluate the same model"]
    return []


def _numbers(value: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(value, bool):
        return {}
    if isinstance(value, int | float):
        return {prefix: float(value)}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            out.update(_numbers(item, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {}


def read_results(output_dir: str | Path) -> dict[str, float]:
    """The figures of the newest results JSON under `output_dir` (module docstring)."""
    found = sorted(Path(output_dir).rglob("*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise InputNotFound(f"eval_command wrote no .json results under {output_dir}")
    loaded = [(p, json.loads(p.read_text())) for p in found]
    with_results = [(p, d) for p, d in loaded if isinstance(d, Mapping) and isinstance(d.get("results"), Mapping)]
    path, data = (with_results or loaded)[-1]
    figures = _numbers(data["results"] if with_results else data)
    if not figures:
        raise InputError(f"{path}: no numeric result in it")
    return figures


def run_eval_command(
    template: str, policy: str | Path, output_dir: str | Path, timeout: float | None = None
) -> dict[str, float]:
    """Run the evaluator on `policy`, its results in `output_dir` (made fresh); return `read_results(output_dir)`."""
    problems = template_problems(template)
    if problems:
        raise ConfigError(problems[0])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = template.format(policy=shlex.quote(str(policy)), output_dir=shlex.quote(str(out)))
    log = out / "eval_command.log"
    with open(log, "w") as f:
        proc = subprocess.run(["bash", "-c", command], stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise EvalCommandError(f"eval_command exited with {proc.returncode}: {command}\n{tail}")
    return read_results(out)
