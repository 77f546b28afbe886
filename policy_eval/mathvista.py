"""MathVista testmini (Lu et al. 2024, arXiv:2310.02255): 1,000 visual math questions, multiple choice and free form.

Layout (hub `AI4Math/MathVista`, `data/testmini-00000-of-00001-<hash>.parquet`, split `testmini`; dataset card
features): `pid` (string), `question` (string), `image` (string: the image's path in `images.zip`),
`decoded_image` (Image: struct {bytes: binary, path: string}), `choices` (list<string>, null for free form), `unit`
(string or null), `precision` (float64: decimals of a float answer, else null), `answer` (string), `question_type`
("multi_choice" or "free_form"), `answer_type` ("text", "integer", "float" or "list"), `metadata` (struct: category,
context, grade, img_height, img_width, language, skills (list<string>), source, split, task), `query` (string: the
official prompt, hint included).

Prompt: `query`. Rule (lupantech/MathVista `evaluation/calculate_score.py`, `normalize_extracted_answer` then
`safe_equal`; the judge `common.benchmark_judges.mathvista_judge`): multiple choice: the extracted letter's choice
text, else the choice nearest the extracted text by edit distance, must equal `answer`; integer:
`str(int(float(x)))`; float: `str(round(float(x), precision))`; list and text: the text itself. **The official
pipeline extracts the answer with GPT** (`extract_answer.py`); we read it without a model: the final answer of the
response (`common.correctness.final_answer`: after `</think>`, the last `\\boxed{...}`, else the last "answer is" /
"Answer:" statement, else a short response itself), its option letter by MMMU's parser (`parse_option`), its last
number (units and thousands separators dropped) for integer and float answers, its numbers for lists. Breakdown:
the official target keys (`question_type`, `answer_type`, `language`, `source`, `category`, `task`, `context`,
`grade`, `skills`; a question counts under each of its skills).
"""

from __future__ import annotations

from collections.abc import Mapping

from common.benchmark_judges import mathvista_equal, mathvista_extract, mathvista_judge, mathvista_prediction
from common.schema import RecordError, get_field
from data_builders.sources import user_messages
from policy_eval.base import BenchmarkItem

HUB_ID = "AI4Math/MathVista"
SHARD_GLOB = "testmini-*.parquet"
BREAKDOWN = ("question_type", "answer_type", "language", "source", "category", "task", "context", "grade", "skills")
ANSWER_TYPES = ("text", "integer", "float", "list")


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


extract, judge = mathvista_extract, mathvista_judge  # the official rule, registered as judge `mathvista`


def score(response: str, item: BenchmarkItem) -> tuple[str | None, bool]:
    """With the row's own `answer_type` and `precision`."""
    record, fields = item.record, item.fields
    kind = "multi_choice" if record.get("choices") else fields["answer_type"]
    prediction = mathvista_prediction(response, record.get("choices"), kind, fields["precision"])
    return prediction, mathvista_equal(prediction, record["answer"], kind)
