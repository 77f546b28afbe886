"""MPOConfig validation, the shipped YAMLs, and MPOTrainer in-process: loss on a fixed batch = the pure function."""

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from common.cli import parse_configs
from common.io import read_records
from common.processor import load_processor
from mpo.config import MPOConfig
from mpo.loss import mpo_loss
from mpo.packing import PairCollator, pair_logps
from mpo.ref_logps import attach_ref_logps
from mpo.trainer import MPOTrainer

REPO = Path(__file__).resolve().parents[2]


def test_every_shipped_yaml_parses(tiny_vlm_path, toy_data):
    configs = sorted((REPO / "recipes" / "configs").glob("mpo_*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        assert path.read_text().startswith("# deepspeed ")  # the launch command comes first
        (cfg,) = parse_configs([MPOConfig], ["--config", str(path), "--model_name_or_path", str(tiny_vlm_path),
                                             "--train_data", str(toy_data["pairs_train"]),
                                             "--output_dir", "/tmp/mpo-yaml", "--use_cpu", "true", "--bf16", "false",
                                             "--report_to", "none"])  # fmt: skip
        cfg.validate()
        assert cfg.loss_type == ["sigmoid", "bco_pair", "sft"] and cfg.loss_weights == [0.8, 0.2, 1.0]
        assert cfg.beta == 0.1


def test_validate_lists_every_problem():
    cfg = MPOConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, loss_type=["sigmoid"], loss_weights=[1.0],
                    use_weighting=True, on_bad_record="ignore")  # fmt: skip
    with pytest.raises(ValueError) as e:
        cfg.validate()
    for field in ("model_name_or_path", "train_data", "loss_type", "loss_weights", "use_weighting", "on_bad_record"):
        assert field in str(e.value)


def test_trainer_loss_equals_pure_function_and_delta_folds_in(tiny_vlm_path, toy_data, tmp_path):
    processor = load_processor(str(tiny_vlm_path))
    ds = read_records(toy_data["pairs_train"])
    ds, _ = attach_ref_logps(ds, toy_data["pairs_train"], str(tiny_vlm_path), processor, None, torch.float32,
                             tmp_path / "cache")  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)
    with torch.no_grad():  # move the policy off the reference so every term is non-trivial
        model.model.language_model.layers[0].mlp.down_proj.weight.mul_(1.5)
    cfg = MPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none",
                    gradient_checkpointing=False, model_name_or_path=str(tiny_vlm_path), train_data="x")  # fmt: skip
    trainer = MPOTrainer(model, cfg, ds, processor)
    trainer.model.train()
    trainer.delta.value, trainer.delta.steps = 0.25, 3  # as if three steps had run
    batch = PairCollator(processor)([ds[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model, batch)

    with torch.no_grad():
        logps = pair_logps(model, batch, model.model.get_rope_index, torch.float32)
    rewards = 0.1 * torch.cat([logps.chosen - batch["ref_chosen_logps"], logps.rejected - batch["ref_rejected_logps"]])
    delta = 0.25 + (rewards.mean().item() - 0.25) / 4  # running mean of per-step means, this step folded in first
    assert trainer.delta.steps == 4 and trainer.delta.value == pytest.approx(delta, rel=1e-5)
    expected = mpo_loss(logps.chosen, logps.rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                        logps.chosen_lengths, delta=delta)  # fmt: skip
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    logged = trainer._metrics["train"]
    assert logged["loss/sft"][0] == pytest.approx(expected.sft.item(), rel=1e-5)
    assert logged["bco_delta"][0] == pytest.approx(delta, rel=1e-5)
    assert set(logged) >= {"loss/dpo", "loss/bco", "rewards/accuracies", "rewards/margins", "logps/chosen"}
    assert math.isfinite(loss.item()) and loss.requires_grad


def test_trainer_refuses_a_dataset_without_reference_logps(tiny_vlm_path, toy_data, tmp_path):
    processor = load_processor(str(tiny_vlm_path))
    cfg = MPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)
    with pytest.raises(ValueError, match="attach_ref_logps"):
        MPOTrainer(model, cfg, read_records(toy_data["pairs_train"]), processor)
