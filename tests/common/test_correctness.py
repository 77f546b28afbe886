"""One correctness rule: the rule on hand-made answers, and every caller (pair selection, the MPO evaluation hook,
the rounds' held-out metrics) judging by it, numeric and capitalised letter answers included."""

import threading
import types

import pytest
import torch

import mpo.evaluate
from common import correctness as verifier
from common import math_answers, toy_task
from common.correctness import (
    JUDGES,
    _default_fast,
    correctness,
    default_judge,
    final_answer,
    judge_for,
    register_judge,
)
from common.schema import RecordError, validate_prompt_record
from common.toy_task import CHOICES, make_example
from rounds.evaluation import answer_metrics
from tests.common.correctness_cases import REASONING_CASES

LETTERS = ["A", "B", "C", "D"]
# (response, answer, choices, correct)
CASES = [
    ("The shape is Red.", "red", CHOICES["color"], True),
    ("It is red or blue.", "red", CHOICES["color"], False),  # names another choice too
    ("It is reddish.", "red", CHOICES["color"], False),  # whole words only
    ("It is reddish.", "red", None, False),
    ("The answer is 12.", "12", ["10", "12", "14"], True),
    ("The answer is 12.", "12", None, True),
    ("The answer is 112.", "12", ["12", "112"], False),
    ("The answer is 112.", "12", None, False),
    ("12 or 14", "12", ["10", "12", "14"], False),
    ("The answer is 14.", "12", None, False),
    ("(B)", "B", LETTERS, True),
    ("The answer is B.", "B", None, True),
    ("Option b.", "B", LETTERS, True),  # case-insensitive
    ("The answer is C.", "B", LETTERS, False),
    ("The answer is C.", "B", None, False),
    ("B or C", "B", LETTERS, False),
    ("Below.", "B", None, False),
    ("It is 7.", 7, ["6", "7"], True),  # a numeric answer stored as a number
]


@pytest.mark.parametrize("response,answer,choices,expected", CASES)
def test_the_rule(response, answer, choices, expected):
    assert correctness([response], answer, choices) == [expected]


def test_no_ground_truth_is_not_judged():
    assert correctness(["It is red."], None, None) is None and correctness(["It is red."], " ", ["red"]) is None


def test_toy_task_right_and_wrong_answers():
    exs = [make_example(0, "eval", i, kind) for i in range(20) for kind in CHOICES]
    for ex in exs:
        judged = correctness([ex.response(ex.answer), ex.response(ex.wrong)], ex.answer, CHOICES[ex.kind])
        assert judged == [True, False], ex.id


def test_every_toy_sentence_with_every_word():
    """The toy task's answers are single words: each answer sentence of each kind, with each word of its set, is
    right exactly when the word is the answer (so the demo's held-out accuracy reads the same words as before)."""
    for kind, templates in toy_task._ANSWERS.items():
        words = CHOICES[kind]
        for template in templates:
            for answer in words:
                judged = correctness([template.format(x=w) for w in words], answer, words)
                assert judged == [w == answer for w in words], (kind, template, answer)


def _prompt(i: int, answer, choices) -> dict:
    text = [{"role": "user", "content": [{"type": "text", "text": "q?"}]}]
    rec = {"prompt": text, "images": [], "answer": answer, "source": f"case{i:02d}"}
    return rec if choices is None else {**rec, "choices": choices}


def test_pairing_mpo_hook_and_rounds_agree(monkeypatch):
    """Case by case, the MPO hook and the rounds judge as the rule (= pair selection); blank answers are not judged."""
    prompts = [_prompt(i, answer, choices) for i, (_, answer, choices, _) in enumerate(CASES)]
    answers = [response for response, *_ in CASES]
    expected = {p["source"]: float(correct) for p, (*_, correct) in zip(prompts, CASES)}
    unjudged = [_prompt(90, " ", ["red"]), _prompt(91, None, None), {"prompt": prompts[0]["prompt"], "images": []}]

    for p, a in zip(prompts, answers):
        assert answer_metrics([p], [a], [1], 16)["accuracy"] == expected[p["source"]], p
    rounds = answer_metrics(prompts + unjudged, answers + ["red"] * 3, [1] * (len(CASES) + 3), 16)
    assert rounds["judged"] == len(CASES) and rounds["accuracy"] == pytest.approx(sum(expected.values()) / len(CASES))

    replies = iter(answers + ["red"] * 3)  # the hook's greedy answers, canned: only its judging is under test
    monkeypatch.setattr(mpo.evaluate, "generate_answers", lambda m, p, records, n: [next(replies) for _ in records])
    model = types.SimpleNamespace(device=torch.device("cpu"))
    hook = mpo.evaluate.prompt_metrics(model, None, prompts + unjudged, batch_size=5)
    assert hook["judged"] == len(CASES) and hook["accuracy_by_source"] == expected


def test_the_case_table_is_large_enough():
    assert len(REASONING_CASES) >= 60 and len({name for name, *_ in REASONING_CASES}) == len(REASONING_CASES)


@pytest.mark.parametrize("name,response,answer,choices,expected", REASONING_CASES, ids=[c[0] for c in REASONING_CASES])
def test_reasoning_cases(name, response, answer, choices, expected):
    assert correctness([response], answer, choices) == [expected]
    assert default_judge(response, answer, choices) is expected  # one response at a time: the same verdict


def test_a_batch_judges_each_response_as_alone():
    """K responses to one prompt in one call (as pair building judges them): the same verdicts as one by one."""
    answer, responses = (
        "\\frac{1}{\\sqrt{2}}",
        ["\\boxed{\\frac{\\sqrt{2}}{2}}", "\\boxed{0.5}", "", "\\boxed{\\sqrt{2}/2}"],
    )
    assert correctness(responses, answer) == [True, False, False, True]


@pytest.mark.parametrize(
    "response,expected",
    [
        ("<think>maybe 3</think>\n\nIt is 4.", "It is 4."),
        ("<think>\\boxed{3}</think> so \\boxed{\\frac{1}{\\sqrt{2}}} wait \\boxed{x^{2}}", "x^{2}"),
        ("<think>I was about to say", ""),
        ("We add them. The answer is 1,234.5. Let me check.", "1,234.5"),
        ("Steps... **Final Answer:**\n\n(B) 45°", "(B) 45°"),
        ("B", "B"),
        ("x" * 400, ""),
        ("We count the birds. " * 20 + "Thus, the total is 9.", "the total is 9"),
    ],
)
def test_final_answer(response, expected):
    assert final_answer(response) == expected


def test_symbolic_checks_work_off_the_main_thread():
    """math-verify's own timeouts (signals) refuse a thread; the verifier sends such checks to worker processes."""
    cases = [
        (r, a, c, e) for _, r, a, c, e in REASONING_CASES if isinstance(_default_fast(final_answer(r), a, c), tuple)
    ]
    assert len(cases) >= 8 and {e for *_, e in cases} == {True, False}
    math_answers.symbolic_equal.cache_clear()  # no verdict from an earlier test: each one is worked out in the thread
    got = {}

    def judge_all():
        got["batch"] = [correctness([r], a, c)[0] for r, a, c, _ in cases]
        math_answers.symbolic_equal.cache_clear()
        got["one"] = [default_judge(r, a, c) for r, a, c, _ in cases]

    thread = threading.Thread(target=judge_all)
    thread.start()
    thread.join()
    math_answers.shutdown_workers()
    assert got["batch"] == got["one"] == [e for *_, e in cases]


@pytest.mark.parametrize(
    "response,answer,expected",
    [
        ("The value is 21.5", "21", True),  # within 5%
        ("The value is 22.1", "21", False),  # 5.2% off
        ("\\boxed{19.96}", "21", True),
        ("About 0.44", "45%", True),  # a % target divides by 100 (ChartQA's _to_float)
        ("45%", "45%", True),
        ("Republican", "republican", True),  # not a number: the same text, case-insensitive
        ("Republicans", "republican", False),
        ("0", "0", True),  # a zero target: exact text
        ("0.01", "0", False),
    ],
)
def test_relaxed_numeric(response, answer, expected):
    assert correctness([response], answer, judge="relaxed_numeric") == [expected]


def test_judge_is_chosen_by_record_field_then_source():
    assert judge_for({"source": "chartqa"}) == judge_for({"source": "ChartQA/human"}) == "relaxed_numeric"
    assert judge_for({"source": "chartqa_like"}) is None and judge_for({"source": None}) is None
    assert judge_for({"source": "chartqa", "judge": "default"}) == "default"
    # a missing field in a datasets column: the source decides (the benchmark judges are built in: no import needed)
    assert judge_for({"source": "chartqa", "judge": None}) == "relaxed_numeric"
    assert judge_for({"source": "MathVista", "judge": None}) == "mathvista"
    assert judge_for({"source": "mmmu/x"}) == "mmmu"


def test_a_registered_judge_is_used_and_an_unknown_one_refused(monkeypatch):
    monkeypatch.setattr(verifier, "JUDGES", dict(JUDGES))
    monkeypatch.setattr(verifier, "SOURCE_JUDGES", dict(verifier.SOURCE_JUDGES))

    @register_judge("yes_no", sources=("pope",))
    def yes_no(response, answer, choices):
        return final_answer(response).lower().startswith(answer.lower())

    assert judge_for({"source": "pope/adversarial"}) == "yes_no"
    assert correctness(["Yes, there is a dog.", "No."], "yes", judge="yes_no") == [True, False]
    with pytest.raises(ValueError, match="already registered"):
        register_judge("yes_no")(lambda r, a, c: True)
    known = "ai2d, default, mathvista, mmmu, mmstar, relaxed_numeric, yes_no"  # the benchmark judges are built in
    with pytest.raises(ValueError, match=rf"unknown judge 'nope'; registered judges: {known}$"):
        correctness(["x"], "x", judge="nope")


def test_a_prompt_record_naming_an_unknown_judge_is_refused():
    record = {"id": "p1", "prompt": [{"role": "user", "content": [{"type": "text", "text": "q?"}]}], "images": []}
    assert validate_prompt_record({**record, "judge": "relaxed_numeric"}, 3)["judge"] == "relaxed_numeric"
    with pytest.raises(RecordError, match=r"record 'p1' \(#3\), field 'judge': unknown judge 'relaxed'"):
        validate_prompt_record({**record, "judge": "relaxed"}, 3)


def test_callers_judge_with_the_records_judge(monkeypatch):
    """The MPO hook and the rounds' metrics pass each record's judge: 21.5 for 21 is right by relaxed accuracy only."""
    prompts = [{**_prompt(0, "21", None), "source": "chartqa/human"}, {**_prompt(1, "21", None), "judge": "default"}]
    answers = ["It is 21.5.", "It is 21.5."]
    assert answer_metrics(prompts, answers, [1, 1], 16)["accuracy"] == 0.5
    monkeypatch.setattr(mpo.evaluate, "generate_answers", lambda m, p, records, n: answers[: len(records)])
    hook = mpo.evaluate.prompt_metrics(types.SimpleNamespace(device=torch.device("cpu")), None, prompts, batch_size=2)
    assert hook["accuracy_by_source"] == {"chartqa/human": 1.0, "case01": 0.0}
