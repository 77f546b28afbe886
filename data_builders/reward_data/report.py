"""The reward-data job's report: counts per source and step, benchmark overlaps, the dedup index's size, the stages,
histograms of lengths and image sizes (PNG), as JSON and markdown, and to wandb when enabled."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from common.io import write_text_atomic
from data_builders.report import _histogram

HISTOGRAMS = {"prompt_words": "prompt length (words)", "response_words": "response length (words)",
              "image_width": "image width (px)", "image_height": "image height (px)"}  # fmt: skip


def _merge(total: dict, part: Mapping) -> None:
    for key, value in part.items():
        if isinstance(value, Mapping):
            _merge(total.setdefault(key, {}), value)
        elif isinstance(value, list):
            total.setdefault(key, []).extend(value)
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "chunk":
            total[key] = total.get(key, 0) + value


def merge_chunk_stats(chunks: Iterable[Mapping]) -> dict[str, Any]:
    """Sum the chunks' counts and concatenate their lists (in chunk order)."""
    total: dict[str, Any] = {"rows": 0, "sources": {}, "decontaminated": [], "flagged": {}, "kept": [],
                             "hist": {name: [] for name in HISTOGRAMS}}  # fmt: skip
    for st in chunks:
        _merge(total, st)
    return total


def build_report(total: Mapping[str, Any], meta: Mapping[str, Any]) -> dict:
    overlaps: dict[str, int] = {}
    for d in total["decontaminated"]:
        overlaps[d["benchmark"]] = overlaps.get(d["benchmark"], 0) + 1
    return {"rows": total["rows"], "sources": total["sources"], "overlaps": overlaps,
            "decontaminated": len(total["decontaminated"]), "flagged": total["flagged"], **meta}  # fmt: skip


def _markdown(report: Mapping[str, Any]) -> str:
    lines = ["# Reward data report", "", f"Input rows: {report['rows']}; cleaned pairs: {report['cleaned_pairs']}.", ""]
    for source, steps in report["sources"].items():
        lines += [f"## {source}", "", "| step | in | out | dropped (why) |", "|---|---|---|---|"]
        for step, st in steps.items():
            why = ", ".join(f"{r}: {n}" for r, n in sorted(st["dropped"].items())) or "-"
            lines.append(f"| {step} | {st['in']} | {st['out']} | {why} |")
        lines.append("")
    lines += ["## Benchmark overlaps (decontaminated.jsonl lists them)", ""]
    lines += [f"- {b}: {n}" for b, n in sorted(report["overlaps"].items())] or ["- none"]
    idx = report["dedup_index"]
    lines += ["", "## Dedup index", "", f"{idx['pairs']} pairs, {idx['bytes']} bytes "
              f"({idx['bytes_per_pair']:.0f} bytes per pair).", "", "## Stages", "",
              "| stage | pairs | text-only | per source (taken / available) |", "|---|---|---|---|"]  # fmt: skip
    for name, st in report["stages"].items():
        per = ", ".join(f"{s}: {c['taken']}/{c['available']}" for s, c in st["sources"].items())
        lines.append(f"| {name} | {st['pairs']} | {st['text_only']} | {per} |")
    if report["flagged"]:
        lines += ["", "## Flagged by the surrogate filter", ""]
        lines += [f"- {r}: {n}" for r, n in sorted(report["flagged"].items())]
    lines += ["", *[f"![{name}](hist_{name}.png)" for name in HISTOGRAMS], ""]
    return "\n".join(lines)


def write_report(out_dir: Path, total: Mapping[str, Any], meta: Mapping[str, Any]) -> dict:
    """Write `report.json`, `report.md` and `hist_*.png` into `out_dir`; return the report."""
    report = build_report(total, meta)
    for name, title in HISTOGRAMS.items():
        _histogram(total["hist"][name], title, out_dir / f"hist_{name}.png")
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, sort_keys=True))
    write_text_atomic(out_dir / "report.md", _markdown(report))
    return report


def log_to_wandb(report: Mapping[str, Any], total: Mapping[str, Any], out_dir: Path, project: str, name: str,
                 config: Mapping) -> None:  # fmt: skip
    """Log the per-step counts, overlaps, stage sizes and histograms to a wandb run."""
    import wandb

    run = wandb.init(project=project, name=name, config=dict(config), dir=str(out_dir))
    flat: dict[str, Any] = {"rows": report["rows"], "cleaned_pairs": report["cleaned_pairs"]}
    for source, steps in report["sources"].items():
        flat.update({f"{source}/{step}/out": st["out"] for step, st in steps.items()})
    flat.update({f"overlaps/{b}": n for b, n in report["overlaps"].items()})
    flat.update({f"stages/{s}/pairs": st["pairs"] for s, st in report["stages"].items()})
    for hist in HISTOGRAMS:
        if total["hist"][hist]:
            flat[f"hist/{hist}"] = wandb.Histogram(total["hist"][hist])
        flat[f"plots/{hist}"] = wandb.Image(str(out_dir / f"hist_{hist}.png"))
    run.log(flat)
    run.summary.update({k: v for k, v in flat.items() if isinstance(v, int | float)})
    run.finish()
