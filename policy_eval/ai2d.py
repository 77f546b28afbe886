"""AI2D (Kembhavi et al. 2016, "A Diagram Is Worth A Dozen Images"): 3,088 science-diagram multiple-choice questions.

Layout (hub `lmms-lab/ai2d`, `data/test-*.parquet`, split `test`; dataset card features): `question` (string),
`options` (list<string>), `answer` (string: the index of the right option, "0".."3"), `image` (Image: struct
{bytes: binary, path: string}). No id column: the row number is the id.

Prompt (lmms-eval `tasks/ai2d`, default): the question, the options as "A. ..." lines, then "Answer with the
option's letter from the given choices directly." Rule: the letter MMMU's official option parser reads in the
answer part of the response (`parse_option`); lmms-eval extracts the first letter-like token with a regex
filter and matches it exactly. Breakdown: none (lmms-eval reports one accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping

from common.benchmark_judges import LETTERS, extract_option, option_judge
from common.schema import RecordError, get_field
from data_builders.sources import user_messages
from policy_eval.base import BenchmarkItem, option_lines, score_option

HUB_ID = "lmms-lab/ai2d"
SHARD_GLOB = "test-*.parquet"
BREAKDOWN = ()
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def read_row(row: Mapping, index: int, ref: str) -> BenchmarkItem:
    options = get_field(row, "options", ref, list)
    if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
        raise RecordError(ref, "options", f"expected at least two non-empty option strings, got {options!r}")
    answer = get_field(row, "answer", ref).strip()
    if not answer.isdigit() or int(answer) >= len(options):
        raise RecordError(ref, "answer", f"expected an option index 0..{len(options) - 1}, got {answer!r}")
    text = f"{get_field(row, 'question', ref)}\n{option_lines(options)}\n{INSTRUCTION}"
    record = {"id": f"ai2d-{index}", "source": "ai2d", "answer": LETTERS[int(answer)], "choices": options,
              "images": [get_field(row, "image", ref, (dict, bytes, str))],
              "prompt": user_messages(text, 1, ref, "question")}  # fmt: skip
    return BenchmarkItem(record, {})


extract, judge, score = extract_option, option_judge, score_option
