"""MMMU validation (Yue et al. 2024, arXiv:2311.16502): 900 college-level questions over 30 subjects, multiple choice
and open, with up to 7 images.

Layout (hub `MMMU/MMMU`: one config per subject, `<Subject>/validation-00000-of-00001.parquet`; dataset card
features): `id` (string, `validation_<Subject>_<n>`), `question` (string with `<image k>` placeholders),
`options` (string: a Python list literal, "[]" for open questions; may hold placeholders too), `explanation`,
`image_1` .. `image_7` (Image: struct {bytes: binary, path: string}, null where unused), `img_type` (string),
`answer` (string: a letter, or for open questions the answer, sometimes a Python list literal of accepted
answers), `topic_difficulty`, `question_type` ("multiple-choice" or "open"), `subfield`.

Prompt (lmms-eval `tasks/mmmu/utils.py` `construct_prompt`): the question, the options as "A. ..." lines, then
"Answer with the option's letter from the given choices directly." (open: "Answer the question using a single word
or phrase."). The first mention of `<image k>` becomes image k at that place; a later mention stays as text; images
not mentioned go first.

Rule (MMMU-Benchmark/MMMU `mmmu/utils/eval_utils.py`; the judge `common.benchmark_judges.mmmu_judge`), on the
answer part of the response (after `</think>`): multiple choice: `parse_multi_choice_response` (`parse_option`) then
equality, but a response naming no option is wrong (the official script guesses a random option); open:
`parse_open_response` (key sub-responses after "is ", "so ", "therefore ", "answer "..., "=" in the last line, plus
every number in them; numbers rounded to 2 decimals, strings lower-cased) then `eval_open` (a gold number equals a
parsed number, or a gold string is contained in a parsed string). Breakdown: the official 6 disciplines
(`DOMAIN_CAT2SUB_CAT`), the 30 subjects, `question_type`, `topic_difficulty`; `overall` is the official micro
accuracy over all questions.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

from common.benchmark_judges import LETTERS, mmmu_extract, mmmu_judge
from common.schema import RecordError, get_field
from data_builders.sources import user_messages
from policy_eval.base import BenchmarkItem, option_lines

HUB_ID = "MMMU/MMMU"
SHARD_GLOB = "validation-*.parquet"
BREAKDOWN = ("domain", "subject", "question_type", "topic_difficulty")
DOMAINS = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}  # fmt: skip
SUBJECT_DOMAIN = {subject: domain for domain, subjects in DOMAINS.items() for subject in subjects}
MULTI_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_PROMPT = "Answer the question using a single word or phrase."
MAX_IMAGES = 7
_PLACEHOLDER = re.compile(r"<image (\d+)>")
_ID = re.compile(r"^(?:dev|validation|test)_(.+)_\d+$")


def _literal_list(text: str, ref: str, field: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise RecordError(ref, field, f"expected a Python list literal, got {text[:80]!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordError(ref, field, f"expected a list of strings, got {text[:80]!r}")
    return value


def _place_images(text: str, row: Mapping, ref: str) -> tuple[str, list]:
    """`text` with each image's first `<image k>` turned into an `<image>` tag, and the images in prompt order."""
    present = {k: row[f"image_{k}"] for k in range(1, MAX_IMAGES + 1) if row.get(f"image_{k}") is not None}
    placed: list[int] = []

    def tag(m: re.Match) -> str:
        k = int(m.group(1))
        if k not in present:
            raise RecordError(ref, f"image_{k}", f"the text mentions <image {k}> but image_{k} is empty")
        if k in placed:
            return m.group()
        placed.append(k)
        return "<image>"

    text = _PLACEHOLDER.sub(tag, text)
    untagged = [k for k in sorted(present) if k not in placed]  # `user_messages` puts untagged images first
    return text, [present[k] for k in untagged + placed]


def read_row(row: Mapping, index: int, ref: str) -> BenchmarkItem:
    rid = get_field(row, "id", ref)
    match = _ID.match(rid)
    if not match or match.group(1) not in SUBJECT_DOMAIN:
        raise RecordError(ref, "id", f"expected '<split>_<Subject>_<n>' with an MMMU subject, got {rid!r}")
    question_type = get_field(row, "question_type", ref)
    options = _literal_list(get_field(row, "options", ref), ref, "options")
    answer = get_field(row, "answer", ref).strip()
    if question_type == "multiple-choice":
        if len(options) < 2:
            raise RecordError(ref, "options", f"a multiple-choice question needs two options or more, got {options!r}")
        if answer not in LETTERS[: len(options)]:
            raise RecordError(ref, "answer", f"expected an option letter, got {answer!r}")
        text = f"{get_field(row, 'question', ref)}\n{option_lines(options)}\n\n{MULTI_CHOICE_PROMPT}"
    elif question_type == "open":
        if answer.startswith("["):
            _literal_list(answer, ref, "answer")
        text = f"{get_field(row, 'question', ref)}\n\n{OPEN_PROMPT}"
    else:
        raise RecordError(ref, "question_type", f"expected 'multiple-choice' or 'open', got {question_type!r}")
    text, images = _place_images(text, row, ref)
    record = {"id": rid, "source": "mmmu", "answer": answer, "choices": options or None, "images": images,
              "prompt": user_messages(text, len(images), ref, "question")}  # fmt: skip
    subject = match.group(1)
    fields = {"domain": SUBJECT_DOMAIN[subject], "subject": subject, "question_type": question_type,
              "topic_difficulty": row.get("topic_difficulty") or "unknown"}  # fmt: skip
    return BenchmarkItem(record, fields)


extract, judge = mmmu_extract, mmmu_judge  # the official rule, registered as judge `mmmu`


def score(response: str, item: BenchmarkItem) -> tuple[str | None, bool]:
    answer, choices = item.record["answer"], item.record.get("choices")
    return extract(response, answer, choices), judge(response, answer, choices)
