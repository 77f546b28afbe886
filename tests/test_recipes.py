"""The recipes users run: never importable as a library; the foundation ones and the MPO reward hook end to end."""

import importlib
import json
import math
import runpy
import sys

import pytest
import yaml

from common.io import read_records
from common.scoring import ScoringGroup
from reward.model import load_reward_model, save_reward_model
from reward.scorer import RewardScorer
from tests.launch import REPO, refusal


def _run_recipe(monkeypatch, name, *args):
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    runpy.run_path(str(REPO / "recipes" / name), run_name="__main__")


def test_recipes_are_not_a_library():
    with pytest.raises(ModuleNotFoundError, match="entry scripts"):
        importlib.import_module("recipes")


def test_make_tiny_model_and_toy_data(monkeypatch, tmp_path):
    _run_recipe(monkeypatch, "make_tiny_model.py", "--output_dir", tmp_path / "m", "--hidden_size", 64)
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "processor_config.json").exists()
    _run_recipe(monkeypatch, "make_toy_data.py", "--output_dir", tmp_path / "toy", "--n_train", 2, "--n_eval", 1,
                "--kinds", "color", "sum", "--fmt", "jsonl")  # fmt: skip
    assert len(read_records(tmp_path / "toy" / "pairs_train.jsonl")) == 4
    meta = json.loads((tmp_path / "toy" / "run_meta.json").read_text())
    assert meta["MakeToyDataConfig"]["kinds"] == ["color", "sum"]
    error = refusal(
        lambda: _run_recipe(monkeypatch, "make_toy_data.py", "--output_dir", tmp_path / "x", "--n_trian", 2)
    )
    assert isinstance(error, ValueError) and "n_trian" in str(error)  # unknown flags are fatal, never ignored


def test_mpo_recipe_scores_the_policy_with_a_reward_model(monkeypatch, tmp_path, tiny_vlm_path, toy_data):
    reward_path = save_reward_model(*load_reward_model(str(tiny_vlm_path), new_head_ok=True), tmp_path / "rm")
    config = tmp_path / "mpo.yaml"
    config.write_text(yaml.safe_dump({
        "use_cpu": True, "bf16": False, "per_device_train_batch_size": 4, "max_steps": 1, "learning_rate": 1e-3,
        "save_strategy": "no", "report_to": "none", "gradient_checkpointing": False, "eval_max_new_tokens": 4,
    }))  # fmt: skip
    out = tmp_path / "mpo"
    _run_recipe(monkeypatch, "mpo_qwen.py", "--config", config, "--model_name_or_path", tiny_vlm_path,
                "--train_data", toy_data["pairs_train"], "--eval_prompts", toy_data["prompts_eval"],
                "--eval_reward_model", reward_path, "--output_dir", out)  # fmt: skip
    final = json.loads((out / "mpo_history.json").read_text())["eval"][-1]
    assert math.isfinite(final["mean_reward"])

    # the hook's scorer gives the reward model's own score of the full conversation
    hook = runpy.run_path(str(REPO / "recipes" / "mpo_qwen.py"))
    cfg = hook["MPOConfig"](output_dir=str(tmp_path / "unused"), use_cpu=True, bf16=False)
    scorer = hook["reward_scorer"](str(reward_path), cfg)
    prompts = read_records(toy_data["prompts_eval"], kind="prompt").select(range(3))
    rows = [{"id": p["id"], "prompt": p["prompt"], "images": p["images"], "response": f"It is {w}."}
            for p, w in zip(prompts, ["red", "two", "a circle"])]  # fmt: skip
    groups = [ScoringGroup(r["prompt"], r["images"], [r["response"]]) for r in rows]
    scores = [s for (s,) in scorer.score_groups(groups)]
    naive = RewardScorer.from_pretrained(str(reward_path), device="cpu", group_aware=False, progress=False).score(
        [{"messages": r["prompt"] + [{"role": "assistant", "content": [{"type": "text", "text": r["response"]}]}],
          "images": r["images"]} for r in rows])  # fmt: skip
    assert max(abs(a - b) for a, b in zip(scores, naive)) <= 1e-4
