"""What the benchmark modules share: the example type, field checks and metric helpers.

A benchmark module (`vl_rewardbench`, `rewardbench`, `mm_rewardbench`) defines `read_row(row, ref, base_dir)`
(one raw row to a `BenchmarkExample`), `scored_row(example, scores)` (the row its metric reads), `metrics(rows)`
(the official formula) and `REFERENCE_ROWS` (published figures shown beside ours).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.schema import check_record_image
from common.scoring import ScoringGroup


@dataclass
class BenchmarkExample:
    """One benchmark item: what to score (`group`) and the fields its metric needs (`row`, scores not yet in)."""

    group: ScoringGroup
    row: dict[str, Any]


def user_turn(text: str, n_images: int) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def row_images(value: Any, ref: str, field: str, base_dir: str | None) -> list:
    images = value if isinstance(value, list) else [] if value is None else [value]
    return [check_record_image(im, ref, f"{field}[{i}]", base_dir) for i, im in enumerate(images)]


def finite(value: Any, ref: str, field: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"row {ref}, field '{field}': expected a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"row {ref}, field '{field}': score is {value}, not a finite number")
    return value


def pair_scores(row: Mapping[str, Any], ref: str) -> tuple[float, float]:
    scores = row.get("scores")
    if not isinstance(scores, Sequence) or isinstance(scores, str) or len(scores) != 2:
        raise ValueError(f"row {ref}, field 'scores': expected two scores, got {scores!r}")
    return finite(scores[0], ref, "scores[0]"), finite(scores[1], ref, "scores[1]")


def accuracy(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None
