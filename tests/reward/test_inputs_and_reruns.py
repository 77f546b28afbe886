"""Reward jobs on bad inputs and reruns: a folder without a value head is refused except by training, a rerun with
any result-changing field changed is refused by name, and a margin that the first record lacks still reaches the
loss."""

import logging
import runpy
import sys

import pytest
import torch
import torch.nn.functional as F

from common.io import SkipLog, write_records
from common.run_folder import RunFolderError
from reward.collator import RewardCollator
from reward.config import RewardConfig
from reward.data import read_pairs
from reward.loss import pairwise_reward_loss
from reward.model import load_reward_model
from reward.scorer import RewardScorer
from reward.train import _claim_output_dir
from tests.launch import REPO, refusal


def test_a_folder_without_value_head_is_refused_by_loading_scoring_and_evaluation(tiny_vlm_path, monkeypatch,
                                                                                   tmp_path):  # fmt: skip
    with pytest.raises(FileNotFoundError, match="has no value_head.safetensors: it is not a reward model"):
        load_reward_model(tiny_vlm_path)
    with pytest.raises(FileNotFoundError, match="value_head.safetensors"):
        RewardScorer.from_pretrained(str(tiny_vlm_path), device="cpu", progress=False)
    recipe = REPO / "recipes" / "eval_reward.py"
    monkeypatch.setattr(sys, "argv", [str(recipe), "--model", str(tiny_vlm_path), "--benchmark", "vl_rewardbench",
                                      "--data", str(REPO / "tests/reward/fixtures/vl_rewardbench.jsonl"),
                                      "--output_dir", str(tmp_path / "eval"), "--device", "cpu"])  # fmt: skip
    error = refusal(lambda: runpy.run_path(str(recipe), run_name="__main__"))
    assert isinstance(error, FileNotFoundError) and "value_head.safetensors" in str(error)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_only_training_starts_a_new_head_and_says_so(tiny_vlm_path, caplog):
    with caplog.at_level(logging.WARNING, logger="reward.model"):
        model, _ = load_reward_model(tiny_vlm_path, head_seed=3, new_head_ok=True)
    assert "has no value_head.safetensors: starting a new value head (seed 3)" in caplog.text
    assert torch.isfinite(model.v_head.summary.weight).all()


def _config(tmp_path, model, data, **kw) -> RewardConfig:
    stages = [{"name": "s1", "datasets": {str(data): 1.0}, "max_steps": 2}]
    return RewardConfig(output_dir=str(tmp_path / "run"), model_name_or_path=str(model), stages=stages, use_cpu=True,
                        report_to="none", **kw)  # fmt: skip


# The five fields the old allowlist missed, each with a changed value
MISSED = {"center_rewards_coefficient": 0.01, "lr_scheduler_type": "constant", "weight_decay": 0.1, "lora_alpha": 8,
          "lora_dropout": 0.2}  # fmt: skip


@pytest.mark.parametrize("name", list(MISSED))
def test_rerun_with_a_changed_training_field_is_refused_naming_it(tiny_vlm_path, toy_data, tmp_path, name):
    _claim_output_dir(_config(tmp_path, tiny_vlm_path, toy_data["pairs_train"]))
    changed = _config(tmp_path, tiny_vlm_path, toy_data["pairs_train"], **{name: MISSED[name]})
    with pytest.raises(RunFolderError, match=rf"config field {name}: .* -> {MISSED[name]!r}"):
        _claim_output_dir(changed)


def test_rerun_with_only_logging_and_cadence_changed_resumes(tiny_vlm_path, toy_data, tmp_path):
    _claim_output_dir(_config(tmp_path, tiny_vlm_path, toy_data["pairs_train"]))
    _claim_output_dir(_config(tmp_path, tiny_vlm_path, toy_data["pairs_train"], logging_steps=1, save_steps=7,
                              disable_tqdm=True, per_device_eval_batch_size=2, on_bad_record="skip"))  # fmt: skip


def test_rerun_with_other_data_content_or_base_weights_is_refused(tiny_vlm_path, toy_records, tmp_path):
    import shutil

    data = write_records(toy_records[:4], tmp_path / "pairs.jsonl")
    model = shutil.copytree(tiny_vlm_path, tmp_path / "base")
    _claim_output_dir(_config(tmp_path, model, data))
    write_records(toy_records[4:], data)  # other pairs at the same path
    with pytest.raises(RunFolderError, match=r"input s1 data .*pairs.jsonl.*: other content at the same path"):
        _claim_output_dir(_config(tmp_path, model, data))
    write_records(toy_records[:4], data)
    _claim_output_dir(_config(tmp_path, model, data))  # the original content again: the same run
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(RunFolderError, match=r"input model .*base.*: other content at the same path"):
        _claim_output_dir(_config(tmp_path, model, data))


def test_margin_missing_on_the_first_record_reaches_the_loss(tiny_vlm_path, toy_records, tmp_path):
    """Read as the trainer reads (JSONL with PNGs, Parquet, datasets folder): pairs 2..4 keep their margin, and the
    loss the trainer computes from the collated batch subtracts it."""
    records = [dict(r, margin=float(i)) for i, r in enumerate(toy_records[:4])]
    del records[0]["margin"]
    model, processor = load_reward_model(tiny_vlm_path, new_head_ok=True)
    cfg = _config(tmp_path, tiny_vlm_path, tmp_path / "unused", max_length=512)
    for name in ("pairs.jsonl", "pairs.parquet", "pairs_folder"):
        ds = read_pairs(str(write_records(records, tmp_path / name)), cfg, processor, SkipLog())
        assert ds["margin"] == [None, 1.0, 2.0, 3.0], name
        batch = RewardCollator(processor, 512)(list(ds))
        margin = batch.pop("margin")  # what VLRewardTrainer.compute_loss takes out of the batch
        assert margin.tolist() == [0.0, 1.0, 2.0, 3.0]
        with torch.no_grad():
            chosen, rejected = model(**batch).rewards.chunk(2)
        loss = pairwise_reward_loss(chosen, rejected, margin).loss
        assert loss.item() == pytest.approx(-F.logsigmoid(chosen - rejected - margin).mean().item(), abs=1e-6)
