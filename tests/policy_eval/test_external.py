"""The `eval_command` hook with a stand-in evaluator: template filling, results reading, failures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from policy_eval.external import read_results, run_eval_command, template_problems
from tests.policy_eval.stand_in_evaluator import score_of

STAND_IN = Path(__file__).with_name("stand_in_evaluator.py")
TEMPLATE = f"{sys.executable} {STAND_IN} --model {{policy}} --output_path {{output_dir}}"


def test_the_command_runs_on_the_policy_and_its_json_results_are_read(tmp_path):
    policy = tmp_path / "my policy (round 2)"  # spaces and brackets: the values are shell-quoted
    policy.mkdir()
    figures = run_eval_command(TEMPLATE, policy, tmp_path / "out")
    assert figures == {
        "mmstar/average,none": score_of(str(policy)),
        "ai2d/exact_match,flexible-extract": 1 - score_of(str(policy)),
    }
    assert (tmp_path / "out" / "eval_command.log").exists()


def test_a_failing_command_raises_with_its_exit_code_and_output(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*CUDA out of memory \(stand-in\)"):
        run_eval_command(TEMPLATE + " --fail", tmp_path, tmp_path / "out")


def test_results_without_a_results_key_are_read_as_a_whole(tmp_path):
    (tmp_path / "scores.json").write_text('{"mathvista": {"accuracy": 0.5, "note": "x"}, "n": 10}')
    assert read_results(tmp_path) == {"mathvista/accuracy": 0.5, "n": 10.0}
    with pytest.raises(FileNotFoundError, match="no .json results"):
        read_results(tmp_path / "empty")


def test_bad_templates_are_named():
    assert "placeholder other than" in template_problems("run --model {model} --out {output_dir}")[0]
    assert "never names {policy}" in template_problems("run --out {output_dir}")[0]
    assert template_problems("python -c 'print({{}})' {policy} {output_dir}") == []
