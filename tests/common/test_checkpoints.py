"""`common.checkpoints`: strict weight loading through the checkpoint key mapping (DeepSpeed + LoRA keys too),
completeness checks, node-local completion markers, newest and rotation by step number."""

import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from common.checkpoints import (
    COMPLETE_FILE,
    CheckpointWriteError,
    CompleteCheckpointsMixin,
    check_deepspeed_module_keys,
    checkpoint_key_names,
    incomplete_reason,
    last_complete_checkpoint,
    load_weights_strict,
    mark_complete,
)
from reward.model import load_reward_model


@pytest.fixture(scope="module")
def policy(tiny_vlm_path):
    return AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)


def test_on_disk_names_are_the_legacy_layout(policy):
    names = checkpoint_key_names(policy)
    assert names["model.language_model.layers.0.mlp.up_proj.weight"] == "model.layers.0.mlp.up_proj.weight"
    assert names["model.visual.blocks.0.attn.qkv.weight"] == "visual.blocks.0.attn.qkv.weight"


@pytest.mark.parametrize("kind", ["policy", "reward"])
def test_save_then_load_strict_round_trips_every_weight(kind, tiny_vlm_path, tmp_path):
    load = (
        (lambda p: load_reward_model(p, new_head_ok=True)[0])
        if kind == "reward"
        else AutoModelForImageTextToText.from_pretrained
    )
    trained = load(tiny_vlm_path)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    trained.save_pretrained(tmp_path)  # the legacy key layout on disk
    assert "model.layers.0.mlp.up_proj.weight" in load_file(tmp_path / "model.safetensors")
    fresh = load(tiny_vlm_path)
    load_weights_strict(fresh, tmp_path)
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_missing_or_unexpected_key_is_an_error_naming_it(policy, tmp_path):
    policy.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    weights["visual.extra.weight"] = torch.zeros(1)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(KeyError, match=r"1 missing key\(s\) \['model.language_model.layers.1.mlp.down_proj.weight'\]"
                       r".*1 unexpected key\(s\) \['visual.extra.weight'\]"):  # fmt: skip
        load_weights_strict(policy, tmp_path)


def test_only_complete_checkpoints_are_taken(tmp_path, capsys):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"x" * step)
    mark_complete(tmp_path / "checkpoint-2")
    mark_complete(tmp_path / "checkpoint-4")
    assert json.loads((tmp_path / "checkpoint-4" / COMPLETE_FILE).read_text()) == {"files": {"optimizer.pt": 4}}
    (tmp_path / "checkpoint-4" / "optimizer.pt").write_bytes(b"x")  # cut short after marking: caught by its size
    assert incomplete_reason(tmp_path / "checkpoint-4") == "optimizer.pt has 1 bytes, 4 were written"
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    log = capsys.readouterr().out
    assert f"skipping incomplete {tmp_path / 'checkpoint-6'} (no {COMPLETE_FILE}" in log
    assert "checkpoint-4 (optimizer.pt has 1 bytes" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # the incomplete ones are removed
    assert last_complete_checkpoint(tmp_path / "nothing-here") is None


class _Base:
    def train(self, resume_from_checkpoint=None):
        return resume_from_checkpoint  # what `Trainer.train` would resume from


class _Trainer(CompleteCheckpointsMixin, _Base):
    def __init__(self, output_dir):
        self.args = SimpleNamespace(output_dir=str(output_dir))


def test_train_resolves_what_to_resume_from(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    mark_complete(tmp_path / "checkpoint-2")
    trainer = _Trainer(tmp_path)
    assert trainer.train("false") is None and trainer.resumed_from is None
    with pytest.raises(ValueError, match=rf"cannot resume from {tmp_path / 'checkpoint-4'}: no {COMPLETE_FILE}"):
        trainer.train(str(tmp_path / "checkpoint-4"))  # an explicit path must be complete
    assert trainer.train(True) == str(tmp_path / "checkpoint-2") == trainer.resumed_from
    assert _Trainer(tmp_path / "new").train("true") is None  # nothing saved yet: from step 0


class _Saving:
    def _save_checkpoint(
        self, model, trial
    ):  # writes new weights, then dies before the optimizer (a kill, a full disk)
        folder = self._get_output_dir(trial) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"new")
        raise OSError("No space left on device")


class _SavingTrainer(CompleteCheckpointsMixin, _Saving):
    def __init__(self, output_dir, step):
        self.args = SimpleNamespace(output_dir=str(output_dir), save_total_limit=None, should_save=True)
        self.state = SimpleNamespace(global_step=step, best_model_checkpoint=None)
        self.accelerator = SimpleNamespace(wait_for_everyone=lambda: None)

    def _get_output_dir(self, trial):
        return Path(self.args.output_dir)


def test_rewriting_a_checkpoint_unmarks_it_first(tmp_path):
    """A run that writes checkpoint-N again (a rerun from an older checkpoint) and dies half way must not leave the old
    marker vouching for the mix of new and old files (same-shape tensors have the same sizes)."""
    old = tmp_path / "checkpoint-4"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"old")
    (old / "optimizer.pt").write_bytes(b"old optimizer")
    mark_complete(old)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        _SavingTrainer(tmp_path, step=4)._save_checkpoint(None, None)
    assert incomplete_reason(old) == f"no {COMPLETE_FILE}: the run stopped while writing it"
    assert last_complete_checkpoint(tmp_path) is None


class _SavingAll:
    def _save_checkpoint(self, model, trial):  # writes the whole checkpoint
        folder = self._get_output_dir(trial) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(exist_ok=True)
        (folder / "optimizer.pt").write_bytes(b"x" * self.state.global_step)


class _NodeTrainer(CompleteCheckpointsMixin, _SavingAll):
    """A node's local rank 0 (not global rank 0 unless `should_save`), saving with `save_total_limit`."""

    def __init__(self, output_dir, step, limit=None, should_save=False):
        self.args = SimpleNamespace(output_dir=str(output_dir), save_total_limit=limit, should_save=should_save,
                                    local_process_index=0)  # fmt: skip
        self.state = SimpleNamespace(global_step=step, best_model_checkpoint=None)
        self.accelerator = SimpleNamespace(wait_for_everyone=lambda: None)

    def _get_output_dir(self, trial):
        return Path(self.args.output_dir)


def test_each_nodes_local_rank_0_marks_what_it_holds(tmp_path):
    """On a node without a shared filesystem, its local rank 0 (not the global rank 0) vouches for its files."""
    _NodeTrainer(tmp_path, step=2, should_save=False)._save_checkpoint(None, None)
    assert incomplete_reason(tmp_path / "checkpoint-2") is None
    assert json.loads((tmp_path / "checkpoint-2" / COMPLETE_FILE).read_text()) == {"files": {"optimizer.pt": 2}}


def test_newest_and_rotation_go_by_step_number_not_mtime(tmp_path):
    for step in (2, 4, 6):
        _NodeTrainer(tmp_path, step, should_save=True)._save_checkpoint(None, None)
    future = time.time() + 3600
    os.utime(tmp_path / "checkpoint-2", (future, future))  # an old checkpoint touched (copied, rewritten, restored)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    _NodeTrainer(tmp_path, step=8, limit=2, should_save=True)._save_checkpoint(None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-8"]


@pytest.fixture()
def lora_policy(tiny_vlm_path):
    from peft import get_peft_model

    from common.vl_training import lora_config
    from mpo.config import MPOConfig

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)
    return get_peft_model(model, lora_config(MPOConfig(output_dir="o", use_cpu=True, use_lora=True, lora_r=2)))


def _deepspeed_checkpoint(folder: Path, module: dict) -> Path:
    """The files `save_checkpoint` writes that matter here: `latest` and the tag's rank-0 model states."""
    (folder / "global_step2").mkdir(parents=True)
    (folder / "latest").write_text("global_step2")
    torch.save({"module": module}, folder / "global_step2" / "mp_rank_00_model_states.pt")
    return folder


def test_a_deepspeed_lora_checkpoint_must_hold_exactly_the_trainable_keys(lora_policy, tmp_path):
    """DeepSpeed saves a PEFT model without its frozen weights and the Trainer loads it with load_module_strict=False;
    the keys are checked first: a missing or extra key is refused by name, the right ones pass."""
    frozen = {n for n, p in lora_policy.named_parameters() if not p.requires_grad}
    kept = {k: v for k, v in lora_policy.state_dict().items() if k not in frozen}
    assert any(".lora_A." in k for k in kept) and len(kept) < len(lora_policy.state_dict())
    check_deepspeed_module_keys(lora_policy, _deepspeed_checkpoint(tmp_path / "good", kept))
    lora_key = next(k for k in kept if ".lora_B." in k)
    bad = {**{k: v for k, v in kept.items() if k != lora_key}, "base_model.model.extra.weight": torch.zeros(1)}
    trainer = _Trainer(tmp_path / "bad")
    trainer.is_deepspeed_enabled, trainer.model = True, lora_policy
    _deepspeed_checkpoint(tmp_path / "bad" / "checkpoint-2", bad)
    mark_complete(tmp_path / "bad" / "checkpoint-2")
    with pytest.raises(KeyError, match=rf"1 missing key\(s\) \['{re.escape(lora_key)}'\].*1 unexpected key\(s\) "
                                       r"\['base_model.model.extra.weight'\]"):  # fmt: skip
        trainer.train(True)
