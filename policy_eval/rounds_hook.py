"""What the rounds loop asks of policy evaluation after each round: the policy benchmarks (`eval_benchmarks:`) and the
external evaluator (`eval_command:`), their figures kept in the round's evaluation and shown in its report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from policy_eval.evaluate import EvalPolicyConfig, evaluate_policy
from policy_eval.external import run_eval_command


def benchmark_data(entries: Sequence[str]) -> dict[str, str]:
    """`["NAME=PATH", ...]` -> {name: path} (a bare NAME: its hub id)."""
    from policy_eval import BENCHMARKS

    return {e.split("=", 1)[0]: e.split("=", 1)[1] if "=" in e else BENCHMARKS[e].HUB_ID for e in entries}


def policy_figures(policy: str, round_dir: Path, eval_benchmarks: Sequence[str], eval_command: str | None,
                   max_new_tokens: int, device: str) -> dict[str, Any]:  # fmt: skip
    """`{"benchmarks": {name: overall accuracy}, "external": {figure: value}}` (each only when configured); the full
    reports go to `round_dir/benchmarks/` and `round_dir/eval_command/`."""
    out: dict[str, Any] = {}
    if eval_benchmarks:
        data = benchmark_data(eval_benchmarks)
        cfg = EvalPolicyConfig(model=policy, benchmarks=",".join(data), data=[f"{n}={p}" for n, p in data.items()],
                               output_dir=str(round_dir / "benchmarks"), max_new_tokens=max_new_tokens,
                               device=device, overwrite_output_dir=True)  # fmt: skip
        report = evaluate_policy(cfg)
        out["benchmarks"] = {name: m["overall"] for name, m in report["benchmarks"].items()}
    if eval_command:
        out["external"] = run_eval_command(eval_command, policy, round_dir / "eval_command")
    return out


def figures_line(metrics: Mapping[str, Any]) -> str:
    """`mmstar 0.520, mathvista_testmini 0.610, ext: mmstar/average,none 0.540` for the round's log line."""
    parts = [f"{name} {value:.3f}" for name, value in (metrics.get("benchmarks") or {}).items()]
    parts += [f"ext: {name} {value:.3f}" for name, value in (metrics.get("external") or {}).items()]
    return ", ".join(parts)


def report_lines(records: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """The report's policy-benchmark table (one row per round) and each figure's first -> last round; [] when none."""
    rounds = sorted(records)
    columns = list(dict.fromkeys(
        (group, name) for r in rounds for group in ("benchmarks", "external")
        for name in (records[r].get("eval") or {}).get(group) or {}))  # fmt: skip
    if not columns:
        return []

    def value(r: int, column: tuple[str, str]) -> float | None:
        return ((records[r].get("eval") or {}).get(column[0]) or {}).get(column[1])

    header = [name if group == "benchmarks" else f"{name} (eval_command)" for group, name in columns]
    lines = ["## Policy benchmarks", "", "| round | held-out correct | " + " | ".join(header) + " |",
             "|---" * (len(columns) + 2) + "|"]  # fmt: skip
    for r in rounds:
        cells = [records[r]["eval"].get("accuracy"), *(value(r, c) for c in columns)]
        lines.append(f"| {r} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    lines.append("")
    for column, label in zip(columns, header):
        done = [(r, value(r, column)) for r in rounds if value(r, column) is not None]
        if len(done) > 1:
            lines.append(f"- {label}: {done[0][1]:.3f} -> {done[-1][1]:.3f} over {done[-1][0] - done[0][0]} rounds")
    return lines + [""]


def config_problems(eval_benchmarks: Sequence[str], eval_command: str | None) -> list[str]:
    """The rounds config's problems with these two fields (unknown benchmark, bad template)."""
    from policy_eval import BENCHMARKS
    from policy_eval.external import template_problems

    names = [entry.split("=", 1)[0] for entry in eval_benchmarks]
    problems = [
        f"eval_benchmarks: unknown {n!r}; choose from {sorted(BENCHMARKS)}" for n in names if n not in BENCHMARKS
    ]
    if len(set(names)) != len(names):
        problems.append(f"eval_benchmarks: a benchmark named twice in {list(eval_benchmarks)}")
    return problems + (template_problems(eval_command) if eval_command else [])
