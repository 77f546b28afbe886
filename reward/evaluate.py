"""Reward-benchmark metrics (official formulas) and the evaluation job behind `recipes/eval_reward.py`.

The metric functions are pure: they take the per-example rows the job writes to `predictions.jsonl` and return plain
dicts whose figures are fractions in [0, 1] (None where a group has no example). A pair counts as correct only when
the preferred response scores strictly higher: a tie is wrong, as in the official scripts.

Sources (see docs/evaluation.md):
* VL-RewardBench (Li et al. 2024, MMInstruction/VL-RewardBench): source from the id prefix, three groups, macro mean.
* RewardBench (Lambert et al. 2024, allenai/reward-bench `rewardbench/constants.py` and `utils.py`): per-subset
  accuracy, sections weighted by `EXAMPLE_COUNTS` (math-prm counted as 984 = 6 x 164 so math and code weigh half each),
  the leaderboard's Prior Sets mean and its (2, 2, 2, 2, 1) / 9 weighting.
* Multimodal RewardBench (Yasunaga et al. 2025, facebookresearch/multimodal_rewardbench `scripts/2_get_accuracy.py`):
  accuracy per category (safety split into bias/toxicity, reasoning into math/coding by ID) and overall.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config_checks import output_dir_problems
from reward.scorer import ScorerConfig

# ----------------------------------------------------------------------------------------------- VL-RewardBench
VL_REWARDBENCH_GROUPS = {
    "general": ("vlfeedback", "wildvision-battle"),
    "hallucination": ("povid", "rlhf-v", "rlaif-v"),
    "reasoning": ("reasoning_tasks",),
}
_SOURCE_TO_GROUP = {source: group for group, sources in VL_REWARDBENCH_GROUPS.items() for source in sources}


def vl_rewardbench_source(name: str) -> str:
    """The VL-RewardBench source of an example id (or of a `query_source` value).

    The official scripts take the id's prefix up to the first `_` or `-`: `RLAIF` -> rlaif-v, `RLHF` -> rlhf-v,
    `mathverse` / `mmmu` -> reasoning_tasks, `wildvision` -> wildvision-battle, `hallucination` / `povid` -> povid,
    anything else -> vlfeedback. A name that already is a source name is returned as is. Matching ignores case.
    """
    lowered = str(name).lower()
    if lowered in _SOURCE_TO_GROUP:
        return lowered
    prefix = re.split(r"[_-]", lowered, maxsplit=1)[0]
    if prefix == "rlaif":
        return "rlaif-v"
    if prefix == "rlhf":
        return "rlhf-v"
    if prefix in ("mathverse", "mmmu"):
        return "reasoning_tasks"
    if prefix == "wildvision":
        return "wildvision-battle"
    if prefix in ("hallucination", "povid"):
        return "povid"
    return "vlfeedback"


def _finite(value: Any, ref: str, field: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"row {ref}, field '{field}': expected a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"row {ref}, field '{field}': score is {value}, not a finite number")
    return value


def _pair_scores(row: Mapping[str, Any], ref: str) -> tuple[float, float]:
    scores = row.get("scores")
    if not isinstance(scores, Sequence) or isinstance(scores, str) or len(scores) != 2:
        raise ValueError(f"row {ref}, field 'scores': expected two scores, got {scores!r}")
    return _finite(scores[0], ref, "scores[0]"), _finite(scores[1], ref, "scores[1]")


def _accuracy(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def vl_rewardbench_correct(row: Mapping[str, Any]) -> bool:
    """Whether the response ranked 0 in `human_ranking` scores strictly higher than the other one."""
    ref = repr(row.get("id"))
    s0, s1 = _pair_scores(row, ref)
    ranking = row.get("human_ranking")
    if not isinstance(ranking, Sequence) or len(ranking) != 2 or ranking[0] == ranking[1]:
        raise ValueError(f"row {ref}, field 'human_ranking': expected two different ranks, got {ranking!r}")
    return s0 > s1 if ranking[0] < ranking[1] else s1 > s0


def vl_rewardbench_metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """VL-RewardBench overall accuracy, the three group accuracies and their macro mean.

    Args:
        rows: dicts with `id`, `scores` (two floats, in the order of `response`), `human_ranking` (0 = preferred) and
            optionally `query_source` (otherwise the source comes from the id prefix).

    Returns:
        `{"overall", "macro", "general", "hallucination", "reasoning"}`; a group with no example is None and the macro
        mean is taken over the groups that have examples.
    """
    flags: dict[str, list[bool]] = defaultdict(list)
    overall = []
    for row in rows:
        source = vl_rewardbench_source(row.get("query_source") or row["id"])
        correct = vl_rewardbench_correct(row)
        flags[_SOURCE_TO_GROUP[source]].append(correct)
        overall.append(correct)
    out: dict[str, float | None] = {"overall": _accuracy(overall)}
    groups = {group: _accuracy(flags[group]) for group in VL_REWARDBENCH_GROUPS}
    present = [acc for acc in groups.values() if acc is not None]
    out["macro"] = sum(present) / len(present) if present else None
    out.update(groups)
    return out


# ----------------------------------------------------------------------------------------------- RewardBench
# allenai/reward-bench rewardbench/constants.py: SUBSET_MAPPING and EXAMPLE_COUNTS.
REWARDBENCH_SECTIONS = {
    "chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "chat_hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}  # fmt: skip
REWARDBENCH_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46, "refusals-dangerous": 100, "refusals-offensive": 100,
    "xstest-should-refuse": 250, "xstest-should-respond": 154, "donotanswer": 136,
    "math-prm": 984,  # really 447 prompts; upweighted to the six code subsets' 6 x 164 so math and code weigh half each
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}  # fmt: skip
# The leaderboard's "Prior Sets (0.5 weight)" is the mean of these four (allenai/reward-bench leaderboard utils);
# the other prior subsets are known but not counted.
REWARDBENCH_PRIOR_COUNTED = ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")
REWARDBENCH_PRIOR_SUBSETS = REWARDBENCH_PRIOR_COUNTED + ("anthropic_harmless", "mtbench_gpt4", "mtbench_human")


def rewardbench_metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """RewardBench per-subset accuracy, the four section scores and their mean.

    Args:
        rows: dicts with `subset`, `chosen_score` and `rejected_score`.

    Returns:
        `{"chat", "chat_hard", "safety", "reasoning", "score", "subsets": {subset: accuracy}}`. A section is the
        mean of its subsets' accuracies weighted by the official example counts (subsets absent from `rows` drop
        out); a section with no subset present is None, and so is `score` unless all four sections are present.
        Where prior-set subsets are given, `prior_sets` (mean of the four counted ones) and `score_with_prior`
        (the leaderboard's (2, 2, 2, 2, 1) / 9 weighting) are added.

    Raises:
        ValueError: a subset outside the official lists, or a non-finite score.
    """
    flags: dict[str, list[bool]] = defaultdict(list)
    for index, row in enumerate(rows):
        subset = row.get("subset")
        if subset not in REWARDBENCH_EXAMPLE_COUNTS and subset not in REWARDBENCH_PRIOR_SUBSETS:
            known = sorted(REWARDBENCH_EXAMPLE_COUNTS) + sorted(REWARDBENCH_PRIOR_SUBSETS)
            raise ValueError(
                f"row {row.get('id', index)!r}, field 'subset': unknown RewardBench subset {subset!r}; "
                f"the official subsets are {known}"
            )
        ref = repr(row.get("id", index))
        chosen = _finite(row.get("chosen_score"), ref, "chosen_score")
        rejected = _finite(row.get("rejected_score"), ref, "rejected_score")
        flags[subset].append(chosen > rejected)
    subsets = {subset: _accuracy(f) for subset, f in sorted(flags.items())}
    out: dict[str, Any] = {}
    for section, members in REWARDBENCH_SECTIONS.items():
        present = [s for s in members if s in subsets]
        weight = sum(REWARDBENCH_EXAMPLE_COUNTS[s] for s in present)
        out[section] = sum(subsets[s] * REWARDBENCH_EXAMPLE_COUNTS[s] for s in present) / weight if present else None
    sections = [out[s] for s in REWARDBENCH_SECTIONS]
    out["score"] = sum(sections) / len(sections) if None not in sections else None
    prior = [subsets[s] for s in REWARDBENCH_PRIOR_COUNTED if s in subsets]
    if prior:
        out["prior_sets"] = sum(prior) / len(prior)
        out["score_with_prior"] = (2 * sum(sections) + out["prior_sets"]) / 9 if None not in sections else None
    out["subsets"] = subsets
    return out


# ----------------------------------------------------------------------------------------------- Multimodal RewardBench
def mm_rewardbench_category(row: Mapping[str, Any]) -> str:
    """The reported category: safety splits into bias (PAIRS ids) / toxicity, reasoning into math / coding."""
    category = row.get("Category")
    if not category:
        raise ValueError(f"row {row.get('ID')!r}, field 'Category': missing")
    rid = str(row.get("ID", "")).lower()
    if category == "safety":
        return "safety/bias" if rid.startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if rid.startswith("math") else "reasoning/coding"
    return str(category)


def mm_rewardbench_metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Multimodal RewardBench accuracy, overall and per category.

    Args:
        rows: dicts with `ID`, `Category`, `Better` ("Output1" or "Output2") and `scores` (for Output1, Output2).

    Returns:
        `{"overall": ..., <category>: ...}` with the categories of the official accuracy script.
    """
    flags: dict[str, list[bool]] = defaultdict(list)
    overall = []
    for row in rows:
        ref = repr(row.get("ID"))
        s1, s2 = _pair_scores(row, ref)
        better = row.get("Better")
        if better not in ("Output1", "Output2"):
            raise ValueError(f"row {ref}, field 'Better': expected 'Output1' or 'Output2', got {better!r}")
        correct = s1 > s2 if better == "Output1" else s2 > s1
        overall.append(correct)
        flags[mm_rewardbench_category(row)].append(correct)
    return {"overall": _accuracy(overall), **{c: _accuracy(f) for c, f in sorted(flags.items())}}


METRICS = {
    "vl_rewardbench": vl_rewardbench_metrics,
    "rewardbench": rewardbench_metrics,
    "mm_rewardbench": mm_rewardbench_metrics,
}


# ----------------------------------------------------------------------------------------------- the evaluation job
# Published Skywork-VL-Reward-7B figures (arXiv:2505.07263, DESIGN.md), as fractions, for the report's reference row.
REFERENCE_ROWS: dict[str, dict[str, dict[str, float]]] = {
    "vl_rewardbench": {
        "Skywork-VL-Reward-7B (paper)": {
            "overall": 0.731, "macro": 0.690, "general": 0.660, "hallucination": 0.800, "reasoning": 0.610,
        },
    },
    "rewardbench": {
        "Skywork-VL-Reward-7B (paper)": {
            "score": 0.901, "chat": 0.900, "chat_hard": 0.875, "safety": 0.911, "reasoning": 0.918,
        },
    },
    "mm_rewardbench": {},
}  # fmt: skip


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
        if problems:
            raise ValueError("invalid evaluation config:\n  " + "\n  ".join(problems))


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = {k: v for k, v in _headline(metrics).items() if v is not None}
    rows = {model_name: ours, **REFERENCE_ROWS[benchmark]}
    names = list(ours)
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4))
    for i, (label, values) in enumerate(rows.items()):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [100 * values.get(n, 0.0) for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(benchmark)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate_reward_model(cfg: EvalConfig, scorer_cfg: ScorerConfig) -> Path:
    """Score a benchmark with a reward model and write the report; return `output_dir`.

    Writes `predictions.jsonl` (one metric row per example, scores included, so any metric can be recomputed),
    `metrics.json`, `results.md` (our row beside the published ones), `categories.png` and `run_meta.json`.
    """
    cfg.validate()
    from common.cli import write_run_meta
    from common.io import SkipLog
    from reward.benchmarks import read_benchmark, scored_row
    from reward.scorer import RewardScorer

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = SkipLog()
    examples = read_benchmark(
        cfg.benchmark, cfg.data_path, limit=cfg.limit, on_bad_record=cfg.on_bad_record, skipped=skipped
    )
    if not examples:
        raise ValueError(f"{cfg.data_path}: no example left to score (skipped: {skipped.to_dict()})")
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

    # dir: the run lands beside the outputs it describes (wandb/offline-run-* under output_dir).
    run = wandb.init(name=cfg.run_name or f"{model_name}-{cfg.benchmark}", job_type="eval", config=vars(cfg),
                     dir=str(cfg.output_dir))  # fmt: skip
    flat = {f"{cfg.benchmark}/{k}": v for k, v in _headline(metrics).items() if v is not None}
    flat.update({f"{cfg.benchmark}/subsets/{k}": v for k, v in (metrics.get("subsets") or {}).items()})
    run.log({**flat, f"{cfg.benchmark}/categories": wandb.Image(str(chart))})
    run.summary["results_md"] = table
    wandb.finish()
