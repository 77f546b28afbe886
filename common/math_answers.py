"""Comparing a final answer with a mathematical ground truth, fast checks first (`common.correctness` uses these).

* numbers (`numbers`, `gold_number`, `same_number`): thousands separators, negatives, simple fractions, percentages,
  units and number words read off LaTeX or plain text;
* arithmetic (`numeric_equal`): both sides evaluated as arithmetic on numbers, pi, roots, powers and one-letter
  variables (at three points), by a whitelisted `ast` walk; sets and intervals of numbers (`collection_equal`);
* math-verify (`symbolic_equal_many`): HF's symbolic check for the rest, run where its signal-based timeouts work
  (this process's main thread, else worker processes), each parse and verify bounded by `SYMBOLIC_TIMEOUT_S`.
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
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

SYMBOLIC_TIMEOUT_S = 3  # math-verify's parse and verify timeouts, each
SYMBOLIC_POOL_MIN = 16  # a batch with at least this many symbolic checks goes to worker processes
SYMBOLIC_WORKERS = max(1, min(4, (os.cpu_count() or 2) // 2))


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
_PROSE_WORD = re.compile(r"[A-Za-z]{2,}[.,:;]*")  # a word around the math: "the area is", "square units."
_MATH_WORDS = {"pi", "sqrt", "ln", "log", "sin", "cos", "tan", "exp", "inf"}
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
def clean_latex(text: str) -> str:
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
    text = clean_latex(text)
    found = [v for m in _NUMBER.finditer(text) if (v := _value(m)) is not None]
    if not found:
        found = [(Fraction(_NUMBER_WORDS[w.lower()]), False) for w in _NUMBER_WORD.findall(text)]
    return found


def gold_number(answer: str) -> tuple[Fraction, bool] | None:
    """The ground truth as a number when it is one ("1,234", "-5", "45%", "\\frac{1}{2}", "12 cm", "five")."""
    text = clean_latex(answer)
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
_COLLECTION = re.compile(r"([{(\[])(.*)([})\]])")
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


def _value_of(text: str) -> float | None:
    """The value of arithmetic without variables ("2\\sqrt{3}", "-\\frac{1}{2}"); None for anything else."""
    tree = _arithmetic(text)
    if tree is None or tree[1]:
        return None
    try:
        value = _evaluate(tree[0], {})
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) else None


def _collection(text: str) -> tuple[str, list[float]] | None:
    """A set ("\\{1, 2\\}": kind "set") or an interval / tuple ("(1, 2]": kind "(]") of at least two numbers."""
    m = _COLLECTION.fullmatch(_SPACING.sub("", text.replace("\\{", "{").replace("\\}", "}")).strip())
    if m is None:
        return None
    parts, depth, start = [], 0, 0
    for i, c in enumerate(m[2]):
        depth += (c in "({[") - (c in ")}]")
        if c == "," and depth == 0:
            parts.append(m[2][start:i])
            start = i + 1
    parts.append(m[2][start:])
    values = [_value_of(p) for p in parts]
    if len(values) < 2 or None in values:
        return None
    return ("set" if m[1] == "{" else m[1] + m[3]), values


def collection_equal(answer: str, got: str) -> bool | None:
    """Sets of numbers equal in any order, intervals and tuples equal end by end (brackets included); None when
    either is not one of these (math-verify decides)."""
    a, b = _collection(answer), _collection(got)
    if a is None or b is None or (a[0] == "set") != (b[0] == "set"):
        return None
    (kind_a, xs), (kind_b, ys) = a, b
    if kind_a == "set":
        xs, ys = sorted(set(xs)), sorted(set(ys))
    elif kind_a != kind_b:
        return False
    return len(xs) == len(ys) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12) for x, y in zip(xs, ys))


def is_expression(text: str) -> bool:
    """Whether a final answer is more than numbers and words ("\\sqrt{2}", "2 + 3", "(1, 2)"): its last number is
    then not its value."""
    return bool(_MATH.search(_PROSE_IN_PARENS.sub(" ", _NUMBER.sub(" ", clean_latex(text)))))


def math_equal_fast(answer: str, got: str) -> bool | None:
    """`numeric_equal`, else `collection_equal`, on the final answer without its prose; None: math-verify decides."""
    math_part = strip_prose(got)
    same = numeric_equal(answer, math_part)
    return collection_equal(answer, math_part) if same is None else same


def strip_prose(text: str) -> str:
    """A final answer without the prose around its math ("the area is \\frac{..} square units" -> "\\frac{..}")."""
    words = text.split()
    while len(words) > 1 and _PROSE_WORD.fullmatch(words[-1]) and words[-1].strip(".,:;").lower() not in _MATH_WORDS:
        words.pop()
    start = 0
    while start < len(words) - 1 and _PROSE_WORD.fullmatch(words[start]) and words[start].lower() not in _MATH_WORDS:
        start += 1
    return _VARIABLE_IS.sub("", " ".join(words[start:]))


# ------------------------------------------------------------------------------------- math-verify, bounded

_POOL: ProcessPoolExecutor | None = None


def _as_latex(text: str) -> str:
    """Text math-verify reads as LaTeX: prose around it dropped, wrapped in $...$ unless it has a delimiter."""
    if "$" in text or "\\(" in text or "\\[" in text:
        return text
    return "$" + strip_prose(text) + "$"


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
