"""The toy task is deterministic, balanced (no answer prior without the image) and checkable."""

import collections

from common.io import read_records
from common.toy_task import CHOICES, COLORS, ToyTaskConfig, examples, make_example, write_toy_task


def test_deterministic_per_example():
    a, b = make_example(3, "train", 11, "shape"), make_example(3, "train", 11, "shape")
    assert a.question == b.question and a.answer == b.answer
    assert list(a.image.getdata()) == list(b.image.getdata())
    c = make_example(3, "eval", 11, "shape")
    assert (c.answer, list(c.image.getdata())) != (a.answer, list(a.image.getdata()))


def test_answers_match_what_is_drawn():
    answers = set()
    for index in range(40):
        ex = make_example(0, "train", index, "color")
        # the background is near-white (every channel >= 235); the shape is one jittered (+-20) palette colour
        drawn = collections.Counter(p for p in ex.image.getdata() if min(p) < 150).most_common(1)[0][0]
        nearest = min(COLORS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLORS[name], drawn)))
        assert nearest == ex.answer, (index, drawn, ex.answer)
        answers.add(ex.answer)
    assert answers == set(COLORS)  # every colour was checked


def test_wrong_answers_are_balanced():
    exs = examples(ToyTaskConfig(kinds=("color",)), "train", 600)
    right = collections.Counter(e.answer for e in exs)
    wrong = collections.Counter(e.wrong for e in exs)
    for color in CHOICES["color"]:  # each word is about as often right as wrong: text alone cannot tell
        assert abs(right[color] - wrong[color]) < 40
    assert all(e.answer != e.wrong for e in exs)


def test_write_toy_task(tmp_path):
    paths = write_toy_task(tmp_path, ToyTaskConfig(n_train=2, n_eval=1))
    pairs = read_records(paths["pairs_train"])
    prompts = read_records(paths["prompts_eval"], kind="prompt")
    assert len(pairs) == 8 and len(prompts) == 4
    assert set(pairs["source"]) == {"toy/color", "toy/shape", "toy/count", "toy/sum"}
    assert not set(pairs["id"]) & set(read_records(paths["pairs_eval"])["id"])
    sums = [r for r in prompts if r["source"] == "toy/sum"]
    assert sums[0]["images"] == [] and sums[0]["answer"] in CHOICES["sum"]
