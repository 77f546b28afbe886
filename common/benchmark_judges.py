"""The policy benchmarks' official answer rules, as `common.correctness` judges: pure text rules, no I/O.

Registered at import of `common.correctness` (which imports this module last), so a prompt record whose `source` is
a benchmark (`mmstar`, `mmmu`, `mathvista`, `ai2d`, or "<benchmark>/...") gets its rule wherever it is judged: pair
building, the MPO evaluation hook, the rounds' held-out accuracy, and `policy_eval` (whose readers and scorers use
these functions; their docstrings cite the official scripts each rule follows).

* ``mmstar``, ``ai2d``: the option letter MMMU's official parser reads (`parse_option`) equals the answer letter.
* ``mmmu``: that parser with options; without, MMMU's open-answer rule (`parse_open`, `open_correct`).
* ``mathvista``: MathVista's `normalize_extracted_answer` and `safe_equal` on our model-free extraction, the
  answer type and precision taken from the answer's form (`mathvista_prediction`, `mathvista_equal`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from common.correctness import final_answer, register_judge

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
THINK_START, THINK_END = "<think>", "</think>"


def after_thinking(response: str) -> str:
    """The part of a response after its last `</think>` (all of it when it never thinks; "" when a `<think>` is never
    closed: cut off while thinking, as `common.correctness.final_answer` reads it): what the rules read."""
    if THINK_END in response:
        return response.rpartition(THINK_END)[2]
    return "" if THINK_START in response else response


# ------------------------------------------------------------------------------------------ multiple choice


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


@register_judge("ai2d", sources=("ai2d",))
@register_judge("mmstar", sources=("mmstar",))
def option_judge(response: str, answer: str, choices: Sequence[str] | None) -> bool:
    """MMStar's and AI2D's rule: the letter `extract_option` reads is the answer letter."""
    return extract_option(response, answer, choices) == str(answer).strip()


# --------------------------------------------------------------- MMMU's open rule (`parse_open_response`, `eval_open`)

_KEY_MARKS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # with thousands separators
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])"),  # plain
)


def _normalize_open(text: str) -> list:
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
        out += [c for c in _normalize_open(candidate) if c not in out]
    return out


def open_correct(answer: str, parsed: Sequence) -> bool:
    """`eval_open`: a gold number equals a parsed number, or a gold string is in a parsed string (`answer` may be a
    Python list literal of accepted answers)."""
    golds = ast.literal_eval(answer) if answer.startswith("[") else [answer]
    normalized = [n for gold in golds for n in _normalize_open(gold)]
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in normalized):
                return True
        elif pred in normalized:
            return True
    return False


def mmmu_extract(response: str, answer: str, choices: Sequence[str] | None) -> str | None:
    """The option letter (multiple choice) or the parsed candidates joined by " | " (open; None when empty)."""
    if choices:
        return extract_option(response, answer, choices)
    return " | ".join(map(str, parse_open(after_thinking(response)))) or None


@register_judge("mmmu", sources=("mmmu",))
def mmmu_judge(response: str, answer: str, choices: Sequence[str] | None) -> bool:
    """MMMU's official rule: the option parser with `choices`, else the open-answer rule."""
    if choices:
        return extract_option(response, answer, choices) == answer.strip()
    return open_correct(answer.strip(), parse_open(after_thinking(response)))


# --------------------------------------------------------------------------------------- MathVista's normalisation

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


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
    """The answer type a bare (answer, choices) pair implies (the judge sees no row's `answer_type`)."""
    if choices:
        return "multi_choice"
    if answer.startswith("["):
        return "list"
    try:
        float(answer)
    except ValueError:
        return "text"
    return "float" if "." in answer else "integer"


def mathvista_prediction(response: str, choices: Sequence[str] | None, answer_type: str,
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


def mathvista_equal(prediction: str | None, answer: str, answer_type: str) -> bool:
    """The official `safe_equal`, lists compared as numbers in order and text case-insensitively."""
    if prediction is None:
        return False
    if answer_type == "list":  # the same numbers in the same order, however written
        return [float(n) for n in _numbers(prediction)] == [float(n) for n in _numbers(answer)]
    if answer_type == "text":
        return prediction.strip().lower() == answer.strip().lower()
    return prediction == answer


def mathvista_extract(response: str, answer: str, choices: Sequence[str] | None) -> str | None:
    """`mathvista_prediction` with the answer type and precision a bare (answer, choices) pair implies."""
    return mathvista_prediction(response, choices, _answer_type(answer, choices), _decimals(answer))


@register_judge("mathvista", sources=("mathvista",))
def mathvista_judge(response: str, answer: str, choices: Sequence[str] | None) -> bool:
    """The rule from a bare (answer, choices): the type from the answer's form, the precision from its decimals."""
    return mathvista_equal(mathvista_extract(response, answer, choices), answer.strip(), _answer_type(answer, choices))
