"""Per-chunk statistics of the build job, their merge, and the run report (JSON, markdown, PNG histograms, wandb)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from common.io import write_text_atomic
from common.tracking import pyplot, save_figure, wandb_run

HISTOGRAMS = {"reward": "candidate reward", "gap": "pair reward gap (chosen - rejected)",
              "length": "response length (tokens)"}  # fmt: skip


MAX_EXAMPLES = 20  # failed prompts named in the report (every failure is counted)


def new_stats() -> dict[str, Any]:
    """Empty statistics of one chunk (JSON-serialisable so that a finished chunk stores its own)."""
    return {"prompts": 0, "prompts_with_pairs": 0, "candidates": 0, "pairs": 0, "judged": 0, "correct": 0,
            "candidate_drops": {}, "prompt_skips": {}, "skip_examples": [], "reward": [], "gap": [],
            "length": [], "reward_length": []}  # fmt: skip


def add_count(counts: dict[str, int], reason: str, n: int = 1) -> None:
    counts[reason] = counts.get(reason, 0) + n


def merge_stats(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum counts and concatenate the histogram values of several chunks (in the given order)."""
    total = new_stats()
    for st in chunks:
        for key, value in st.items():
            if isinstance(value, dict):
                for reason, n in value.items():
                    add_count(total[key], reason, n)
            elif isinstance(value, list):
                total[key].extend(value)
            elif key in total:
                total[key] += value
    return total


def _summary(values: list[float]) -> dict[str, float] | None:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return None
    return {"n": len(vals), "mean": statistics.fmean(vals), "std": statistics.pstdev(vals), "min": min(vals),
            "median": statistics.median(vals), "max": max(vals)}  # fmt: skip


def build_report(stats: Mapping[str, Any], read_skips: Mapping[str, Any], prompts_read: int, meta: Mapping) -> dict:
    """The report's content: counts of prompts, candidates, pairs and every skip reason, and value summaries."""
    report = {
        "prompts": {"valid": prompts_read, "skipped_at_read": dict(read_skips), "processed": stats["prompts"],
                    "with_pairs": stats["prompts_with_pairs"], "without_pairs": dict(stats["prompt_skips"]),
                    "failed_examples": stats["skip_examples"][:MAX_EXAMPLES]},
        "candidates": {"generated": stats["candidates"], "dropped": dict(stats["candidate_drops"])},
        "pairs": stats["pairs"],
        "summaries": {name: _summary(stats[name]) for name in HISTOGRAMS},
        **meta,
    }  # fmt: skip
    if stats["judged"]:
        report["candidates"]["correct_rate"] = stats["correct"] / stats["judged"]
    return report


def _markdown(report: Mapping[str, Any]) -> str:
    p, c = report["prompts"], report["candidates"]
    lines = ["# Pair building report", "", "| count | value |", "|---|---|",
             f"| prompts (valid) | {p['valid']} |", f"| prompts skipped at read | {p['skipped_at_read'].get('total', 0)} |",
             f"| prompts processed | {p['processed']} |", f"| prompts with pairs | {p['with_pairs']} |",
             f"| candidates generated | {c['generated']} |", f"| pairs | {report['pairs']} |"]  # fmt: skip
    if "correct_rate" in c:
        lines.append(f"| candidates correct (ground truth) | {c['correct_rate']:.3f} |")
    for title, counts in (("Prompts skipped at read", p["skipped_at_read"].get("by_reason", {})),
                          ("Prompts without pairs", p["without_pairs"]), ("Candidates dropped", c["dropped"])):  # fmt: skip
        lines += ["", f"## {title}", ""]
        lines += [f"- {reason}: {n}" for reason, n in sorted(counts.items())] or ["- none"]
    lines += [
        "",
        "## Distributions",
        "",
        "| value | n | mean | std | min | median | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report["summaries"].items():
        if s:
            lines.append(f"| {HISTOGRAMS[name]} | {s['n']} | " + " | ".join(
                f"{s[k]:.4g}" for k in ("mean", "std", "min", "median", "max")) + " |")  # fmt: skip
    lines += ["", *[f"![{name}](hist_{name}.png)" for name in HISTOGRAMS], ""]
    return "\n".join(lines)


def _histogram(values: list[float] | Mapping[float, int], title: str, path: Path) -> None:
    """A 30-bin histogram of `values`, given as a list or as counts per value (the same bins either way)."""
    pairs = values.items() if isinstance(values, Mapping) else ((v, 1) for v in values)
    finite = [(v, n) for v, n in pairs if math.isfinite(v)]
    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    ax.hist([v for v, _ in finite], bins=30, weights=[n for _, n in finite])
    ax.set_title(title)
    ax.set_ylabel("count")
    save_figure(fig, path)


def write_report(
    out_dir: Path, stats: Mapping[str, Any], read_skips: Mapping, prompts_read: int, meta: Mapping
) -> dict:
    """Write `report.json`, `report.md` and `hist_{reward,gap,length}.png` into `out_dir`; return the report."""
    report = build_report(stats, read_skips, prompts_read, meta)
    write_report_files(out_dir, report, _markdown(report), {n: (stats[n], title) for n, title in HISTOGRAMS.items()})
    return report


def write_report_files(out_dir: Path, report: Mapping[str, Any], markdown: str,
                       histograms: Mapping[str, tuple[list[float] | Mapping[float, int], str]]) -> None:  # fmt: skip
    """`hist_<name>.png` for each `name: (values or counts per value, title)`, then `report.json` and `report.md`
    (atomic writes)."""
    for name, (values, title) in histograms.items():
        _histogram(values, title, out_dir / f"hist_{name}.png")
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, sort_keys=True))
    write_text_atomic(out_dir / "report.md", markdown)


def log_to_wandb(report: Mapping[str, Any], stats: Mapping[str, Any], out_dir: Path, project: str, name: str,
                 config: Mapping) -> None:  # fmt: skip
    """Log the report's counts, histograms and PNGs to a wandb run (offline with WANDB_MODE=offline)."""
    import wandb

    flat = {"prompts/processed": report["prompts"]["processed"], "prompts/with_pairs": report["prompts"]["with_pairs"],
            "candidates/generated": report["candidates"]["generated"], "pairs": report["pairs"]}  # fmt: skip
    flat.update({f"prompts/without_pairs/{k}": v for k, v in report["prompts"]["without_pairs"].items()})
    flat.update({f"candidates/dropped/{k}": v for k, v in report["candidates"]["dropped"].items()})
    for hist in HISTOGRAMS:
        values = [v for v in stats[hist] if math.isfinite(v)]
        if values:
            flat[f"hist/{hist}"] = wandb.Histogram(values)
        flat[f"plots/{hist}"] = wandb.Image(str(out_dir / f"hist_{hist}.png"))
    with wandb_run(name, config, out_dir, project=project) as run:
        run.log(flat)
        run.summary.update({k: v for k, v in flat.items() if isinstance(v, int | float)})
