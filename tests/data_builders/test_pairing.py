"""Selection rules on hand-made scores."""

import json
import math

import pytest

from common.schema import validate_preference_record
from data_builders import pairing
from data_builders.pairing import Pair, pair_record, select_pairs

R = ["a", "b", "c", "d"]


def idx(sel):
    return [(p.chosen, p.rejected) for p in sel.pairs]


def test_best_vs_worst_picks_extremes_and_applies_min_gap():
    sel = select_pairs(R, [0.1, 0.9, -0.4, 0.3], "best_vs_worst", min_gap=1.0)
    assert idx(sel) == [(1, 2)] and sel.pairs[0].gap == pytest.approx(1.3) and sel.skip_reason is None
    sel = select_pairs(R, [0.1, 0.9, -0.4, 0.3], "best_vs_worst", min_gap=1.31)
    assert sel.pairs == [] and sel.skip_reason == pairing.GAP_BELOW_MIN


def test_best_vs_worst_ties_go_to_the_earliest_sample():
    assert idx(select_pairs(R, [1.0, 1.0, 0.0, 0.0], "best_vs_worst")) == [(0, 2)]


def test_all_pairs_above_gap_sorted_and_capped():
    scores = [0.0, 3.0, 1.0, 2.5]
    sel = select_pairs(R, scores, "all_pairs", min_gap=1.0, max_pairs_per_prompt=10)
    # gaps: (1,0)=3, (3,0)=2.5, (1,2)=2, (3,2)=1.5, (2,0)=1; (1,3)=0.5 is below the gap
    assert idx(sel) == [(1, 0), (3, 0), (1, 2), (3, 2), (2, 0)]
    assert [p.gap for p in sel.pairs] == [3.0, 2.5, 2.0, 1.5, 1.0]
    assert idx(select_pairs(R, scores, "all_pairs", min_gap=1.0, max_pairs_per_prompt=2)) == [(1, 0), (3, 0)]
    assert select_pairs(R, scores, "all_pairs", min_gap=3.5).skip_reason == pairing.GAP_BELOW_MIN


def test_correctness_gate_reward_breaks_ties_and_ignores_gap():
    scores = [0.5, 0.2, 0.9, -1.0]
    correct = [True, True, False, False]
    sel = select_pairs(R, scores, "correctness", min_gap=100.0, correct=correct)
    # best correct (0: 0.5) vs worst wrong (3: -1.0); min_gap does not apply
    assert idx(sel) == [(0, 3)]
    sel = select_pairs(R, scores, "correctness", max_pairs_per_prompt=3, correct=correct)
    assert idx(sel) == [(0, 3), (1, 3), (0, 2)]
    assert sel.pairs[2].gap == pytest.approx(-0.4)  # the RM preferred the wrong answer: still a valid pair


@pytest.mark.parametrize(
    "correct, reason",
    [(None, pairing.NO_GROUND_TRUTH), ([False] * 4, pairing.NO_CORRECT), ([True] * 4, pairing.NO_WRONG)],
)
def test_correctness_skip_reasons(correct, reason):
    sel = select_pairs(R, [1.0, 2.0, 3.0, 4.0], "correctness", correct=correct)
    assert sel.pairs == [] and sel.skip_reason == reason


def test_cleaning_drops_empty_nan_and_duplicates_with_reasons():
    responses = ["x", "  ", "x ", "y", "z"]
    sel = select_pairs(responses, [1.0, 5.0, 1.0, math.nan, 0.0], "best_vs_worst")
    assert idx(sel) == [(0, 4)]
    assert sel.dropped == {pairing.EMPTY_RESPONSE: 1, pairing.DUPLICATE_RESPONSE: 1, pairing.NON_FINITE_SCORE: 1}


def test_all_equal_and_too_few_candidates_are_skipped():
    assert select_pairs(R, [0.3] * 4, "best_vs_worst").skip_reason == pairing.ALL_SCORES_EQUAL
    assert select_pairs(R, [0.3] * 4, "all_pairs").skip_reason == pairing.ALL_SCORES_EQUAL
    sel = select_pairs(["same"] * 4, [0.0, 1.0, 2.0, 3.0], "all_pairs")
    assert sel.skip_reason == pairing.TOO_FEW_CANDIDATES and sel.dropped[pairing.DUPLICATE_RESPONSE] == 3


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown pair selection rule"):
        select_pairs(R, [0.0] * 4, "best")
    with pytest.raises(ValueError, match="4 responses but 3 scores"):
        select_pairs(R, [0.0] * 3)


def test_pair_record_is_a_valid_preference_record_with_provenance():
    prompt = {"id": "p7", "prompt": [{"role": "user", "content": [{"type": "text", "text": "q?"}]}], "images": []}
    rec = pair_record(
        prompt, ["good", "bad"], Pair(0, 1, 2.0, 0.5), 0, {"policy": "pol", "reward_model": "rm", "seed": 3}
    )
    out = validate_preference_record(rec)
    assert out["id"] == "p7/0" and out["chosen"][0]["content"][0]["text"] == "good"
    assert (out["chosen_score"], out["rejected_score"]) == (2.0, 0.5)
    meta = json.loads(out["meta"])
    assert meta == {"prompt_id": "p7", "chosen_index": 0, "rejected_index": 1, "gap": 1.5, "policy": "pol",
                    "reward_model": "rm", "seed": 3}  # fmt: skip
