"""What the rounds loop asks of policy evaluation after each round: the policy benchmarks (`eval_benchmarks:`) and the
external evaluator (`eval_command:`), their figures kept in the round's evaluation (flat keys `benchmark/<name>` and
`external/<figure>`, so the rounds' wandb run logs them as it logs every other held-out figure) and shown in its
report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from policy_eval import BENCHMARKS
from policy_eval.evaluate import EvalPolicyConfig, evaluate_policy
from policy_eval.external import run_eval_command, template_problems

GROUPS = {"benchmark/": "", "external/": " (eval_command)"}  # key prefix -> label suffix in the report


def benchmark_data(entries: Sequence[str]) -> dict[str, str]:
    """`["NAME=PATH", ...]` -> {name: path} (a bare NAME: its hub id)."""
    return {e.split("=", 1)[0]: e.split("=", 1)[1] if "=" in e else BENCHMARKS[e].HUB_ID for e in entries}


def policy_figures(policy: str, round_dir: Path, eval_benchmarks: Sequence[str], eval_command: str | None,
                   max_new_tokens: int, device: str) -> dict[str, float]:  # fmt: skip
    """`{"benchmark/<name>": overall accuracy, "external/<figure>": value}` ({} when neither is configured); the full
    reports go to `round_dir/benchmarks/` and `round_dir/eval_command/`."""
    out: dict[str, float] = {}
    if eval_benchmarks:
        data = benchmark_data(eval_benchmarks)
        cfg = EvalPolicyConfig(model=policy, benchmarks=",".join(data), data=[f"{n}={p}" for n, p in data.items()],
                               output_dir=str(round_dir / "benchmarks"), max_new_tokens=max_new_tokens,
                               device=device, overwrite_output_dir=True)  # fmt: skip
        report = evaluate_policy(cfg)
        out.update({f"benchmark/{name}": m["overall"] for name, m in report["benchmarks"].items()})
    if eval_command:
        out.update(
            {f"external/{k}": v for k, v in run_eval_command(eval_command, policy, round_dir / "eval_command").items()}
        )
    return out


def _figures(metrics: Mapping) -> list[str]:
    return [key for key in metrics if key.startswith(tuple(GROUPS))]


def _label(key: str) -> str:
    prefix, _, name = key.partition("/")
    return name + GROUPS[prefix + "/"]


def figures_line(metrics: Mapping) -> str:
    """`mmstar 0.520, mmstar/average,none (eval_command) 0.540` for the round's log line."""
    return ", ".join(f"{_label(key)} {metrics[key]:.3f}" for key in _figures(metrics))


def report_lines(records: Mapping[int, Mapping]) -> list[str]:
    """The report's policy-benchmark table (one row per round) and each figure's first -> last round; [] when none."""
    rounds = sorted(records)
    evals = {r: records[r].get("eval") or {} for r in rounds}
    columns = list(dict.fromkeys(key for r in rounds for key in _figures(evals[r])))
    if not columns:
        return []
    lines = ["## Policy benchmarks", "", "| round | held-out correct | " + " | ".join(map(_label, columns)) + " |",
             "|---" * (len(columns) + 2) + "|"]  # fmt: skip
    for r in rounds:
        cells = [evals[r].get(key) for key in ("accuracy", *columns)]
        lines.append(f"| {r} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    lines.append("")
    for key in columns:
        done = [(r, evals[r][key]) for r in rounds if key in evals[r]]
        if len(done) > 1:
            lines.append(
                f"- {_label(key)}: {done[0][1]:.3f} -> {done[-1][1]:.3f} over {done[-1][0] - done[0][0]} rounds"
            )
    return lines + [""]


def config_problems(eval_benchmarks: Sequence[str], eval_command: str | None) -> list[str]:
    """The rounds config's problems with these two fields (unknown benchmark, bad template)."""
    names = [entry.split("=", 1)[0] for entry in eval_benchmarks]
    problems = [
        f"eval_benchmarks: unknown {n!r}; choose from {sorted(BENCHMARKS)}" for n in names if n not in BENCHMARKS
    ]
    if len(set(names)) != len(names):
        problems.append(f"eval_benchmarks: a benchmark named twice in {list(eval_benchmarks)}")
    return problems + (template_problems(eval_command) if eval_command else [])
