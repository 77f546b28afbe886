"""MMStar (Chen et al. 2024, arXiv:2403.20330): 1,500 vision-indispensable multiple-choice questions.

Layout (hub `Lin-Chen/MMStar`, file `mmstar.parquet`, split `val`; dataset card features): `index` (int64),
`question` (string, the options inside it: "...\\nOptions: A: ..., B: ..., C: ..., D: ..."), `image` (Image: struct
{bytes: binary, path: string}), `answer` (string, a letter), `category` and `l2_category` (strings: 6 core
capabilities x 3 dimensions), `meta_info` (struct {source, split, image_path}).

Prompt: the question, then lmms-eval's instruction (`lmms_eval/tasks/mmstar`: "Answer with the option's letter from
the given choices directly."). Rule: the letter MMMU's official option parser reads in the answer part of the
response (`parse_option`); lmms-eval's own `exact_match` accepts only a response that *starts* with the letter,
"(", "option " or "the answer is ", which a reasoning response never does. Breakdown: `category`, `l2_category` (as
lmms-eval's `mmstar_aggregate_results`; its average is the mean of the 6 category scores, equal to our micro
`overall` on the full, balanced set of 250 per category).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from common.benchmark_judges import LETTERS, extract_option, option_judge
from common.schema import RecordError, get_field
from data_builders.sources import user_messages
from policy_eval.base import BenchmarkItem, score_option

HUB_ID = "Lin-Chen/MMStar"
SHARD_GLOB = "*.parquet"
BREAKDOWN = ("category", "l2_category")
INSTRUCTION = "Answer with the option's letter from the given choices directly."
_OPTION = re.compile(r"(?:^|,\s*)([A-Z]):\s")


def options_in(question: str) -> list[str]:
    """The option texts of "Options: A: x, B: y, ..." (the last `Options:` of the question), or [] if none."""
    _, sep, tail = question.rpartition("Options:")
    if not sep:
        return []
    tail = tail.strip()
    marks = []
    for m in _OPTION.finditer(tail):
        if m.group(1) == LETTERS[len(marks)]:  # the next letter in order: A, B, C...
            marks.append(m)
    ends = [m.start() for m in marks[1:]] + [len(tail)]
    return [tail[m.end() : end].strip() for m, end in zip(marks, ends)]


def read_row(row: Mapping, index: int, ref: str) -> BenchmarkItem:
    question = get_field(row, "question", ref)
    options = options_in(question)
    if len(options) < 2:
        raise RecordError(ref, "question", "no 'Options: A: ..., B: ...' list in the question")
    answer = get_field(row, "answer", ref).strip()
    if answer not in LETTERS[: len(options)]:
        raise RecordError(ref, "answer", f"expected one of the option letters {list(LETTERS[: len(options)])}, "
                          f"got {answer!r}")  # fmt: skip
    record = {"id": f"mmstar-{get_field(row, 'index', ref, int)}", "source": "mmstar", "answer": answer,
              "choices": options, "images": [get_field(row, "image", ref, (dict, bytes, str))],
              "prompt": user_messages(f"{question}\n{INSTRUCTION}", 1, ref, "question")}  # fmt: skip
    fields = {name: get_field(row, name, ref) for name in BREAKDOWN}
    return BenchmarkItem(record, fields)


extract, judge, score = extract_option, option_judge, score_option
