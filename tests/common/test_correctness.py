"""One correctness rule: the rule on hand-made answers, and every caller (pair selection, the MPO evaluation hook,
the rounds' held-out metrics) judging by it, numeric and capitalised letter answers included."""

import types

import pytest
import torch

import mpo.evaluate
from common.correctness import correctness
from common.toy_task import CHOICES, make_example
from rounds.evaluation import answer_metrics

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
