"""The guards and the held-out metrics on hand-made numbers: each verdict against what it must say."""

import math

import pytest

from common.cli import parse_configs
from data_builders.config import BuildPairsConfig
from rounds.config import RoundsConfig
from rounds.evaluation import answer_metrics, degenerate_kind
from rounds.guards import (
    best_round,
    correctness_drop,
    hacking_alarm,
    keepable,
    length_bias,
    mpo_health,
    start_round,
    wilson_interval,
)


def test_degenerate_kinds():
    assert degenerate_kind("  ", 0, 12) == "empty"
    assert degenerate_kind("The shape is red and", 12, 12) == "cut_off"
    assert degenerate_kind("red is red is red", 5, 12) == "repeated"  # "red is red" twice
    assert degenerate_kind("The shape is red.", 5, 12) is None


def test_answer_metrics():
    prompts = [{"answer": "red", "choices": ["red", "blue"]}, {"answer": "blue", "choices": ["red", "blue"]}, {}]
    answers = ["It is red.", "It is red.", ""]
    m = answer_metrics(prompts, answers, [4, 4, 0], 12, rewards=[1.0, 3.0, -1.0], heldout_rewards=[0.5, 0.5, 0.5])
    assert (
        m["accuracy"] == 0.5
        and m["judged"] == 2
        and m["accuracy_interval"] == pytest.approx([0.0945, 0.9055], abs=1e-4)
    )
    assert m["reward_mean"] == 1.0 and m["reward_std"] == pytest.approx(math.sqrt(8 / 3))
    assert m["degenerate_rate"] == pytest.approx(1 / 3) and m["degenerate"] == {"empty": 1, "cut_off": 0, "repeated": 0}
    assert m["length_mean"] == pytest.approx(8 / 3) and m["heldout_reward_mean"] == 0.5


def test_hacking_alarm():
    prev = {"reward_mean": 1.0, "accuracy": 0.5}
    assert hacking_alarm(prev, {"reward_mean": 2.0, "accuracy": 0.46}, 0.05) is None  # within the tolerance
    assert hacking_alarm(prev, {"reward_mean": 0.9, "accuracy": 0.1}, 0.05) is None  # reward did not rise
    alarm = hacking_alarm(prev, {"reward_mean": 2.0, "accuracy": 0.4}, 0.05)
    assert alarm["fell"] == {"accuracy": [0.5, 0.4]} and alarm["reward_mean"] == [1.0, 2.0]
    held = hacking_alarm({"reward_mean": 1.0, "heldout_reward_mean": 0.0}, {"reward_mean": 1.5, "heldout_reward_mean": -1.0}, 0.05)  # fmt: skip
    assert held["fell"] == {"heldout_reward_mean": [0.0, -1.0]}


def test_best_round_prefers_ground_truth_then_heldout_reward():
    evals = {0: {"accuracy": 0.3, "reward_mean": 0.0}, 1: {"accuracy": 0.6, "reward_mean": 1.0},
             2: {"accuracy": 0.6, "reward_mean": 5.0}, 3: {"accuracy": 0.1, "reward_mean": 9.0}}  # fmt: skip
    assert best_round(evals) == 1  # the earliest of the best
    assert best_round({0: {"heldout_reward_mean": 1, "reward_mean": 0}, 1: {"heldout_reward_mean": 0, "reward_mean": 9}}) == 0  # fmt: skip
    assert best_round({0: {"reward_mean": 0.0}, 1: {"reward_mean": 1.0}}) == 1


def test_length_bias():
    assert length_bias([[1.0, 10], [2.0, 20], [3.0, 30]]) == pytest.approx(1.0)
    assert length_bias([[1.0, 30], [2.0, 20], [3.0, 10]]) == pytest.approx(-1.0)
    assert length_bias([[1.0, 10], [2.0, 10]]) is None and length_bias([[1.0, 3]]) is None


def test_mpo_health():
    ok = [{"step": s, "loss": 1.0, "loss/sft": 2.0 - 0.1 * s, "rewards/accuracies": 0.7} for s in range(1, 5)]
    assert mpo_health(ok, 0.0, 1e-3, 0.2) == []
    zero = [{**h, "loss": 1e-5} for h in ok]
    assert "loss near zero" in mpo_health(zero, 0.0, 1e-3, 0.2)[0]
    saturated = [{"step": s, "loss": 1.0, "loss/sft": 1.0 + 0.1 * s, "rewards/accuracies": 1.0} for s in range(1, 5)]
    assert "saturated at 1.0 while the SFT loss rose" in mpo_health(saturated, 0.0, 1e-3, 0.2)[0]
    assert "degenerate" in mpo_health(ok, 0.5, 1e-3, 0.2)[0]


def test_config_lists_every_problem():
    cfg = RoundsConfig(num_rounds=0, selection="x", mpo_args=["--train_data", "p"], hacking_tolerance=-1)
    with pytest.raises(ValueError) as e:
        cfg.validate()
    msg = str(e.value)
    for needle in ("policy_name_or_path: required", "num_rounds=0", "selection='x'", "--train_data is set by the loop",
                   "hacking_tolerance=-1"):  # fmt: skip
        assert needle in msg


def test_wilson_interval():
    # Hand-computed from Wilson (1927): centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    assert wilson_interval(29, 64) == pytest.approx((0.33729, 0.57427), abs=1e-5)
    low, high = wilson_interval(116, 256)  # 4x the prompts: about half the width
    assert high - low == pytest.approx(0.1210, abs=1e-3) and wilson_interval(0, 0) == (0.0, 1.0)


def test_correctness_drop_is_judged_against_the_start_interval():
    start = {"accuracy": 0.5, "judged": 256}  # 95% interval [0.439, 0.561]
    assert correctness_drop(start, {"accuracy": 0.45}) == []  # within the noise of 256 prompts
    (warning,) = correctness_drop(start, {"accuracy": 0.40})
    assert "0.400 < 0.439" in warning
    assert correctness_drop({"reward_mean": 1.0}, {"accuracy": 0.0}) == []  # no ground truth: no verdict


def test_an_unhealthy_round_is_not_a_start_nor_kept_under_rollback():
    records = {0: {"eval": {"accuracy": 0.4}}, 1: {"eval": {"accuracy": 0.6}},
               2: {"eval": {"accuracy": 0.7}, "health": ["degenerate held-out answers: 0.484 > 0.2"]}}  # fmt: skip
    assert start_round(records, "rollback") == 1  # the best healthy round so far
    assert start_round(records, "continue") == start_round(records, "stop") == 2
    assert best_round(keepable(records, "rollback")) == best_round(keepable(records, "stop")) == 1
    assert best_round(keepable(records, "continue")) == 2
    assert start_round({**records, 3: {"eval": {"accuracy": 0.1}}}, "rollback") == 3  # healthy, though worse


def test_rounds_and_pair_building_refuse_a_reward_url_beside_a_local_reward_model(tmp_path):
    with pytest.raises(ValueError, match="reward_model_name_or_path and reward_url: give one"):
        RoundsConfig(reward_model_name_or_path=str(tmp_path), reward_url=["http://127.0.0.1:1"]).validate()
    with pytest.raises(ValueError, match="reward_model_name_or_path and reward_url: give one"):
        BuildPairsConfig(reward_model_name_or_path=str(tmp_path), reward_url=["http://127.0.0.1:1"]).validate()


def test_stage_flags_on_the_command_line():
    flags = [
        "--mpo_args",
        "--max_steps 40 --learning_rate 1e-4",
        "--build_pairs_args",
        "--temperature 0.5",
        "--top_p 0.9",
    ]
    (cfg,) = parse_configs([RoundsConfig], flags)
    assert cfg.mpo_args == ["--max_steps", "40", "--learning_rate", "1e-4"]
    assert cfg.build_pairs_args == ["--temperature", "0.5", "--top_p", "0.9"]
    (same,) = parse_configs([RoundsConfig], ["--mpo_args=--max_steps 40 --learning_rate 1e-4"])
    assert same.mpo_args == cfg.mpo_args
    yaml_list = RoundsConfig(mpo_args=["--deepspeed", "", "--max_steps", "20"], build_pairs_args=["--stop", "a b"])
    assert yaml_list.mpo_args == ["--deepspeed", "", "--max_steps", "20"] and yaml_list.build_pairs_args[1] == "a b"
