"""The official answer rules, case by case: MMMU's option parser and open rule, MathVista's normalisation."""

from __future__ import annotations

import pytest

from common.benchmark_judges import edit_distance, mathvista_prediction, parse_option
from policy_eval import mathvista, mmmu

OPTIONS = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize(
    "response, letter",
    [
        ("(B)", "B"),
        ("B", "B"),
        ("The answer is C.", "C"),  # trailing punctuation stripped, then " C " stands alone
        ("(A) is tempting, but (D) is right", "D"),  # brackets first; several: the last named wins
        ("A or B? I pick B", "B"),
        ("b", None),  # letters are upper case, as in the official parser
        ("I would say that the colour is blue", "B"),  # > 5 words: an option's text counts
        ("It is blue", None),  # 3 words: texts do not count
        ("Not sure at all.", None),  # no letter, no text: none (the official guesses at random)
        ("A cat sits on the mat with a green ball", "A"),  # the official parser takes the article for option A
    ],
)
def test_mmmu_option_parser(response, letter):
    assert parse_option(response, OPTIONS) == letter


@pytest.mark.parametrize(
    "response, answer, correct",
    [
        ("Revenue = 400 * 3 = 1,200", "1200", True),  # the last line's "=" tail, separators dropped
        ("So the result is 3.14159.", "3.14", True),  # numbers compared rounded to 2 decimals
        ("The probability is 0.5.", "['0.5', '1/2']", True),  # a list of accepted answers
        ("The value is 12", "1.2", False),
        ("Therefore the organ is the liver", "liver", True),  # a gold string inside a parsed string
        ("Therefore the organ is the kidney", "liver", False),
        ("<think>it is 7</think>The answer is 9", "7", False),  # only what follows </think> counts
    ],
)
def test_mmmu_open_rule(response, answer, correct):
    assert mmmu.judge(response, answer, None) is correct


def test_mmmu_multiple_choice_judge_reads_after_thinking():
    assert mmmu.judge("<think>(A)? (B)?</think> (C)", "C", OPTIONS)
    assert not mmmu.judge("<think>(C)</think> I cannot decide.", "C", OPTIONS)


@pytest.mark.parametrize(
    "response, answer_type, precision, prediction",
    [
        ("The answer is 8.", "integer", None, "8"),
        ("so it is 1,234 people. Answer: 1,234", "integer", None, "1234"),
        ("Answer: 1.449 cm", "float", 2, "1.45"),
        ("Answer: 3 cm", "float", 1, "3.0"),  # str(round(float(x), 1)), as the official scorer
        ("\\boxed{-2.5}", "float", 1, "-2.5"),
        ("Final answer: 2, 4 and 6", "list", None, "[2, 4, 6]"),
        ("I do not know", "integer", None, None),
    ],
)
def test_mathvista_free_form_normalisation(response, answer_type, precision, prediction):
    assert mathvista_prediction(response, None, answer_type, precision) == prediction


def test_mathvista_multiple_choice_letter_then_nearest_choice():
    choices = ["30°", "45°", "60°", "90°"]
    assert mathvista_prediction("Answer: (C)", choices, "multi_choice", None) == "60°"
    assert mathvista_prediction("\\boxed{45°}", choices, "multi_choice", None) == "45°"
    assert mathvista_prediction("The answer is 90 degrees", choices, "multi_choice", None) == "90°"
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3


def test_mathvista_bare_judge_takes_the_type_and_precision_from_the_answer():
    assert mathvista.judge("Answer: 1.449", "1.45", None)  # float, 2 decimals
    assert not mathvista.judge("Answer: 1.46", "1.45", None)
    assert mathvista.judge("There are 7.", "7", None)  # integer
    assert mathvista.judge("Answer: 2, 4, 6", "[2, 4, 6]", None)  # list
    assert mathvista.judge("Answer: (B)", "no", ["yes", "no"])  # multiple choice: the choice text


def test_registered_judges_give_the_job_verdicts_through_common_correctness(hub_data):
    """Prompt records keep their benchmark as `source`: `correctness` then applies the benchmark's rule (pair building,
    the rounds' held-out accuracy), with the verdicts the evaluation job gives."""
    from common.correctness import correctness, judge_for
    from policy_eval import BENCHMARKS, read_benchmark
    from tests.policy_eval.hub_fixtures import SCRIPTS

    for name, script in SCRIPTS.items():
        for item in read_benchmark(name, hub_data[name]):
            record, response = item.record, script[item.record["id"]]
            assert judge_for(record) == record["source"]
            (verdict,) = correctness([response], record["answer"], record.get("choices"), judge=judge_for(record))
            assert verdict == BENCHMARKS[name].score(response, item)[1], (name, record["id"])


# Judges each (record, response) of stdin in a process that imports only common.correctness and data_builders (pair
# building's imports): prints [[judge_for(record), verdict], ...] and whether policy_eval got imported.
_JUDGE_ALONE = """
import json, sys
import data_builders.build
from common.correctness import correctness, judge_for
cases = json.load(sys.stdin)
out = [[judge_for(r), correctness([resp], r["answer"], r.get("choices"), judge=judge_for(r))[0]] for r, resp in cases]
print(json.dumps({"verdicts": out, "policy_eval_imported": "policy_eval" in sys.modules}))
"""


def test_benchmark_judges_are_registered_without_policy_eval(hub_data):
    """Pair building and the MPO hook import `common.correctness` but never `policy_eval`: a record whose source is a
    benchmark still gets the benchmark's judge there, with the evaluation job's verdicts."""
    import json
    import os
    import subprocess
    import sys

    from policy_eval import BENCHMARKS, read_benchmark
    from tests.policy_eval.hub_fixtures import SCRIPTS

    cases, expected = [], []
    for name, script in SCRIPTS.items():
        for item in read_benchmark(name, hub_data[name]):
            record = {k: item.record[k] for k in ("id", "source", "answer", "choices")}
            response = script[record["id"]]
            cases.append([record, response])
            expected.append([record["source"], BENCHMARKS[name].score(response, item)[1]])
    cases.append([{"source": "mathvista/geometry", "answer": "1.45", "choices": None}, "Answer: 1.449"])
    expected.append(["mathvista", True])  # the default judge reads 1.449 != 1.45
    proc = subprocess.run([sys.executable, "-c", _JUDGE_ALONE], input=json.dumps(cases), capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["policy_eval_imported"] is False
    assert result["verdicts"] == expected
    assert sum(v for _, v in expected) not in (0, len(expected))  # both verdicts occur
