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

Rule (MMMU-Benchmark/MMMU `mmmu/utils/eval_utils.py`), on the answer part of the response (after `</think>`):
multiple choice: `parse_multi_choice_response` (`base.parse_option`) then equality, but a response naming no option
is wrong (the official script guesses a random option); open: `parse_open_response` (key sub-responses after "is ",
"so ", "therefore ", "answer "..., "=" in the last line, plus every number in them; numbers rounded to 2 decimals,
strings lower-cased) then `eval_open` (a gold number equals a parsed number, or a gold string is contained in a
parsed string). Breakdown: the official 6 disciplines (`DOMAIN_CAT2SUB_CAT`), the 30 subjects, `question_type`,
`topic_difficulty`; `overall` is the official micro accuracy over all questions.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence

from common.correctness import register_judge
from common.schema import RecordError, get_field
from data_builders.sources import user_messages
from policy_eval.base import LETTERS, BenchmarkItem, after_thinking, extract_option, option_lines

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


# > the open-answer rule (`parse_open_response`, `eval_open`)
_KEY_MARKS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # with thousands separators
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])"),  # plain
)


def _normalize(text: str) -> list:
    """A number: [itself rounded to 2 decimals]; a string: [lower-cased], a single character padded both ways."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [f" {text}", f"{text} "] if len(text) == 1 else [text]


def _key_parts(response: str) -> list[str]:
    """The tails after the official key phrases, per line (lower-cased first: the official sentence split on
    ". " before a capital therefore never fires, and lines are what split)."""
    response = response.strip().strip(".").lower()
    lines = re.split(r"\.\s(?=[A-Z])|\n", response)
    parts = []
    for i, line in enumerate(lines):
        marks = _KEY_MARKS + (("=",) if i == len(lines) - 1 else ())
        shortest = None
        for mark in marks:
            if mark in line:
                tail = line.split(mark)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            parts.append(shortest)
    return parts or [response]


def parse_open(response: str) -> list:
    """Every candidate answer the official open rule reads in a response (numbers as floats, strings lower-cased)."""
    parts = _key_parts(response)
    candidates = parts + [n for part in parts for pattern in _NUMBER_PATTERNS for n in pattern.findall(part)]
    out: list = []
    for candidate in candidates:
        out += [c for c in _normalize(candidate) if c not in out]
    return out


def open_correct(answer: str, parsed: Sequence) -> bool:
    golds = ast.literal_eval(answer) if answer.startswith("[") else [answer]
    normalized = [n for gold in golds for n in _normalize(gold)]
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in normalized):
                return True
        elif pred in normalized:
            return True
    return False


def extract(response: str, answer: str, choices: Sequence[str] | None) -> str | None:
    """The option letter (multiple choice) or the parsed candidates joined by " | " (open; None when empty)."""
    if choices:
        return extract_option(response, answer, choices)
    return " | ".join(map(str, parse_open(after_thinking(response)))) or None


@register_judge("mmmu", sources=("mmmu",))
def judge(response: str, answer: str, choices: Sequence[str] | None) -> bool:
    """MMMU's official rule: the option parser with `choices`, else the open-answer rule."""
    if choices:
        return extract_option(response, answer, choices) == answer.strip()
    return open_correct(answer.strip(), parse_open(after_thinking(response)))


def score(response: str, item: BenchmarkItem) -> tuple[str | None, bool]:
    answer, choices = item.record["answer"], item.record.get("choices")
    return extract(response, answer, choices), judge(response, answer, choices)
