"""The reward-data job's report: counts per source and step, benchmark overlaps, the dedup index's size, the stages,
histograms of lengths and image sizes (PNG), as JSON and markdown, and to wandb when enabled."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.tracking import wandb_run
from data_builders.report import write_report_files

MAX_EXAMPLES = 3  # rows kept per source and skip reason, to show in errors and the report
SKIP_STEPS = ("read", "validate", "images")  # rows or pairs that could not be converted (the rest is cleaning)
HISTOGRAMS = {"prompt_words": "prompt length (words)", "response_words": "response length (words)",
              "image_width": "image width (px)", "image_height": "image height (px)"}  # fmt: skip


def _merge(total: dict, part: Mapping) -> None:
    for key, value in part.items():
        if key == "hist":  # per-pair values -> counts per value: bounded by the value range, not the input size
            for name, values in value.items():
                counts = total["hist"].setdefault(name, Counter())
                counts.update(values)
        elif isinstance(value, Mapping):
            _merge(total.setdefault(key, {}), value)
        elif isinstance(value, list):
            total.setdefault(key, []).extend(value)
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "chunk":
            total[key] = total.get(key, 0) + value


def new_total() -> dict[str, Any]:
    """The running total of the chunks' statistics that `add_chunk_stats` grows (histograms as counts per value)."""
    return {"rows": 0, "sources": {}, "decontaminated": [], "flagged": {}, "examples": {},
            "hist": {name: Counter() for name in HISTOGRAMS}}  # fmt: skip


def add_chunk_stats(total: dict[str, Any], chunk: Mapping) -> None:
    """Add one chunk's statistics (its `kept` list aside) to `total`: counts summed, histogram values counted,
    other lists concatenated in chunk order."""
    _merge(total, {k: v for k, v in chunk.items() if k != "kept"})
    for reasons in total["examples"].values():
        for examples in reasons.values():
            del examples[MAX_EXAMPLES:]


def source_problems(total: Mapping[str, Any], sources: list, max_skip_fraction: float) -> list[str]:
    """Why the build must not go on silently: per source, no pair at all (unless `allow_empty`), or more than
    `max_skip_fraction` (the source's own, else the job's) of a step's rows or pairs skipped for one reason at a
    conversion step (`SKIP_STEPS`), each with the reason and up to 3 example rows."""
    problems = []
    for spec in sources:
        steps = total["sources"].get(spec.name)
        rows = steps["read"]["in"] if steps else 0
        pairs = steps["validate"]["out"] - sum(steps["images"]["dropped"].values()) if steps else 0
        examples = total["examples"].get(spec.name, {})
        limit = spec.max_skip_fraction if spec.max_skip_fraction is not None else max_skip_fraction
        skipped = [(reason, n, st["in"]) for step in SKIP_STEPS if steps
                   for st in [steps[step]] for reason, n in sorted(st["dropped"].items())]  # fmt: skip

        def shown(reason: str, examples: Mapping = examples) -> str:
            return "; e.g. " + " | ".join(examples[reason]) if examples.get(reason) else ""

        if pairs == 0 and not spec.allow_empty:
            why = "; ".join(f"{reason}: {n} of {n_in}{shown(reason)}" for reason, n, n_in in skipped) or "no row read"
            problems.append(f"sources[{spec.name}]: 0 pairs from {rows} rows ({spec.path}): {why}. Check its format "
                            "and path, or set allow_empty: true on the source")  # fmt: skip
            continue
        if spec.allow_empty and spec.max_skip_fraction is None:
            continue
        for reason, n, n_in in skipped:
            if n > limit * n_in:
                problems.append(f"sources[{spec.name}]: {n} of {n_in} ({n / n_in:.0%}) skipped for '{reason}', above "
                                f"max_skip_fraction {limit}{shown(reason)}. Set the source's max_skip_fraction to "
                                "accept it")  # fmt: skip
    return problems


def build_report(total: Mapping[str, Any], meta: Mapping[str, Any]) -> dict:
    overlaps: dict[str, int] = {}
    for d in total["decontaminated"]:
        overlaps[d["benchmark"]] = overlaps.get(d["benchmark"], 0) + 1
    return {"rows": total["rows"], "sources": total["sources"], "overlaps": overlaps,
            "decontaminated": len(total["decontaminated"]), "flagged": total["flagged"],
            "skip_examples": total["examples"], **meta}  # fmt: skip


def _markdown(report: Mapping[str, Any]) -> str:
    lines = ["# Reward data report", "", f"Input rows: {report['rows']}; cleaned pairs: {report['cleaned_pairs']}.", ""]
    for source, steps in report["sources"].items():
        lines += [f"## {source}", "", "| step | in | out | dropped (why) |", "|---|---|---|---|"]
        for step, st in steps.items():
            why = ", ".join(f"{r}: {n}" for r, n in sorted(st["dropped"].items())) or "-"
            lines.append(f"| {step} | {st['in']} | {st['out']} | {why} |")
        lines.append("")
    if report["repeat_time"]:
        lines += [
            "## repeat_time (a sampling weight applied after cleaning, not counted as duplicates)",
            "",
            "| source | entry | repeat_time | cleaned pairs | pairs after repeat_time |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {source} | {entry} | {g['repeat_time']:g} | {g['cleaned']} | {g['pairs']} |"
            for source, entries in report["repeat_time"].items()
            for entry, g in entries.items()
        ]
        lines.append("")
    lines += ["## Benchmark overlaps (decontaminated.jsonl lists them)", ""]
    lines += [f"- {b}: {n}" for b, n in sorted(report["overlaps"].items())] or ["- none"]
    idx = report["dedup_index"]
    lines += ["", "## Dedup index", "", f"{idx['pairs']} pairs, {idx['bytes']} bytes "
              f"({idx['bytes_per_pair']:.0f} bytes per pair); the mixing arrays (source, text-only and row numbers "
              f"per pair): {report['mixing_arrays']['bytes']} bytes.", "", "## Stages", "",
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
    hists = {name: (total["hist"][name], title) for name, title in HISTOGRAMS.items()}
    write_report_files(out_dir, report, _markdown(report), hists)
    return report


def log_to_wandb(report: Mapping[str, Any], total: Mapping[str, Any], out_dir: Path, project: str, name: str,
                 config: Mapping) -> None:  # fmt: skip
    """Log the per-step counts, overlaps, stage sizes and histograms to a wandb run."""
    import wandb

    flat: dict[str, Any] = {"rows": report["rows"], "cleaned_pairs": report["cleaned_pairs"]}
    for source, steps in report["sources"].items():
        flat.update({f"{source}/{step}/out": st["out"] for step, st in steps.items()})
    flat.update({f"overlaps/{b}": n for b, n in report["overlaps"].items()})
    flat.update({f"stages/{s}/pairs": st["pairs"] for s, st in report["stages"].items()})
    for hist in HISTOGRAMS:
        counts = total["hist"][hist]
        if counts:
            values, weights = zip(*sorted(counts.items()))
            flat[f"hist/{hist}"] = wandb.Histogram(np_histogram=np.histogram(values, bins=64, weights=weights))
        flat[f"plots/{hist}"] = wandb.Image(str(out_dir / f"hist_{hist}.png"))
    with wandb_run(name, config, out_dir, project=project) as run:
        run.log(flat)
        run.summary.update({k: v for k, v in flat.items() if isinstance(v, int | float)})
