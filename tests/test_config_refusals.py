"""Config values the jobs refuse before loading anything, through the recipes as a user runs them; each refusal
lists every problem of the command at once."""

import json
import re

from common.config_checks import model_path_problems
from tests.launch import refusal
from tests.test_recipes import _run_recipe


def _refusal(monkeypatch, recipe, *args) -> str:
    error = refusal(lambda: _run_recipe(monkeypatch, recipe, *args))
    assert isinstance(error, ValueError)
    return str(error)


def test_mpo_refuses_bad_loss_settings_and_paths(monkeypatch, tmp_path):
    cpu = ("--use_cpu", "true", "--bf16", "false", "--report_to", "none")
    msg = _refusal(monkeypatch, "mpo_qwen.py", "--model_name_or_path", tmp_path / "no-model", "--train_data",
                   tmp_path / "no-data", "--beta", 0, "--loss_weights", 0, 0, 0, "--label_smoothing", 0.1, *cpu)  # fmt: skip
    for needle in ("output_dir: required", f"model_name_or_path: the local path '{tmp_path}/no-model' does not exist",
                   "train_data:", "beta: must be > 0", "loss_weights: each must be >= 0 and one > 0",
                   "label_smoothing: the MPO loss has none"):  # fmt: skip
        assert needle in msg, needle
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    msg = _refusal(monkeypatch, "mpo_qwen.py", "--model_name_or_path", tmp_path, "--train_data", a_file, "--beta", -1,
                   "--loss_weights", -0.5, 0.2, 1.0, "--output_dir", a_file, *cpu)  # fmt: skip
    for needle in (f"output_dir: '{a_file}' is an existing file", "beta: must be > 0", "loss_weights: each must be"):
        assert needle in msg, needle
    assert "model_name_or_path" not in msg and "train_data" not in msg
    assert not (tmp_path / "trainer_output").exists()


def test_reward_refuses_missing_output_dir_file_output_dir_and_missing_model(monkeypatch, tmp_path, toy_data):
    stages = json.dumps([{"name": "s1", "datasets": {str(toy_data["pairs_train"]): 1.0}}])
    msg = _refusal(monkeypatch, "train_reward.py", "--model_name_or_path", "org/not-downloaded", "--stages", stages,
                   "--use_cpu", "true")  # fmt: skip
    assert "output_dir: required" in msg
    assert "model_name_or_path: the local path 'org/not-downloaded' does not exist, and HF_HUB_OFFLINE=1" in msg
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    msg = _refusal(monkeypatch, "train_reward.py", "--model_name_or_path", tmp_path, "--stages", stages, "--use_cpu",
                   "true", "--output_dir", a_file)  # fmt: skip
    assert f"output_dir: '{a_file}' is an existing file" in msg and "model_name_or_path" not in msg


def test_reward_refuses_a_huge_margin_naming_the_record(monkeypatch, tmp_path, tiny_vlm_path, toy_data):
    from common.io import read_records, write_records

    records = [dict(r) for r in read_records(toy_data["pairs_train"]).select(range(3))]
    for record, margin in zip(records, (0.5, 1e308, 1.0)):  # 1e308 as float32 in the batch: inf, an inf loss
        record["margin"] = margin
    data = write_records(records, tmp_path / "pairs.jsonl")
    stages = json.dumps([{"name": "s1", "datasets": {str(data): 1.0}, "max_steps": 1}])
    msg = _refusal(monkeypatch, "train_reward.py", "--model_name_or_path", tiny_vlm_path, "--stages", stages,
                   "--use_cpu", "true", "--output_dir", tmp_path / "run", "--report_to", "none")  # fmt: skip
    assert re.match(r"record 'toy-train-shape-000000' \(#1\), field 'margin': \|margin\| must be <= 1000 \(got 1e\+308",
                    msg)  # fmt: skip


def test_build_pairs_and_eval_refuse_a_file_as_output_dir_and_missing_models(monkeypatch, tmp_path, toy_data):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    msg = _refusal(monkeypatch, "build_pairs.py", "--prompts", toy_data["prompts_train"], "--policy_name_or_path",
                   tmp_path / "no-policy", "--reward_model_name_or_path", tmp_path, "--output_dir", a_file)  # fmt: skip
    assert f"output_dir: '{a_file}' is an existing file" in msg
    assert f"policy_name_or_path: the local path '{tmp_path}/no-policy' does not exist" in msg
    msg = _refusal(monkeypatch, "eval_reward.py", "--model", tmp_path, "--benchmark", "vl_rewardbench", "--data",
                   a_file, "--output_dir", a_file)  # fmt: skip
    assert f"output_dir: '{a_file}' is an existing file" in msg
    msg = _refusal(
        monkeypatch, "eval_reward.py", "--model", tmp_path, "--benchmark", "vl_rewardbench", "--data", a_file
    )
    assert "output_dir: required" in msg


def test_flag_prefixes_are_not_expanded(monkeypatch, tmp_path, toy_data):
    """`--num_sample 8` used to be taken as `--num_samples 8`."""
    msg = _refusal(monkeypatch, "build_pairs.py", "--prompts", toy_data["prompts_train"], "--policy_name_or_path",
                   tmp_path, "--reward_model_name_or_path", tmp_path, "--output_dir", tmp_path / "o", "--num_sample", 8)  # fmt: skip
    assert "--num_sample" in msg and "not used" in msg
    msg = _refusal(monkeypatch, "mpo_qwen.py", "--model_name_or_path", tmp_path, "--use_cpu", "true", "--bet", 0.5)
    assert "--bet" in msg


def test_hub_ids_pass_only_when_the_hub_may_be_used(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert model_path_problems("Qwen/Qwen2.5-VL-7B-Instruct", "m") == []
    assert model_path_problems(str(tmp_path / "a" / "b"), "m") == [
        f"m: the local path '{tmp_path}/a/b' does not exist, nor is it a hub id"
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE=1" in model_path_problems("Qwen/Qwen2.5-VL-7B-Instruct", "m")[0]
    assert model_path_problems(str(tmp_path), "m") == []


def test_reward_data_and_rounds_refuse_a_file_as_output_dir_and_missing_models(monkeypatch, tmp_path, toy_data):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    msg = _refusal(monkeypatch, "build_reward_data.py", "--config", "recipes/configs/reward_data_tiny.yaml",
                   "--reward_model_name_or_path", tmp_path / "no-reward", "--output_dir", a_file)  # fmt: skip
    assert f"output_dir: '{a_file}' is an existing file" in msg
    assert f"reward_model_name_or_path: the local path '{tmp_path}/no-reward' does not exist" in msg
    msg = _refusal(monkeypatch, "build_reward_data.py", "--config", "recipes/configs/reward_data_tiny.yaml",
                   "--reward_model_name_or_path", tmp_path, "--reward_url", "http://127.0.0.1:1")  # fmt: skip
    assert "reward_model_name_or_path and reward_url: give one" in msg
    rounds = ("--config", "recipes/configs/mpo_rounds_tiny.yaml", "--prompts", toy_data["prompts_train"],
              "--eval_prompts", toy_data["prompts_eval"])  # fmt: skip
    msg = _refusal(monkeypatch, "mpo_rounds.py", *rounds, "--policy_name_or_path", tmp_path / "no-policy",
                   "--reward_model_name_or_path", tmp_path / "no-reward", "--output_dir", a_file)  # fmt: skip
    for needle in (f"output_dir: '{a_file}' is an existing file",
                   f"policy_name_or_path: the local path '{tmp_path}/no-policy' does not exist",
                   f"reward_model_name_or_path: the local path '{tmp_path}/no-reward' does not exist"):  # fmt: skip
        assert needle in msg, needle
    msg = _refusal(monkeypatch, "mpo_rounds.py", *rounds, "--policy_name_or_path", tmp_path, "--reward_url",
                   "http://127.0.0.1:1", "--heldout_reward_model_name_or_path", tmp_path / "no-heldout")  # fmt: skip
    assert "output_dir: required" in msg and "heldout_reward_model_name_or_path: the local path" in msg
    assert "  policy_name_or_path" not in msg and "  reward_model_name_or_path" not in msg
