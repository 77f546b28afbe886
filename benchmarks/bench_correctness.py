"""Answer-verifier throughput: judgments per CPU-second on a synthetic mix of reasoning responses, against the old rule.

    python benchmarks/bench_correctness.py                                # 1,000 prompts x K=8 (~1 min on one core)
    python benchmarks/bench_correctness.py --prompts 200 --output /tmp/c.json   # quick (the suite's --quick)

The mix, as pair building sees it: K responses per prompt, a third of the prompts multiple choice (four options
with units, the gold a letter), the rest free-form: numbers (integers, decimals, thousands, negatives, percentages),
one in sixteen a LaTeX number (roots, multiples of pi) and one in sixteen a polynomial, set or interval. Each
response is a chain of thought of 600-1,500 characters that names other numbers and options, then ends in one of the forms reasoners use (``\\boxed{}``,
"The answer is ...", "**Final Answer:** ...", a ``<think>`` block then the answer), half of them right; right
answers are sometimes written in an equivalent form (0.5 as ``\\frac{1}{2}``, 1234 as 1,234, ``\\frac{1}{\\sqrt{2}}``
as ``\\frac{\\sqrt{2}}{2}``); some change their mind before the end, some are cut off (wrong).

Reported, each on the same judgments: judgments per CPU-second of the process (and of its worker processes) for

* ours: `common.correctness.correctness`, one call per prompt with its K responses, as `data_builders/build.py`;
* the old rule (the answer named anywhere, no other option named: the rule before issue 18, `old_rule` below);
* math-verify alone (``verify(parse(gold), parse(response))``) on the first `--math_verify_judgments`;

and how often each agrees with the generator's labels, and the share of ours that needed the symbolic check.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import correctness as verifier  # noqa: E402

FILLER = ("Looking at the figure, the left bar reaches {a} and the right one {b}. The difference is {c}, and the "
          "ratio of the two is about {d}. ").split(". ")  # fmt: skip
UNITS = ("cm", "m", "kg", "°", "")


def old_rule(responses: Sequence[str], answer, choices: Sequence | None = None) -> list[bool] | None:
    """The rule before issue 18 (git b658ad6, `common/correctness.py`): the answer named anywhere (whole words,
    case-insensitive) and no other choice named. Kept here only to measure against."""

    def norm(text) -> str:
        return str(text).strip().lower()

    def names(text: str) -> re.Pattern:
        return re.compile(r"(?<![a-z0-9])" + re.escape(text) + r"(?![a-z0-9])")

    if answer is None or not norm(answer):
        return None
    answer = norm(answer)
    others = [names(c) for c in dict.fromkeys(map(norm, choices or ())) if c and c != answer]
    right = names(answer)
    texts = [r.lower() for r in responses]
    return [bool(right.search(t)) and not any(o.search(t) for o in others) for t in texts]


def _reasoning(rnd: random.Random, chars: int) -> str:
    out = []
    while sum(map(len, out)) < chars:
        a, b = rnd.randint(2, 400), rnd.randint(2, 400)
        out.append(" ".join(s.format(a=a, b=b, c=abs(a - b), d=round(a / b, 2)) + "." for s in FILLER if s))
    return " ".join(out)


def _open_prompt(rnd: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold, right forms, wrong forms) of a free-form question."""
    kind = rnd.random()
    if kind < 1 / 16:  # an expression with a variable, a set or an interval: only math-verify can settle it
        k = rnd.randint(2, 99)  # distinct enough that the cache of symbolic checks is not what is measured
        return rnd.choice([
            (f"x^2 + {k}x", [f"{k}x + x^2", f"x(x + {k})"], [f"x^2 + {k + 1}x", f"{k}x^2 + x"]),
            (f"\\{{1, {k}\\}}", [f"\\{{{k}, 1\\}}", f"\\{{1, {k}\\}}"], [f"\\{{1, {k + 1}\\}}", f"\\{{{k}\\}}"]),
            (f"({k}, {k + 3})", [f"({k},{k + 3})", f"({k}, {k + 3})"], [f"[{k}, {k + 3}]", f"({k}, {k + 4})"]),
        ])  # fmt: skip
    if kind < 1 / 8:  # a closed-form number in LaTeX: equal forms that string and number checks cannot see
        k = rnd.randint(2, 99)
        return rnd.choice([
            (f"\\frac{{{k}}}{{\\sqrt{{2}}}}", [f"\\frac{{{k}\\sqrt{{2}}}}{{2}}", f"\\frac{{{k}}}{{\\sqrt{{2}}}}"],
             [f"{k}\\sqrt{{2}}", f"\\frac{{{k}}}{{2}}"]),
            (f"{k}\\pi", [f"{k}\\pi", f"\\pi \\cdot {k}"], [f"{k + 1}\\pi", f"{2 * k}\\pi"]),
            (f"\\sqrt{{{k * k * 3}}}", [f"{k}\\sqrt{{3}}", f"\\sqrt{{{k * k * 3}}}"], [f"{k}\\sqrt{{2}}", f"{k * 3}"]),
        ])  # fmt: skip
    if kind < 0.25:  # a simple fraction
        n, d = rnd.randint(1, 9), rnd.choice([2, 4, 5, 8])
        return f"{n / d:g}", [f"\\frac{{{n}}}{{{d}}}", f"{n / d:g}"], [f"\\frac{{{n + 1}}}{{{d}}}", f"{(n + 1) / d:g}"]
    if kind < 0.35:  # thousands
        v = rnd.randint(1000, 999_999)
        return str(v), [f"{v:,}", str(v)], [f"{v + 10:,}", str(v - 1)]
    if kind < 0.45:  # a percentage
        v = rnd.randint(1, 99)
        return f"{v}%", [f"{v}\\%", f"{v}%", f"{v / 100:g}"], [f"{v + 5}%", f"{v - 1}"]
    if kind < 0.6:  # a decimal, maybe negative, maybe with a unit
        v = round(rnd.uniform(-50, 50), 1)
        unit = rnd.choice(UNITS)
        return f"{v}", [f"{v} \\text{{ {unit}}}" if unit else f"{v}"], [f"{-v}", f"{v + 1}"]
    v = rnd.randint(0, 500)
    return str(v), [str(v), f"{v} \\text{{ {rnd.choice(UNITS[:3])}}}"], [str(v + rnd.randint(1, 9)), str(v * 2 + 1)]


def _mc_prompt(rnd: random.Random) -> tuple[str, list[str], list[str], list[str]]:
    """(gold letter, option texts, right forms, wrong forms) of a four-option question."""
    base, unit = rnd.randint(10, 80), rnd.choice(UNITS[:4])
    options = [f"{base + 5 * i}{unit if unit == '°' else ' ' + unit}" for i in range(4)]
    gold = rnd.randrange(4)
    letter = "ABCD"[gold]
    wrong = rnd.choice([i for i in range(4) if i != gold])
    return (letter, options, [f"({letter})", letter, f"{letter}. {options[gold]}", options[gold]],
            [f"({'ABCD'[wrong]})", "ABCD"[wrong], options[wrong]])  # fmt: skip


def _ending(rnd: random.Random, final: str, earlier: str | None) -> str:
    change = f"At first I thought the answer is {earlier}, but I misread the axis. " if earlier else ""
    return change + rnd.choice([
        f"The final answer is $\\boxed{{{final}}}$.", f"Therefore, the answer is {final}.",
        f"**Final Answer:** {final}", f"\n\nAnswer: {final}",
    ])  # fmt: skip


def make_mix(prompts: int, k: int, seed: int = 0) -> list[tuple[str, list[str] | None, list[str], list[bool]]]:
    """(gold, choices, K responses, K labels) per prompt."""
    rnd = random.Random(seed)
    out = []
    for i in range(prompts):
        if i % 3 == 0:
            gold, choices, rights, wrongs = _mc_prompt(rnd)
        else:
            (gold, rights, wrongs), choices = _open_prompt(rnd), None
        responses, labels = [], []
        for _ in range(k):
            right = rnd.random() < 0.5
            final = rnd.choice(rights if right else wrongs)
            # distractors: other options named along the way; a change of mind from the other side
            opts = f" Option A looks close and {choices[1]} is plausible." if choices else ""
            earlier = rnd.choice(wrongs if right else rights) if rnd.random() < 0.15 else None
            text = _reasoning(rnd, rnd.randint(600, 1500)) + opts + " " + _ending(rnd, final, earlier)
            if rnd.random() < 0.2:
                text = f"<think>{text}</think>\n\n{final}"
            if rnd.random() < 0.05:  # cut off before the end
                text, right = text[: rnd.randint(300, 550)], False
            responses.append(text)
            labels.append(right)
        out.append((gold, choices, responses, labels))
    return out


def cpu_seconds() -> float:
    """This process's CPU time plus that of its finished children (the verifier's workers, once shut down)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(judge, mix) -> tuple[float, float]:
    """(judgments per CPU-second, agreement with the labels) of `judge(responses, gold, choices)` over the mix."""
    start, right, n = cpu_seconds(), 0, 0
    verdicts = [judge(responses, gold, choices) for gold, choices, responses, _ in mix]
    verifier.shutdown_workers()
    seconds = cpu_seconds() - start
    for got, (*_, labels) in zip(verdicts, mix):
        right += sum(g == label for g, label in zip(got, labels))
        n += len(labels)
    return n / seconds, right / n


def warm_up() -> None:
    """Steady state: math-verify and the parts of sympy it imports on first use (~3 s, once a process) loaded, on
    expressions of another seed; the caches emptied."""
    for gold, choices, responses, _ in make_mix(48, 2, seed=-1):
        verifier.correctness(responses, gold, choices)
        math_verify_alone(responses, gold, choices)
    verifier.symbolic_equal.cache_clear()
    verifier._parsed.cache_clear()


def math_verify_alone(responses: Sequence[str], gold: str, choices) -> list[bool]:
    from math_verify import parse, verify

    g = parse(f"${gold}$")
    return [bool(verify(g, parse(r))) for r in responses]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=1000)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--math_verify_judgments", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="outputs/bench_correctness.json")
    a = p.parse_args()

    mix = make_mix(a.prompts, a.k, a.seed)
    warm_up()
    ours, ours_agree = measure(verifier.correctness, mix)
    old, old_agree = measure(old_rule, mix)
    sub = mix[: max(1, a.math_verify_judgments // a.k)]
    mv, mv_agree = measure(math_verify_alone, sub)
    fast = [verifier._default_fast(verifier.final_answer(r), g, c) for g, c, rs, _ in mix for r in rs]
    result = {
        "prompts": a.prompts, "k": a.k, "judgments": a.prompts * a.k, "seed": a.seed,
        "multiple_choice_share": sum(c is not None for _, c, *_ in mix) / len(mix),
        "symbolic_share": sum(isinstance(v, tuple) for v in fast) / len(fast),
        "ours_per_cpu_s": ours, "old_per_cpu_s": old, "math_verify_per_cpu_s": mv,
        "math_verify_judgments": len(sub) * a.k,
        "ours_agreement": ours_agree, "old_agreement": old_agree, "math_verify_agreement": mv_agree,
        "ratio_to_old": ours / old, "ratio_to_math_verify": ours / mv,
    }  # fmt: skip
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
