"""What the policy benchmarks share: the item type, option letters, MMMU's option parser, accuracy breakdowns.

A benchmark module (`mmstar`, `mmmu`, `mathvista`, `ai2d`) defines:

* `read_row(row, ref) -> BenchmarkItem`: one raw hub row to a prompt record (`common.schema`: `id`, `prompt`,
  `images`, `answer`, `choices`, `source` = the benchmark's judge name) plus the fields its breakdown reads;
* `extract(response, answer, choices) -> str | None`: the answer its rule reads in a response (None: none found);
* `judge(response, answer, choices) -> bool`: its official rule on that answer (`common.correctness`'s judge
  signature);
* `BREAKDOWN`: the fields of its official category breakdown; `SHARD_GLOB`: the evaluation split's shard names;
* `HUB_ID`: where the data lives on the hub.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
THINK_START, THINK_END = "<think>", "</think>"


@dataclass
class BenchmarkItem:
    """One benchmark question: the prompt record the policy answers and the fields its breakdown reads."""

    record: dict[str, Any]
    fields: dict[str, Any] = field(default_factory=dict)


def option_lines(options: Sequence[str]) -> str:
    """`A. first\\nB. second...`: how lmms-eval and the MMMU scripts list options under the question."""
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def after_thinking(response: str) -> str:
    """The part of a response after its last `</think>` (all of it when it never thinks; "" when a `<think>` is never
    closed: cut off while thinking, as `common.correctness.final_answer` reads it): what the rules read."""
    if THINK_END in response:
        return response.rpartition(THINK_END)[2]
    return "" if THINK_START in response else response


def parse_option(response: str, options: Sequence[str]) -> str | None:
    """The option letter a response names, by MMMU's official rule (`parse_multi_choice_response` in
    MMMU-Benchmark/MMMU `mmmu/utils/eval_utils.py`), without its random guess: None when nothing is named.

    In order: a bracketed letter `(B)`; else a letter standing alone (` B `); else, in a response of more than five
    words, an option's text (case-insensitive). Several candidates: the one named last wins.
    """
    letters = LETTERS[: len(options)]
    for char in ",.!?;:'":  # one character at a time, as the official loop strips them
        response = response.strip(char)
    text = f" {response} "
    found = [c for c in letters if f"({c})" in text]
    marks = {c: f"({c})" for c in found}
    if not found:
        found = [c for c in letters if f" {c} " in text]
        marks = {c: f" {c} " for c in found}
    if not found and len(text.split()) > 5:
        lowered = text.lower()
        found = [c for c, option in zip(letters, options) if option.lower() in lowered]
        marks = {c: options[letters.index(c)].lower() for c in found}
        text = lowered
    if not found:
        return None
    return max(found, key=lambda c: text.rfind(marks[c]))  # ties: the earlier letter, as np.argmax


def extract_option(response: str, answer: str, choices: Sequence[str] | None) -> str | None:
    """The option letter `parse_option` reads in the response's answer part (None: none): the multiple-choice rule."""
    return parse_option(after_thinking(response), choices or [])


def judge_option(response: str, answer: str, choices: Sequence[str] | None) -> bool:
    return extract_option(response, answer, choices) == str(answer).strip()


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
