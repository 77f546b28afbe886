"""What the policy benchmarks share: the item type, option lines, multiple-choice scoring, accuracy breakdowns (the
answer rules themselves live in `common.benchmark_judges`, registered as `common.correctness` judges).

A benchmark module (`mmstar`, `mmmu`, `mathvista`, `ai2d`) defines:

* `read_row(row, ref) -> BenchmarkItem`: one raw hub row to a prompt record (`common.schema`: `id`, `prompt`,
  `images`, `answer`, `choices`, `source` = the benchmark's judge name) plus the fields its breakdown reads;
* `extract(response, answer, choices) -> str | None`: the answer its rule reads in a response (None: none found);
* `judge(response, answer, choices) -> bool`: its official rule on that answer, the judge `common.benchmark_judges`
  registers for its `source`;
* `BREAKDOWN`: the fields of its official category breakdown; `SHARD_GLOB`: the evaluation split's shard names;
* `HUB_ID`: where the data lives on the hub.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.benchmark_judges import LETTERS, extract_option


@dataclass
class BenchmarkItem:
    """One benchmark question: the prompt record the policy answers and the fields its breakdown reads."""

    record: dict[str, Any]
    fields: dict[str, Any] = field(default_factory=dict)


def option_lines(options: Sequence[str]) -> str:
    """`A. first\\nB. second...`: how lmms-eval and the MMMU scripts list options under the question."""
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def score_option(response: str, item: BenchmarkItem) -> tuple[str | None, bool]:
    """(extracted letter, verdict) of a multiple-choice item."""
    extracted = extract_option(response, item.record["answer"], item.record.get("choices"))
    return extracted, extracted == item.record["answer"]


def accuracy_cell(flags: Sequence[bool]) -> dict[str, Any]:
    return {"accuracy": sum(flags) / len(flags), "correct": sum(flags), "total": len(flags)}


def breakdown(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Accuracy overall and per value of each field in `keys` (a list value counts under each of its items, as
    MathVista's `skills`).

    Args:
        rows: prediction rows with `correct` (bool) and the fields in `keys`.

    Returns:
        `{"overall", "correct", "total", "by": {key: {value: {"accuracy", "correct", "total"}}}}`, values sorted.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no prediction rows to score")
    by: dict[str, dict[str, list[bool]]] = {key: defaultdict(list) for key in keys}
    for row in rows:
        for key in keys:
            value = row.get(key)
            for item in value if isinstance(value, list) else [value]:
                by[key][str(item)].append(bool(row["correct"]))
    total = accuracy_cell([bool(row["correct"]) for row in rows])
    return {"overall": total["accuracy"], "correct": total["correct"], "total": total["total"],
            "by": {key: {v: accuracy_cell(f) for v, f in sorted(values.items())} for key, values in by.items()}}  # fmt: skip
