"""MathVista testmini (Lu et al. 2024, arXiv:2310.02255): 1,000 visual math questions, multiple choice and free form.

Layout (hub `AI4Math/MathVista`, `data/testmini-00000-of-00001-<hash>.parquet`, split `testmini`; dataset card
features): `pid` (string), `question` (string), `image` (string: the image's path in `images.zip`),
`decoded_image` (Image: struct {bytes: binary, path: string}), `choices` (list<string>, null for free form), `unit`
(string or null), `precision` (float64: decimals of a float answer, else null), `answer` (string), `question_type`
("multi_choice" or "free_form"), `answer_type` ("text", "integer", "float" or "list"), `metadata` (struct: category,
context, grade, img_height, img_width, language, skills (list<string>), source, split, task), `query` (string: the
official prompt, hint included).

Prompt: `query`. Rule (lupantech/MathVista `evaluation/calculate_score.py`, `normalize_extracted_answer` then
`safe_equal`): multiple choice: the extracted letter's choice text, else the choice nearest the extracted text by
edit distance, must equal `answer`; integer: `str(int(float(x)))`; float: `str(round(float(x), precision))`; list
and text: the text itself. **The official pipeline extracts the answer with GPT** (`extract_answer.py`); we read it
without a model: the final answer of the response (`common.correctness.final_answer`: after `</think>`, the last
`\\boxed{...}`, else the last "answer is" / "Answer:" statement, else a short response itself), its option letter
by MMMU's parser (`base.parse_option`), its last number (units and thousands separators dropped) for integer and
float answers, its numbers for lists. Breakdown: the official target keys (`question_type`, `answer_type`, `language`, `source`, `category`, `task`, `context`, `grade`,
`skills`; a question counts under each of its skills).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from common.correctness import final_answer, register_judge
from common.schema import RecordError, get_field
from data_builders.sources import user_messages
from policy_eval.base import LETTERS, BenchmarkItem, parse_option

HUB_ID = "AI4Math/MathVista"
SHARD_GLOB = "testmini-*.parquet"
BREAKDOWN = ("question_type", "answer_type", "language", "source", "category", "task", "context", "grade", "skills")
ANSWER_TYPES = ("text", "integer", "float", "list")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def read_row(row: Mapping, index: int, ref: str) -> BenchmarkItem:
    question_type = get_field(row, "question_type", ref)
    answer_type = get_field(row, "answer_type", ref)
    answer = get_field(row, "answer", ref).strip()
    choices = row.get("choices") or None
    if question_type == "multi_choice":
        if not isinstance(choices, list) or len(choices) < 2 or answer not in choices:
            raise RecordError(ref, "choices", f"a multi_choice question needs its answer {answer!r} among two choices "
                              f"or more, got {choices!r}")  # fmt: skip
    elif question_type != "free_form":
        raise RecordError(ref, "question_type", f"expected 'multi_choice' or 'free_form', got {question_type!r}")
    if answer_type not in ANSWER_TYPES:
        raise RecordError(ref, "answer_type", f"expected one of {ANSWER_TYPES}, got {answer_type!r}")
    precision = row.get("precision")
    if answer_type == "float" and question_type == "free_form":
        if not isinstance(precision, (int, float)) or precision != int(precision) or precision < 0:
            raise RecordError(ref, "precision", f"a float answer needs a whole number of decimals, got {precision!r}")
    meta = get_field(row, "metadata", ref, dict)
    record = {"id": f"mathvista-{get_field(row, 'pid', ref, (str, int))}", "source": "mathvista", "answer": answer,
              "choices": choices if question_type == "multi_choice" else None,
              "images": [get_field(row, "decoded_image", ref, (dict, bytes, str))],
              "prompt": user_messages(get_field(row, "query", ref), 1, ref, "query")}  # fmt: skip
    fields = {"question_type": question_type, "answer_type": answer_type, "unit": row.get("unit"),
              "precision": int(precision) if isinstance(precision, (int, float)) else None,
              **{key: meta.get(key) for key in BREAKDOWN[2:]}}  # fmt: skip
    fields["skills"] = list(fields["skills"] or [])
    return BenchmarkItem(record, fields)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (the official scorer's `Levenshtein.distance`)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _numbers(text: str) -> list[str]:
    return [m.group().replace(",", "") for m in _NUMBER.finditer(text)]


def _decimals(answer: str) -> int:
    return len(answer.split(".", 1)[1]) if "." in answer else 0


def _answer_type(answer: str, choices: Sequence[str] | None) -> str:
    """The answer type a bare (answer, choices) pair implies (for the `judge` registry entry, which sees no row)."""
    if choices:
        return "multi_choice"
    if answer.startswith("["):
        return "list"
    try:
        float(answer)
    except ValueError:
        return "text"
    return "float" if "." in answer else "integer"


def normalized_prediction(response: str, choices: Sequence[str] | None, answer_type: str,
                          precision: int | None) -> str | None:  # fmt: skip
    """The official `normalize_extracted_answer` of our extracted answer (None: nothing of that type found)."""
    text = final_answer(response)
    if choices:
        letter = parse_option(text, choices)
        if letter is not None:
            return choices[LETTERS.index(letter)]
        return min(choices, key=lambda c: edit_distance(text, c))  # first nearest, as the official `index(min)`
    numbers = _numbers(text)
    if answer_type == "integer":
        return str(int(float(numbers[-1]))) if numbers else None
    if answer_type == "float":
        return str(round(float(numbers[-1]), precision or 0)) if numbers else None
    if answer_type == "list":
        return "[" + ", ".join(numbers) + "]" if numbers else None
    return text or None


def _equal(prediction: str | None, answer: str, answer_type: str) -> bool:
    if prediction is None:
        return False
    if answer_type == "list":  # the same numbers in the same order, however written
        return [float(n) for n in _numbers(prediction)] == [float(n) for n in _numbers(answer)]
    if answer_type == "text":
        return prediction.strip().lower() == answer.strip().lower()
    return prediction == answer


def extract(response: str, answer: str, choices: Sequence[str] | None) -> str | None:
    kind = _answer_type(answer, choices)
    return normalized_prediction(response, choices, kind, _decimals(answer))


@register_judge("mathvista", sources=("mathvista",))
def judge(response: str, answer: str, choices: Sequence[str] | None) -> bool:
    """The rule from a bare (answer, choices): the type from the answer's form, the precision from its decimals."""
    return _equal(extract(response, answer, choices), answer.strip(), _answer_type(answer, choices))


def score(response: str, item: BenchmarkItem) -> tuple[str | None, bool]:
    """With the row's own `answer_type` and `precision`."""
    record, fields = item.record, item.fields
    kind = "multi_choice" if record.get("choices") else fields["answer_type"]
    prediction = normalized_prediction(response, record.get("choices"), kind, fields["precision"])
    return prediction, _equal(prediction, record["answer"], kind)
