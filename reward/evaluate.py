"""The reward evaluation job behind `recipes/eval_reward.py`: score a benchmark, write the report.

The benchmarks themselves (row readers, official metrics, published reference rows) are `reward.bench.<name>`;
this module holds the job's config, its report (JSON, markdown table, bar chart) and the wandb run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config_checks import output_dir_problems, raise_problems
from common.errors import InputError
from common.tracking import pyplot, save_figure, wandb_run
from reward.bench import METRICS, REFERENCE_ROWS, read_benchmark, scored_row
from reward.scorer import ScorerConfig


@dataclass
class EvalConfig:
    """Which benchmark to run, on which local data, and where the report goes."""

    benchmark: str = field(
        default=None, metadata={"help": "vl_rewardbench, rewardbench or mm_rewardbench.", "aliases": ["--bench"]}
    )
    data_path: str = field(
        default=None,
        metadata={"help": "Local benchmark data: .jsonl/.json/.parquet, a Parquet folder or a datasets folder.",
                  "aliases": ["--data"]},
    )  # fmt: skip
    output_dir: str = field(default=None, metadata={"help": "Where predictions, metrics, table and chart go."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N examples (smoke runs)."})
    on_bad_record: str = field(
        default="raise",
        metadata={"help": "raise: stop at a malformed row (named); skip: drop it and count the reason in the report."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing report in output_dir."})
    report_to: str = field(default="none", metadata={"help": "none or wandb (set WANDB_MODE=offline without network)."})
    run_name: str | None = field(default=None, metadata={"help": "wandb run name (default: model folder + benchmark)."})

    def validate(self) -> None:
        """All problems at once, each with the flag to set."""
        problems = []
        if self.benchmark not in METRICS:
            problems.append(f"--benchmark {self.benchmark!r}: choose one of {sorted(METRICS)}")
        problems += [] if self.data_path else ["--data_path is required"]
        problems += output_dir_problems(self.output_dir)
        if self.data_path and not Path(self.data_path).exists():
            problems.append(f"--data_path {self.data_path}: no such file or folder")
        if self.output_dir and (Path(self.output_dir) / "metrics.json").exists() and not self.overwrite_output_dir:
            problems.append(f"--output_dir {self.output_dir} already holds a report; pass --overwrite_output_dir")
        if self.report_to not in ("none", "wandb"):
            problems.append(f"--report_to {self.report_to!r}: choose none or wandb")
        if self.on_bad_record not in ("raise", "skip"):
            problems.append(f"--on_bad_record {self.on_bad_record!r}: choose raise or skip")
        if self.limit is not None and self.limit < 1:
            problems.append(f"--limit {self.limit}: must be >= 1")
        raise_problems("evaluation config", problems)


def _headline(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The scalar figures of a metrics dict (RewardBench's per-subset dict left out)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, Mapping)}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(benchmark: str, model_name: str, metrics: Mapping[str, Any]) -> str:
    """Our figures (percent) beside the published reference rows."""
    ours = _headline(metrics)
    columns = list(ours)
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines.append(f"| {model_name} | " + " | ".join(_pct(ours[c]) for c in columns) + " |")
    for name, ref in REFERENCE_ROWS[benchmark].items():
        lines.append(f"| {name} | " + " | ".join(_pct(ref.get(c)) for c in columns) + " |")
    table = "\n".join(lines) + "\n"
    if isinstance(metrics.get("subsets"), Mapping):
        table += "\n| subset | accuracy |\n|---|---|\n"
        table += "".join(f"| {s} | {_pct(a)} |\n" for s, a in metrics["subsets"].items())
    return table


def bar_chart(benchmark: str, model_name: str, metrics: Mapping[str, Any], path: Path) -> Path:
    """A bar per category (ours, and the reference where published), percent on the y axis."""
    ours = {k: v for k, v in _headline(metrics).items() if v is not None}
    rows = {model_name: ours, **REFERENCE_ROWS[benchmark]}
    names = list(ours)
    width = 0.8 / len(rows)
    fig, ax = pyplot().subplots(figsize=(max(6.0, 1.1 * len(names)), 4))
    for i, (label, values) in enumerate(rows.items()):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [100 * values.get(n, 0.0) for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(benchmark)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return path


def evaluate_reward_model(cfg: EvalConfig, scorer_cfg: ScorerConfig) -> Path:
    """Score a benchmark with a reward model and write the report; return `output_dir`.

    Writes `predictions.jsonl` (one metric row per example, scores included, so any metric can be recomputed),
    `metrics.json`, `results.md` (our row beside the published ones), `categories.png` and `run_meta.json`.
    """
    cfg.validate()
    from common.cli import write_run_meta
    from common.io import SkipLog
    from reward.model import check_value_head
    from reward.scorer import RewardScorer

    check_value_head(scorer_cfg.model_name_or_path, "--model")
    skipped = SkipLog()  # the data is read and checked before the output folder is made and the model loads
    examples = read_benchmark(
        cfg.benchmark, cfg.data_path, limit=cfg.limit, on_bad_record=cfg.on_bad_record, skipped=skipped
    )
    if not examples:
        raise InputError(f"{cfg.data_path}: no example left to score (skipped: {skipped.to_dict()})")
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in dataclasses.asdict(scorer_cfg).items() if k != "model_name_or_path"}
    scorer = RewardScorer.from_pretrained(scorer_cfg.model_name_or_path, **options)
    start = time.perf_counter()
    scores = scorer.score_groups([e.group for e in examples])
    seconds = time.perf_counter() - start
    rows = [scored_row(cfg.benchmark, e, s) for e, s in zip(examples, scores)]
    with open(out_dir / "predictions.jsonl", "w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    metrics = METRICS[cfg.benchmark](rows)
    model_name = Path(scorer_cfg.model_name_or_path.rstrip("/")).name
    report = {"benchmark": cfg.benchmark, "model": scorer_cfg.model_name_or_path, "n_examples": len(rows),
              "skipped": skipped.to_dict(), "scoring_seconds": seconds, "metrics": metrics}  # fmt: skip
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(cfg.benchmark, model_name, metrics)
    note = f", {skipped.total} skipped: {dict(skipped.counts)}" if skipped.total else ""
    (out_dir / "results.md").write_text(f"# {cfg.benchmark}: {model_name} ({len(rows)} examples{note})\n\n{table}")
    chart = bar_chart(cfg.benchmark, model_name, metrics, out_dir / "categories.png")
    write_run_meta(out_dir, [cfg, scorer_cfg], n_examples=len(rows), skipped=skipped.to_dict(), scoring_seconds=seconds)
    if cfg.report_to == "wandb":
        _log_wandb(cfg, model_name, metrics, table, chart)
    return out_dir


def _log_wandb(cfg: EvalConfig, model_name: str, metrics: Mapping[str, Any], table: str, chart: Path) -> None:
    import wandb

    flat = {f"{cfg.benchmark}/{k}": v for k, v in _headline(metrics).items() if v is not None}
    flat.update({f"{cfg.benchmark}/subsets/{k}": v for k, v in (metrics.get("subsets") or {}).items()})
    with wandb_run(cfg.run_name or f"{model_name}-{cfg.benchmark}", vars(cfg), cfg.output_dir, job_type="eval") as run:
        run.log({**flat, f"{cfg.benchmark}/categories": wandb.Image(str(chart))})
        run.summary["results_md"] = table
