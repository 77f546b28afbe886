"""Whether a response gives the ground-truth answer, judged as a careful grader would: the one rule for pair selection
(the `correctness` rule), the MPO evaluation hook, the rounds' held-out accuracy and policy benchmarks.

Only the response's **final answer** counts (`final_answer`): the text after a closing ``</think>`` (an unclosed
``<think>`` is a cut-off response: no answer); in it, the last complete ``\\boxed{...}``; else the last answer
statement ("the answer is ...", "Answer: ...", "Final answer ..."), up to the end of its sentence; else, for a short
response, all of it; else a last sentence that concludes ("Therefore, ..."). Anything else (a long chain of thought
that stops without concluding) has no final answer and is wrong.

The final answer is then compared with the ground truth by a **judge** (`JUDGES`; see docs/correctness.md):

* ``default``: with `choices` (the options), the option the final answer names: a leading label ("B. because ...")
  or else the last option named, by letter (``(C)``, ``C.``, ``C)``, ``Answer: C``, a bare capital ``C``) or by its
  text; "a"/"A" as an article and "I" as a pronoun never name an option; an option named as wrong ("not A", "A is
  incorrect") does not count, and a hedge ("B or C") is wrong. Without choices, normalised string equality, then
  numbers (thousands separators, negatives, fractions, percentages, units, ``\\frac{1}{2}`` = 0.5: the last number of
  the final answer), then the ground truth as whole words ("red" is not found in "reddish"), then arithmetic
  evaluated (``2\\sqrt{3}`` = ``\\sqrt{12}``, ``x(x+5)`` = ``x^2+5x`` at three points); only what these fast checks
  cannot settle (equations, functions) goes to HF's `math-verify`, in worker processes when off the main thread or
  for a batch (its timeouts are Unix signals: they work only in a process's main thread): `common.math_answers`.
* ``relaxed_numeric``: ChartQA's relaxed accuracy (a number within 5% of the ground truth, else exact text).
* ``mmstar``, ``mmmu``, ``mathvista``, ``ai2d``: the policy benchmarks' official rules (`common.benchmark_judges`,
  imported at the end of this module, so they are registered wherever this module is).

Answers may be words, numbers ("12", or 12 stored as a number), letters ("B"), phrases or LaTeX.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from common.math_answers import (
    clean_latex,
    gold_number,
    is_expression,
    math_equal_fast,
    numbers,
    same_number,
    symbolic_equal_many,
)

Judge = Callable[[str, str, "list[str] | None"], bool]
JUDGES: dict[str, Judge] = {}  # name -> fn(response, answer, choices) -> bool
SOURCE_JUDGES: dict[str, str] = {}  # prompt-record `source` (or its prefix before a "/") -> judge name

SHORT_RESPONSE_CHARS = 300  # a response at most this long with no answer statement is its own final answer


def register_judge(name: str, sources: Sequence[str] = ()) -> Callable[[Judge], Judge]:
    """Register `fn(response, answer, choices) -> bool` as judge `name`, and as the judge of prompt records whose
    `source` is (or starts with "<source>/") one of `sources`."""

    def register(fn: Judge) -> Judge:
        old = JUDGES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"judge {name!r} is already registered ({old.__module__}.{old.__qualname__})")
        JUDGES[name] = fn
        for source in sources:
            SOURCE_JUDGES[source.lower()] = name
        return fn

    return register


def judge_for(record: Mapping) -> str | None:
    """The judge of a prompt record: its `judge` field, else the one registered for its `source` (or the longest
    "/"-prefix of it), else None (the default judge)."""
    if record.get("judge"):
        return record["judge"]
    source = str(record.get("source") or "").lower()
    while source:
        if source in SOURCE_JUDGES:
            return SOURCE_JUDGES[source]
        source = source.rpartition("/")[0]
    return None


def check_judge(name: str | None) -> Judge:
    """The judge called `name` (None: the default); an unknown name is a ValueError listing the known ones."""
    try:
        return JUDGES[name or "default"]
    except KeyError:
        raise ValueError(f"unknown judge {name!r}; registered judges: {', '.join(sorted(JUDGES))}") from None


def correctness(
    responses: Sequence[str], answer, choices: Sequence | None = None, *, judge: str | None = None
) -> list[bool] | None:
    """Per-response correctness against `answer`; None when there is no answer (missing or blank): nothing to judge.

    `choices` are the options the answer is one of (their texts, or letters); `answer` may be an option's text or its
    letter. `judge` names a registered judge (None: ``default``).
    """
    fn = check_judge(judge)
    if answer is None or not str(answer).strip():
        return None
    answer = str(answer).strip()
    choices = [str(c) for c in choices] if choices else None
    if fn is not default_judge:
        return [bool(fn(r, answer, choices)) for r in responses]
    verdicts = [_default_fast(final_answer(r), answer, choices) for r in responses]
    pending = [v for v in verdicts if isinstance(v, tuple)]
    settled = dict(zip(pending, symbolic_equal_many(pending)))
    return [settled[v] if isinstance(v, tuple) else v for v in verdicts]


# ---------------------------------------------------------------------------------------------- the final answer

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_STATEMENT = re.compile(
    r"(?i)(?:\bfinal\s+answer\b[\s*_]*(?:is\b|[:=]|\n)|\b(?:correct\s+|right\s+|best\s+)?answer\b[\s*_]*"
    r"(?:is\b|would\s+be\b|should\s+be\b|must\s+be\b|will\s+be\b|[:=])|\bcorrect\s+(?:option|choice)\b[\s*_]*"
    r"(?:is\b|would\s+be\b|[:=]))[\s*_:]*"
)
# the end of a sentence: a newline, or a full stop (not a decimal point) before a space or the end
_SENTENCE_END = re.compile(r"\n|[.!?](?=\s|$)")
_CONCLUSION = re.compile(r"(?i)^\s*(?:therefore|thus|hence|so)\b[\s,:]*")


def _last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (nested braces counted); "" when the last one is cut off."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return ""


def _sentence(text: str) -> str:
    """`text` up to its first sentence end (a newline, or a full stop that is not a decimal point)."""
    text = text.lstrip()
    m = _SENTENCE_END.search(text)
    return (text[: m.start()] if m else text).strip()


def final_answer(response: str) -> str:
    """The part of `response` that states its final answer; "" when it has none (e.g. it was cut off)."""
    text = str(response)
    if _THINK_CLOSE in text:
        text = text.rpartition(_THINK_CLOSE)[2]
    elif _THINK_OPEN in text:
        return ""  # still thinking when it stopped
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    statements = list(_STATEMENT.finditer(text))
    if statements:
        return _sentence(text[statements[-1].end() :])
    text = text.strip()
    if len(text) <= SHORT_RESPONSE_CHARS:
        return text
    last = re.split(r"(?<=[.!?])\s+|\n", text.rstrip(".!? \n"))[-1]
    m = _CONCLUSION.match(last)
    return last[m.end() :].strip() if m else ""


# ----------------------------------------------------------------------------------------------------- options

_LETTER_AFTER_KEYWORD = re.compile(
    r"(?i)\b(?:option|choice|answer)\s*(?:is\s*)?[:\-]?\s*\(?([a-z])\)?(?=[\s.,:;)!?*]*$|[.,:;)!?*])"
)
_LETTER_PARENS = re.compile(r"[(\[]([A-Za-z])[)\]]")
_LETTER_BARE = re.compile(r"(?<![\w'’\\^_$])([A-Z])(?![\w'’])")
_LEAD_LABEL = re.compile(r"^[\s*_]*[(\[]?([A-Za-z])(?:[.):\]]|\s*$)")
_NEXT_WORD = re.compile(r"\s+([a-z]+)")
# words that follow a letter naming an option, never the article "A" or the pronoun "I"
_AFTER_LABEL = {"is", "and", "or", "because", "since", "as", "but", "which", "not", "seems", "appears", "matches"}
_NEGATED_BEFORE = re.compile(r"(?i)(?:\bnot|n't|\brather\s+than|\binstead\s+of|\bexcept|\brule\s+out|\beliminate)"
                             r"\s*(?:option\s+|choice\s+)?[(\[]?$")  # fmt: skip
_NEGATED_AFTER = re.compile(r"(?i)^[)\]]?\s*(?:is|are|was|seems)?\s*(?:wrong|incorrect|false|not\b|ruled\s+out)")
_HEDGE = re.compile(r"(?i)^[)\].\s]*(?:/|\bor\b|\band/or\b)[\s(\[]*(?:option\s+|choice\s+)?$")


def _norm(text: str) -> str:
    return " ".join(clean_latex(str(text)).lower().split()).strip(" .!?*")


def _letter_index(letter: str, choices: Sequence[str]) -> int | None:
    """The option a letter names: itself when the options are letters, else its position (A = first)."""
    upper = [c.strip().upper() for c in choices]
    if all(len(c) == 1 and c.isalpha() for c in upper):
        return upper.index(letter.upper()) if letter.upper() in upper else None
    i = ord(letter.upper()) - ord("A")
    return i if 0 <= i < len(choices) else None


def _letter_mentions(span: str, choices: Sequence[str]) -> list[tuple[int, int, int]]:
    """(start, end, option index) of option letters: in parentheses, after "option/answer", or a capital alone."""
    found = {}
    for pattern in (_LETTER_AFTER_KEYWORD, _LETTER_PARENS):
        for m in pattern.finditer(span):
            found[m.start(1)] = (m.start(1), m.end(1), m[1])
    for m in _LETTER_BARE.finditer(span):
        if m.start(1) in found:
            continue
        if m[1] in "AI" and (w := _NEXT_WORD.match(span, m.end())) and w[1] not in _AFTER_LABEL:
            continue  # "A triangle", "I think"
        found[m.start(1)] = (m.start(1), m.end(1), m[1])
    return [(s, e, i) for s, e, letter in found.values() if (i := _letter_index(letter, choices)) is not None]


def _text_mentions(span: str, choices: Sequence[str]) -> list[tuple[int, int, int]]:
    """(start, end, option index) of options named by their text (whole words; the longest of overlapping ones)."""
    low = span.lower()
    hits = []
    for i, c in enumerate(choices):
        text = _norm(c)
        if len(text) < 2 and text.isalpha():
            continue  # a letter: named as a label, not as text
        if text:
            hits += [(m.start(), m.end(), i) for m in re.finditer(r"(?<![\w])" + re.escape(text) + r"(?![\w])", low)]
    hits.sort(key=lambda h: (h[0], -(h[1] - h[0])))
    kept = []
    for h in hits:
        if not kept or h[0] >= kept[-1][1]:
            kept.append(h)
    return kept


def _named_option(span: str, choices: Sequence[str]) -> int | None:
    """The option the final answer names (see the module docstring); None for none, or a hedge."""
    span = clean_latex(span)
    lead = _LEAD_LABEL.match(span)
    if lead and (i := _letter_index(lead[1], choices)) is not None:
        return i
    mentions = sorted(_letter_mentions(span, choices) + _text_mentions(span, choices))
    mentions = [(s, e, i) for s, e, i in mentions
                if not _NEGATED_BEFORE.search(span[max(0, s - 20) : s]) and not _NEGATED_AFTER.match(span[e:])]  # fmt: skip
    for (_, e1, i1), (s2, _, i2) in zip(mentions, mentions[1:]):
        if i1 != i2 and _HEDGE.match(span[e1:s2]):
            return None
    if mentions:
        return mentions[-1][2]
    value = numbers(span)
    if value:
        matches = {i for i, c in enumerate(choices) if (g := gold_number(c)) and same_number(g, value[-1])}
        if len(matches) == 1:
            return matches.pop()
    return None


def _answer_index(answer: str, choices: Sequence[str]) -> int | None:
    """Which option the ground truth is: by its text, else a letter's position, else a unique equal number."""
    normed = [_norm(c) for c in choices]
    if _norm(answer) in normed:
        return normed.index(_norm(answer))
    if len(answer) == 1 and answer.isalpha():
        return _letter_index(answer, choices)
    gold = gold_number(answer)
    matches = [i for i, c in enumerate(choices) if gold and (g := gold_number(c)) and same_number(gold, g)]
    return matches[0] if len(matches) == 1 else None


# ------------------------------------------------------------------------------------------- the default judge

_WORDS = re.compile(r"[a-z][a-z '\-]*")
_LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]


def _contains(span: str, gold: str) -> bool:
    """`gold` in `span` as whole words, not negated ("not red")."""
    for m in re.finditer(r"(?<![\w])" + re.escape(gold) + r"(?![\w])", span):
        if not _NEGATED_BEFORE.search(span[max(0, m.start() - 20) : m.start()]):
            return True
    return False


def _default_fast(span: str, answer: str, choices: list[str] | None) -> bool | tuple[str, str]:
    """The default judge's fast checks on a final answer: a verdict, or (answer, span) for the symbolic check."""
    if not span:
        return False
    if choices is None and len(answer) == 1 and answer.isalpha():
        choices = _LETTERS  # a letter answer without its options: judge it as an option letter
    if choices is not None:
        truth = _answer_index(answer, choices)
        if truth is not None:
            return _named_option(span, choices) == truth
    got, gold = _norm(span), _norm(answer)
    if got == gold:
        return True
    value = gold_number(answer)
    if value is not None and not is_expression(span):
        found = numbers(span)
        return bool(found) and same_number(value, found[-1])
    if value is None and _contains(got, gold):
        return True
    if value is None and _WORDS.fullmatch(gold):
        return False
    # an expression ("\\sqrt{2}", "x(x + 3)": its last number is not its value), a set, an interval: settled here
    # when both sides are arithmetic, or sets / intervals of numbers
    same = math_equal_fast(answer, span)
    return (answer, span) if same is None else same


@register_judge("default")
def default_judge(response: str, answer: str, choices: list[str] | None) -> bool:
    """Final answer against the ground truth: options, numbers, words, then math-verify (module docstring)."""
    verdict = _default_fast(final_answer(response), answer, choices)
    return symbolic_equal_many([verdict])[0] if isinstance(verdict, tuple) else verdict


@register_judge("relaxed_numeric", sources=("chartqa",))
def relaxed_numeric(response: str, answer: str, choices: list[str] | None, max_relative_change: float = 0.05) -> bool:
    """ChartQA's relaxed accuracy: a number within 5% of a numeric ground truth (a trailing % divides by 100), else
    the same text, case-insensitive (`relaxed_correctness` in google-research/pix2struct `pix2struct/metrics.py`).
    We read the number from the final answer (thousands separators and units allowed) rather than float() of it all.
    """
    if choices:
        return default_judge(response, answer, choices)
    span = final_answer(response)
    gold, found = gold_number(answer), numbers(span)
    if gold and gold[0] and found:
        target = gold[0] / 100 if gold[1] else gold[0]
        got = found[-1][0] / 100 if found[-1][1] else found[-1][0]
        return abs(got - target) / abs(target) <= max_relative_change
    return _norm(span) == _norm(answer)


# The policy benchmarks' rules (MMStar, MMMU, MathVista, AI2D) register themselves here, after `final_answer` and
# `register_judge` exist, so that every importer of this module judges benchmark-sourced records by their rule.
from common import benchmark_judges  # noqa: E402, F401
