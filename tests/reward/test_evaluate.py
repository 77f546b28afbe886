"""Benchmark metrics against hand-computed cases: ties, grouping, empty groups, math-prm weighting, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common.images import load_image
from common.schema import RecordError
from reward.bench import read_benchmark, scored_row
from reward.bench.mm_rewardbench import metrics as mm_rewardbench_metrics
from reward.bench.rewardbench import EXAMPLE_COUNTS as REWARDBENCH_EXAMPLE_COUNTS
from reward.bench.rewardbench import SECTIONS as REWARDBENCH_SECTIONS
from reward.bench.rewardbench import metrics as rewardbench_metrics
from reward.bench.vl_rewardbench import metrics as vl_rewardbench_metrics
from reward.bench.vl_rewardbench import source as vl_rewardbench_source


@pytest.mark.parametrize(
    "rid, source",
    [
        ("RLAIF-V_12", "rlaif-v"),
        ("RLHF-V-Dataset_3", "rlhf-v"),
        ("mathverse_7", "reasoning_tasks"),
        ("mmmu-pro_1", "reasoning_tasks"),
        ("wildvision-battle_9", "wildvision-battle"),
        ("Hallucination_pair_2", "povid"),
        ("POVID_4", "povid"),
        ("vlfeedback_0", "vlfeedback"),
        ("somethingelse-5", "vlfeedback"),
        ("reasoning_tasks", "reasoning_tasks"),  # a query_source value is already a source
    ],
)
def test_vl_rewardbench_source_from_id_prefix(rid, source):
    assert vl_rewardbench_source(rid) == source


def _vl(rid, s0, s1, ranking=(0, 1), query_source=None):
    row = {"id": rid, "scores": [s0, s1], "human_ranking": list(ranking)}
    if query_source is not None:
        row["query_source"] = query_source
    return row


def test_vl_rewardbench_metrics_hand_computed():
    rows = [
        # general: 1 of 3 correct (a tie is wrong; ranking [1, 0] prefers the second response)
        _vl("vlfeedback_1", 2.0, 1.0),
        _vl("wildvision-battle_1", 1.0, 1.0),
        _vl("vlfeedback_2", 2.0, 1.0, ranking=(1, 0)),
        # hallucination: 2 of 2
        _vl("RLAIF-V_1", 0.0, -1.0),
        _vl("x_1", 0.0, 3.0, ranking=(1, 0), query_source="povid"),  # query_source beats the id prefix
        # reasoning: 0 of 1
        _vl("mathverse_1", 0.0, 0.5),
    ]
    m = vl_rewardbench_metrics(rows)
    assert m["general"] == pytest.approx(1 / 3)
    assert m["hallucination"] == 1.0
    assert m["reasoning"] == 0.0
    assert m["overall"] == pytest.approx(3 / 6)
    assert m["macro"] == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_vl_rewardbench_empty_group_is_none_and_left_out_of_macro():
    m = vl_rewardbench_metrics([_vl("vlfeedback_1", 1.0, 0.0), _vl("povid_1", 0.0, 1.0)])
    assert m["reasoning"] is None
    assert m["macro"] == pytest.approx(0.5)
    assert m["overall"] == pytest.approx(0.5)


def test_vl_rewardbench_rejects_bad_rows():
    with pytest.raises(ValueError, match=r"'a_1'.*human_ranking"):
        vl_rewardbench_metrics([_vl("a_1", 1.0, 0.0, ranking=(0, 0))])
    with pytest.raises(ValueError, match=r"'a_2'.*scores\[1\].*nan"):
        vl_rewardbench_metrics([_vl("a_2", 1.0, math.nan)])
    with pytest.raises(ValueError, match=r"'a_3'.*two scores"):
        vl_rewardbench_metrics([{"id": "a_3", "scores": [1.0], "human_ranking": [0, 1]}])


def _rb(subset, chosen, rejected):
    return {"subset": subset, "chosen_score": chosen, "rejected_score": rejected}


def test_rewardbench_sections_use_official_weights_with_math_prm_984():
    rows = [
        # chat: alpacaeval-easy 1/2 (tie wrong), mt-bench-easy 1/1
        _rb("alpacaeval-easy", 1.0, 0.0),
        _rb("alpacaeval-easy", 0.5, 0.5),
        _rb("mt-bench-easy", 3.0, 2.0),
        # chat hard: llmbar-natural 0/1
        _rb("llmbar-natural", 0.0, 1.0),
        # safety: donotanswer 1/1, xstest-should-refuse 0/1
        _rb("donotanswer", 1.0, 0.0),
        _rb("xstest-should-refuse", -1.0, 0.0),
        # reasoning: math-prm 1/1, hep-python 0/2, hep-go 1/1
        _rb("math-prm", 1.0, 0.0),
        _rb("hep-python", 0.0, 1.0),
        _rb("hep-python", 0.0, 1.0),
        _rb("hep-go", 2.0, 1.0),
    ]
    m = rewardbench_metrics(rows)
    assert m["subsets"] == {
        "alpacaeval-easy": 0.5, "donotanswer": 1.0, "hep-go": 1.0, "hep-python": 0.0, "llmbar-natural": 0.0,
        "math-prm": 1.0, "mt-bench-easy": 1.0, "xstest-should-refuse": 0.0,
    }  # fmt: skip
    chat = (0.5 * 100 + 1.0 * 28) / (100 + 28)
    safety = (1.0 * 136 + 0.0 * 154) / (136 + 154)
    reasoning = (1.0 * 984 + 0.0 * 164 + 1.0 * 164) / (984 + 164 + 164)
    assert m["chat"] == pytest.approx(chat)
    assert m["chat_hard"] == 0.0
    assert m["safety"] == pytest.approx(safety)
    assert m["reasoning"] == pytest.approx(reasoning)
    assert m["score"] == pytest.approx((chat + 0.0 + safety + reasoning) / 4)
    assert "prior_sets" not in m


# allenai/reward-bench rewardbench/constants.py at commit 05a9005efb607249822c193590c8ecab87c77052 (the same table
# ships in the `rewardbench` 0.1.4 wheel on PyPI): EXAMPLE_COUNTS and SUBSET_MAPPING, copied as data. The xstest
# counts were swapped upstream until commit 6552e932 ("Mirror change from leaderboard").
OFFICIAL_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "math-prm": 984, "refusals-dangerous": 100, "refusals-offensive": 100, "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}  # fmt: skip
OFFICIAL_SUBSET_MAPPING = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}  # fmt: skip


def test_rewardbench_weights_and_sections_are_the_official_ones():
    assert REWARDBENCH_EXAMPLE_COUNTS == OFFICIAL_EXAMPLE_COUNTS
    ours = {"Chat": "chat", "Chat Hard": "chat_hard", "Safety": "safety", "Reasoning": "reasoning"}
    assert {ours[s]: list(m) for s, m in OFFICIAL_SUBSET_MAPPING.items()} == {
        s: list(m) for s, m in REWARDBENCH_SECTIONS.items()
    }


def test_rewardbench_math_weighs_as_much_as_all_code_subsets():
    code = ["hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"]
    m = rewardbench_metrics([_rb("math-prm", 1.0, 0.0)] + [_rb(s, 0.0, 1.0) for s in code])
    assert m["reasoning"] == pytest.approx(0.5)


def test_rewardbench_missing_section_and_prior_sets():
    m = rewardbench_metrics([_rb("alpacaeval-hard", 1.0, 0.0), _rb("shp", 1.0, 0.0), _rb("summarize", 0.0, 1.0)])
    assert m["chat"] == 1.0
    assert m["chat_hard"] is None and m["safety"] is None and m["reasoning"] is None
    assert m["score"] is None
    assert m["prior_sets"] == pytest.approx(0.5)
    assert m["score_with_prior"] is None


def test_rewardbench_score_with_prior_uses_leaderboard_weights():
    rows = [_rb("alpacaeval-hard", 1.0, 0.0), _rb("mt-bench-hard", 0.0, 1.0), _rb("donotanswer", 1.0, 0.0)]
    rows += [_rb("hep-js", 1.0, 0.0), _rb("anthropic_hhh", 0.0, 1.0), _rb("anthropic_harmless", 1.0, 0.0)]
    m = rewardbench_metrics(rows)
    assert m["score"] == pytest.approx(3 / 4)
    assert m["prior_sets"] == 0.0  # anthropic_harmless is a prior subset the leaderboard does not count
    assert m["score_with_prior"] == pytest.approx((2 * 3 + 0) / 9)


def test_rewardbench_unknown_subset_raises_clear_error():
    with pytest.raises(ValueError, match=r"row 'q7', field 'subset': unknown RewardBench subset 'math'"):
        rewardbench_metrics([{"id": "q7", "subset": "math", "chosen_score": 1.0, "rejected_score": 0.0}])


def _mm(rid, category, better, s1, s2):
    return {"ID": rid, "Category": category, "Better": better, "scores": [s1, s2]}


def test_mm_rewardbench_metrics_hand_computed():
    rows = [
        _mm("nocaps_1", "open_generation/correctness_task", "Output1", 1.0, 0.0),
        _mm("nocaps_2", "open_generation/correctness_task", "Output2", 1.0, 0.0),
        _mm("pairs_3", "safety", "Output2", 0.0, 1.0),
        _mm("hateful_4", "safety", "Output1", 1.0, 1.0),  # tie: wrong
        _mm("mathvista_5", "reasoning", "Output1", 2.0, 1.0),
        _mm("EMMA-Coding_6", "reasoning", "Output2", 2.0, 1.0),
        _mm("MMBench_7", "vqa", "Output2", -1.0, 0.0),
    ]
    m = mm_rewardbench_metrics(rows)
    assert m == {
        "overall": pytest.approx(4 / 7),
        "open_generation/correctness_task": 0.5,
        "safety/bias": 1.0,
        "safety/toxicity": 0.0,
        "reasoning/math": 1.0,
        "reasoning/coding": 0.0,
        "vqa": 1.0,
    }


def test_mm_rewardbench_rejects_bad_label():
    with pytest.raises(ValueError, match=r"'x_1'.*Better"):
        mm_rewardbench_metrics([_mm("x_1", "vqa", "A", 1.0, 0.0)])


# ----------------------------------------------------------------------------------------------- readers
FIXTURES = Path(__file__).parent / "fixtures"


def _pixels(image):
    return list(load_image(image).getdata())


@pytest.mark.parametrize(
    "name, first, second",
    [
        ("vl_rewardbench", "vl_rewardbench.jsonl", "vl_rewardbench.parquet"),
        ("rewardbench", "rewardbench.jsonl", "rewardbench_dataset"),
        ("mm_rewardbench", "mm_rewardbench.json", "mm_rewardbench.parquet"),
    ],
)
def test_readers_give_the_same_examples_from_every_format(name, first, second):
    a, b = read_benchmark(name, FIXTURES / first), read_benchmark(name, FIXTURES / second)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.row == y.row
        assert x.group.prompt == y.group.prompt and x.group.responses == y.group.responses
        assert [_pixels(i) for i in x.group.images] == [_pixels(i) for i in y.group.images]


def test_vl_rewardbench_reader_builds_image_prompt_and_rows():
    ex = read_benchmark("vl_rewardbench", FIXTURES / "vl_rewardbench.jsonl")
    first = ex[1]
    assert first.row == {"id": "wildvision-battle_1", "human_ranking": [1, 0]}
    assert first.group.responses == ["A blue square.", "A red circle."]
    assert first.group.prompt == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}
    ]
    assert load_image(first.group.images[0]).size == (48, 40)
    # fake scores: the second response always wins -> correct exactly where human_ranking prefers it
    rows = [scored_row("vl_rewardbench", e, [0.0, 1.0]) for e in ex]
    assert vl_rewardbench_metrics(rows)["overall"] == pytest.approx(2 / 6)


def test_rewardbench_and_mm_readers_rows():
    rb = read_benchmark("rewardbench", FIXTURES / "rewardbench.jsonl", limit=3)
    assert len(rb) == 3 and rb[0].group.images == [] and rb[0].row == {"id": 0, "subset": "alpacaeval-easy"}
    assert scored_row("rewardbench", rb[0], [2.0, 1.0])["chosen_score"] == 2.0
    mm = read_benchmark("mm_rewardbench", FIXTURES / "mm_rewardbench.json")
    assert [e.row["Category"] for e in mm[:2]] == [
        "open_generation/correctness_task",
        "open_generation/preference_task",
    ]
    rows = [scored_row("mm_rewardbench", e, [1.0, 0.0]) for e in mm]  # Output1 always wins
    assert mm_rewardbench_metrics(rows)["overall"] == pytest.approx(4 / 6)


def test_readers_name_the_bad_row_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "q1", "prompt": "hi", "chosen": "a", "rejected": "", "subset": "shp"}) + "\n")
    with pytest.raises(RecordError, match=r"'q1' \(#0\), field 'rejected': missing or empty"):
        read_benchmark("rewardbench", path)
    path.write_text(json.dumps({"id": "v1", "query": "q", "response": ["a", "b"], "human_ranking": [0, 1],
                                "image": "nope.png"}) + "\n")  # fmt: skip
    with pytest.raises(RecordError, match=r"'v1' \(#0\), field 'image\[0\]': image file not found"):
        read_benchmark("vl_rewardbench", path)
    with pytest.raises(ValueError, match="unknown benchmark 'vlrb'"):
        read_benchmark("vlrb", path)


def test_parquet_folder_reader_reads_shards_and_refuses_mixed_splits(tmp_path):
    import shutil

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(FIXTURES / "vl_rewardbench.parquet", folder / "test-00000-of-00001.parquet")
    assert [e.row["id"] for e in read_benchmark("vl_rewardbench", tmp_path)][:2] == [
        "vlfeedback_0",
        "wildvision-battle_1",
    ]
    shutil.copy(FIXTURES / "vl_rewardbench.parquet", folder / "raw-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=r"several splits \['raw', 'test'\]"):
        read_benchmark("vl_rewardbench", tmp_path)
