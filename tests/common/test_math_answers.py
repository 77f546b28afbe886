"""The math comparisons behind the verifier: arithmetic evaluated, sets and intervals, math-verify in worker processes."""

import pytest

from common import math_answers
from common.math_answers import collection_equal, numeric_equal


@pytest.mark.parametrize(
    "gold,got,expected",
    [
        ("2\\sqrt{3}", "\\sqrt{12}", True),
        ("\\frac{\\pi}{4}", "\\dfrac{\\pi}{4}", True),
        ("(1+\\sqrt5)/2", "1.618034", True),
        ("3^2", "9", True),
        ("\\sqrt[3]{8}", "2", True),
        ("10^{-3}", "0.001", True),
        ("x^2 + 5x", "x(x + 5)", True),  # compared at three points
        ("\\frac{1}{x}", "x^{-1}", True),
        ("x^2 + 5x", "x^2 + 6x", False),
        ("2\\pi", "6.28", False),
        ("2x", "2y", None),  # other variables: math-verify decides
        ("xy", "yx", None),  # a two-letter run is not read as a product here
        ("\\{1, 2\\}", "\\{2, 1\\}", None),  # a set
        ("2^{1000}", "2^{1000}", None),  # a power out of range
        ("\\sqrt{-1}", "i", None),
        ("1/0", "1", None),
        ("__import__('os')", "1", None),  # only arithmetic tokens are ever parsed
        ("45%", "0.45", None),
    ],
)
def test_numeric_equal(gold, got, expected):
    assert numeric_equal(gold, got) is expected


@pytest.mark.parametrize(
    "gold,got,expected",
    [
        ("\\{1, 2\\}", "\\{2, 1\\}", True),  # a set: any order
        ("\\{1, 2\\}", "\\{1, 2, 2\\}", True),
        ("\\{1, 2\\}", "\\{1, 3\\}", False),
        ("(2, 5]", "\\left(2,5\\right]", True),  # an interval: end by end, brackets included
        ("(2, 5]", "[2, 5)", False),
        ("(\\sqrt{2}, \\pi)", "(1.414214, 3.141593)", True),
        ("(1, 2)", "\\{1, 2\\}", None),  # an interval against a set: math-verify decides
        ("(x, 2)", "(x, 2)", None),  # not numbers
        ("\\{1, 2\\} and \\{3\\}", "\\{1, 2\\}", None),
    ],
)
def test_collection_equal(gold, got, expected):
    assert collection_equal(gold, got) is expected


def test_a_large_batch_goes_to_worker_processes_with_the_same_verdicts(monkeypatch):
    pairs = [(f"\\frac{{{i}}}{{\\sqrt{{2}}}}", f"\\frac{{{i}\\sqrt{{2}}}}{{{2 + i % 2 * 2}}}") for i in range(1, 21)]
    inline = [math_answers.symbolic_equal(*p) for p in pairs]
    math_answers.symbolic_equal.cache_clear()
    monkeypatch.setattr(math_answers, "SYMBOLIC_POOL_MIN", 4)
    try:
        assert math_answers.symbolic_equal_many(pairs) == inline == [i % 2 == 0 for i in range(1, 21)]
        assert math_answers._POOL is not None  # it really ran in the pool
    finally:
        math_answers.shutdown_workers()
