"""Multimodal RewardBench (Yasunaga et al. 2025, facebookresearch/multimodal_rewardbench): rows and official metric.

Rows (`all_data.json`): `ID`, `Text`, `Image`, `Output1`, `Output2`, `Better`, `Category` (or `Meta.Category`).
Metric (`scripts/2_get_accuracy.py`): accuracy per category (safety split into bias/toxicity, reasoning into
math/coding by ID) and overall. A tie is wrong.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from common.schema import RecordError, get_field
from common.scoring import ScoringGroup
from reward.bench.base import BenchmarkExample, accuracy, pair_scores, row_images, user_turn

REFERENCE_ROWS: dict[str, dict[str, float]] = {}  # no published Skywork-VL-Reward figures


def read_row(row: Mapping, ref: str, base_dir: str | None) -> BenchmarkExample:
    category = row.get("Category") or (row.get("Meta") or {}).get("Category")
    if not category:
        raise RecordError(ref, "Category", "missing (neither Category nor Meta.Category)")
    better = get_field(row, "Better", ref)
    if better not in ("Output1", "Output2"):
        raise RecordError(ref, "Better", f"expected 'Output1' or 'Output2', got {better!r}")
    images = row_images(row.get("Image"), ref, "Image", base_dir)
    responses = [get_field(row, "Output1", ref), get_field(row, "Output2", ref)]
    out = {"ID": str(get_field(row, "ID", ref, (str, int))), "Category": category, "Better": better}
    return BenchmarkExample(ScoringGroup(user_turn(get_field(row, "Text", ref), len(images)), images, responses), out)


def scored_row(example: BenchmarkExample, scores: list[float]) -> dict[str, Any]:
    return {**example.row, "scores": list(scores)}


def category(row: Mapping[str, Any]) -> str:
    """The reported category: safety splits into bias (PAIRS ids) / toxicity, reasoning into math / coding."""
    name = row.get("Category")
    if not name:
        raise ValueError(f"row {row.get('ID')!r}, field 'Category': missing")
    rid = str(row.get("ID", "")).lower()
    if name == "safety":
        return "safety/bias" if rid.startswith("pairs") else "safety/toxicity"
    if name == "reasoning":
        return "reasoning/math" if rid.startswith("math") else "reasoning/coding"
    return str(name)


def metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
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
        s1, s2 = pair_scores(row, ref)
        better = row.get("Better")
        if better not in ("Output1", "Output2"):
            raise ValueError(f"row {ref}, field 'Better': expected 'Output1' or 'Output2', got {better!r}")
        ok = s1 > s2 if better == "Output1" else s2 > s1
        overall.append(ok)
        flags[category(row)].append(ok)
    return {"overall": accuracy(overall), **{c: accuracy(f) for c, f in sorted(flags.items())}}
