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
  cannot settle (sets, intervals, equations, functions) goes to HF's `math-verify`, in worker
  processes when off the main thread or for a batch (its timeouts are Unix signals: they work only in a process's
  main thread).
* ``relaxed_numeric``: ChartQA's relaxed accuracy (a number within 5% of the ground truth, else exact text).

Answers may be words, numbers ("12", or 12 stored as a number), letters ("B"), phrases or LaTeX.
"""

from __future__ import annotations

import ast
import functools
import math
import multiprocessing
import operator
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

Judge = Callable[[str, str, "list[str] | None"], bool]
JUDGES: dict[str, Judge] = {}  # name -> fn(response, answer, choices) -> bool
SOURCE_JUDGES: dict[str, str] = {}  # prompt-record `source` (or its prefix before a "/") -> judge name

SHORT_RESPONSE_CHARS = 300  # a response at most this long with no answer statement is its own final answer
SYMBOLIC_TIMEOUT_S = 3  # math-verify's parse and verify timeouts, each
SYMBOLIC_POOL_MIN = 16  # a batch with at least this many symbolic checks goes to worker processes
SYMBOLIC_WORKERS = max(1, min(4, (os.cpu_count() or 2) // 2))


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


# ------------------------------------------------------------------------------------------------------ numbers

_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"(-?)\\[dt]?frac\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}")
_SPACING = re.compile(r"\\[,!;: ]|\\(?:left|right|displaystyle)\b|~|\\\$|\$|\\[()\[\]]")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])\s*\^\s*\{?\s*[23]\s*\}?|[²³]")
_NUMBER = re.compile(
    r"(?<![\w.])(-?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*/\s*(\d+(?:\.\d+)?)(?![\d.]))?(\s*(?:%|\\%|percent\b))?"
)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_LEADING_WORDS = re.compile(r"^(?:[A-Za-z]{2,}[\s,:]+)+(?=\S)")  # "the area is \frac{..}" -> "\frac{..}"
_TRAILING_WORDS = re.compile(r"(?:\s+[A-Za-z]{2,})+[.\s]*$")  # "\frac{..} square units" -> "\frac{..}"
_VARIABLE_IS = re.compile(r"^[A-Za-z]\s*=\s*")  # "x = \frac{1}{2}" -> "\frac{1}{2}"
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty".split())}  # fmt: skip
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.I)
_UNIT = re.compile(r"\s*[A-Za-z]+(?:\s*/\s*[A-Za-z]+)?\.?")  # "12 cm", "3 m/s"; "2x" only with a known unit
_SHORT_UNITS = set(
    "mm cm m km g kg mg s ms h min ml l ft in yd mi lb oz k kb mb gb hz khz w kw v mph cm/s m/s km/h".split()
)  # units written right after the number
_PROSE_IN_PARENS = re.compile(r"\([A-Za-z ,.']*\)")  # "12 (approximately)"
_MATH = re.compile(r"\\|\^|[√π∞+*×÷/{}\[\]()]|\b(?:sqrt|pi|inf|log|ln|sin|cos|tan|exp)\b")


@functools.lru_cache(maxsize=65536)
def _clean(text: str) -> str:
    """LaTeX and typography reduced to plain text: wrappers dropped, simple fractions as a/b, units' powers gone."""
    text = text.replace("−", "-").replace("\\%", "%").replace("\\pi", "π")
    for _ in range(2):  # \text{\textbf{x}}
        text = _LATEX_WRAPPERS.sub(r"\1", text)
    text = _SPACING.sub("", text)
    text = _DEGREES.sub("", text)
    text = _UNIT_POWER.sub("", text)
    text = _FRAC.sub(lambda m: f"{m[1]}{m[2]}/{m[3]}", text)
    return text.strip()


def _value(m: re.Match) -> tuple[Fraction, bool] | None:
    """(value, is_percent) of a `_NUMBER` match; None for a zero denominator."""
    sign, whole, decimals, denominator, percent = m.groups()
    value = Fraction(whole.replace(",", "") + (decimals or ""))
    if denominator is not None:
        if Fraction(denominator) == 0:
            return None
        value /= Fraction(denominator)
    return (-value if sign else value), bool(percent)


def numbers(text: str) -> list[tuple[Fraction, bool]]:
    """The numbers in `text` (after `_clean`), in order, as (value, is_percent); number words when it has no digits."""
    text = _clean(text)
    found = [v for m in _NUMBER.finditer(text) if (v := _value(m)) is not None]
    if not found:
        found = [(Fraction(_NUMBER_WORDS[w.lower()]), False) for w in _NUMBER_WORD.findall(text)]
    return found


def gold_number(answer: str) -> tuple[Fraction, bool] | None:
    """The ground truth as a number when it is one ("1,234", "-5", "45%", "\\frac{1}{2}", "12 cm", "five")."""
    text = _clean(answer)
    m = _NUMBER.match(text)
    if m:
        unit = text[m.end() :]
        if not unit.strip() or _UNIT.fullmatch(unit) and (unit[0].isspace() or unit.strip().lower() in _SHORT_UNITS):
            return _value(m)
    word = text.lower()
    return (Fraction(_NUMBER_WORDS[word]), False) if word in _NUMBER_WORDS else None


def same_number(gold: tuple[Fraction, bool], got: tuple[Fraction, bool], rel_tol: float = 1e-6) -> bool:
    """Equal values; a percentage on one side only also matches its fraction (45% = 0.45 = 45)."""
    (g, g_pct), (r, r_pct) = gold, got
    candidates = [r] if g_pct == r_pct else [r, r * 100 if g_pct else r / 100]
    return any(math.isclose(g, c, rel_tol=rel_tol, abs_tol=1e-12) for c in candidates)


# --------------------------------------------------------------------------------------------------- arithmetic

_LATEX_TO_PY = [(re.compile(p), r) for p, r in (
    (r"\\[dt]frac", r"\\frac"), (r"\\(?:cdot|times)", "*"), (r"\\div", "/"), (r"\\pi\b|π", " pi "),
    (r"\^\s*\{?\s*\\circ\s*\}?|°", ""), (r"\\(?:left|right|displaystyle)\b|\\[,!;: ]|\$", ""), (r"√", r"\\sqrt"),
)]  # fmt: skip
_PY_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+|sqrt|pi|[A-Za-z](?![A-Za-z])|\*\*|[-+*/()])")
_STARTS_FACTOR = re.compile(r"[\d.(A-Za-z]")  # a number, "(", sqrt, pi or a variable
_ENDS_FACTOR = re.compile(r"[\d.]+|\)|pi|[A-Za-z]")
_SAMPLE_POINTS = (0.5772156649, 1.3247179572, 2.7182818285)
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow}  # fmt: skip


def _braced(text: str, i: int) -> tuple[str, int] | None:
    """The group starting at text[i] ("{...}" with nested braces, or one character) and the index after it."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        return text[i], i + 1
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j], j + 1
    return None


def _latex_to_python(text: str) -> str | None:
    """\\frac and \\sqrt as Python (recursively), other braces as parentheses, ^ as **; None for an unclosed group."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("\\frac", i) or text.startswith("\\sqrt", i):
            command, i, root = text[i + 1 : i + 5], i + 5, None
            if command == "sqrt" and text[i : i + 1] == "[":
                end = text.find("]", i)
                root = _latex_to_python(text[i + 1 : end]) if end > 0 else None
                if root is None:
                    return None
                i = end + 1
            groups = []
            for _ in range(2 if command == "frac" else 1):
                group = _braced(text, i)
                inner = _latex_to_python(group[0]) if group else None
                if inner is None:
                    return None
                groups.append(inner)
                i = group[1]
            if command == "frac":
                out.append(f"(({groups[0]})/({groups[1]}))")
            else:
                out.append(f"(({groups[0]})**(1/({root})))" if root else f"sqrt({groups[0]})")
            continue
        out.append({"{": "(", "}": ")", "^": "**"}.get(text[i], text[i]))
        i += 1
    return "".join(out)


def _evaluate(node: ast.AST, env: Mapping[str, float]) -> float:
    """A float from a whitelisted arithmetic tree (numbers, pi, one-letter variables of `env`, sqrt, + - * / **);
    anything else raises ValueError."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.Name):
        return math.pi if node.id == "pi" else env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, env)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "sqrt" and len(node.args) == 1:
        return math.sqrt(_evaluate(node.args[0], env))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, env), _evaluate(node.right, env)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or (left < 0 and right != int(right))):
            raise ValueError("power out of range")
        return _OPERATORS[type(node.op)](left, right)
    raise ValueError("not arithmetic")


@functools.lru_cache(maxsize=65536)
def _arithmetic(text: str) -> tuple[ast.Expression, frozenset[str]] | None:
    """`text` as an arithmetic tree and its one-letter variables ("2\\sqrt{3}", "\\frac{\\pi}{4}", "(1+\\sqrt5)/2",
    "3^2", "1,234", "x(x + 3)"); None for anything else (sets, intervals, equations, functions, words, %)."""
    text = str(text).strip().replace("−", "-")
    if not text or "%" in text or len(text) > 200:
        return None
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    for pattern, replacement in _LATEX_TO_PY:
        text = pattern.sub(replacement, text)
    text = _latex_to_python(text)
    if text is None:
        return None
    tokens, end = [], 0
    for m in _PY_TOKEN.finditer(text):
        if m.start() != end:
            return None  # a character outside the arithmetic (a comma, "=", a word)
        if tokens and _ENDS_FACTOR.fullmatch(tokens[-1]) and _STARTS_FACTOR.match(m[1]):
            tokens.append("*")  # an implicit product: 2\sqrt{3}, 3\pi, (1)(2), 2x
        tokens.append(m[1])
        end = m.end()
    if not tokens or text[end:].strip():
        return None
    try:
        tree = ast.parse(" ".join(tokens), mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        return None
    return tree, frozenset(t for t in tokens if t.isalpha() and len(t) == 1)


def numeric_equal(answer: str, got: str) -> bool | None:
    """Whether two arithmetic expressions have the same value (with variables: at three points; a polynomial
    identity that holds there holds almost surely); None when either is not arithmetic or cannot be evaluated."""
    a, b = _arithmetic(answer), _arithmetic(got)
    if a is None or b is None or a[1] != b[1]:
        return None
    names = sorted(a[1])
    points = [{v: p * (1 + 0.37 * i) for i, v in enumerate(names)} for p in (_SAMPLE_POINTS if names else (0.0,))]
    try:
        pairs = [(_evaluate(a[0], env), _evaluate(b[0], env)) for env in points]
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    if not all(math.isfinite(x) and math.isfinite(y) for x, y in pairs):
        return None
    return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12) for x, y in pairs)


def _strip_prose(text: str) -> str:
    """A final answer without the prose around its math ("the area is \\frac{..} square units" -> "\\frac{..}")."""
    return _VARIABLE_IS.sub("", _TRAILING_WORDS.sub("", _LEADING_WORDS.sub("", text.strip())))


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
    return " ".join(_clean(str(text)).lower().split()).strip(" .!?*")


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
    span = _clean(span)
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
    if value is not None and not _MATH.search(_PROSE_IN_PARENS.sub(" ", _NUMBER.sub(" ", _clean(span)))):
        found = numbers(span)
        return bool(found) and same_number(value, found[-1])
    if value is None and _contains(got, gold):
        return True
    if value is None and _WORDS.fullmatch(gold):
        return False
    # an expression ("\\sqrt{2}", "x(x + 3)": its last number is not its value): arithmetic is settled here
    same = numeric_equal(answer, _strip_prose(span))
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


# ------------------------------------------------------------------------------------- math-verify, bounded

_POOL: ProcessPoolExecutor | None = None


def _as_latex(text: str) -> str:
    """Text math-verify reads as LaTeX: prose around it dropped, wrapped in $...$ unless it has a delimiter."""
    if "$" in text or "\\(" in text or "\\[" in text:
        return text
    return "$" + _strip_prose(text) + "$"


@functools.lru_cache(maxsize=4096)
def _parsed(text: str):
    from math_verify import parse

    return parse(_as_latex(text), parsing_timeout=SYMBOLIC_TIMEOUT_S)


@functools.lru_cache(maxsize=65536)
def symbolic_equal(answer: str, span: str) -> bool:
    """math-verify's equivalence of the final answer to the ground truth (False when either does not parse).

    Call it in a process's main thread (its timeouts are signals); `symbolic_equal_many` does that for any caller.
    """
    from math_verify import verify

    gold, got = _parsed(answer), _parsed(span)
    if not gold or not got:
        return False
    return bool(verify(gold, got, timeout_seconds=SYMBOLIC_TIMEOUT_S))


def _symbolic_pair(pair: tuple[str, str]) -> bool:
    return symbolic_equal(*pair)


def _pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        method = "fork" if sys.platform == "linux" else "spawn"
        _POOL = ProcessPoolExecutor(SYMBOLIC_WORKERS, mp_context=multiprocessing.get_context(method))
    return _POOL


def shutdown_workers() -> None:
    """Stop the worker processes of the symbolic check (they start again when needed)."""
    global _POOL
    if _POOL is not None:
        _POOL.shutdown()
        _POOL = None


def symbolic_equal_many(pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """`symbolic_equal` of each (answer, span): here when this is the main thread and the batch is small, else in
    worker processes (where math-verify's signal timeouts work and a batch runs in parallel)."""
    todo = list(dict.fromkeys(pairs))
    inline = threading.current_thread() is threading.main_thread() and len(todo) < SYMBOLIC_POOL_MIN
    if inline:
        results = dict(zip(todo, map(_symbolic_pair, todo)))
    else:
        chunks = max(1, len(todo) // (4 * SYMBOLIC_WORKERS))
        results = dict(zip(todo, _pool().map(_symbolic_pair, todo, chunksize=chunks)))
    return [results[p] for p in pairs]
