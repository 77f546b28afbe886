"""The parts of a Qwen2.5-VL that both trainers freeze, and the modules the LoRA expression adapts."""

from __future__ import annotations

import re

import pytest
from torch import nn
from transformers import AutoModelForImageTextToText

from common.vl_training import VLTrainingFields, lora_target_regex, model_part
from mpo.config import MPOConfig
from reward.config import RewardConfig
from reward.model import load_reward_model

TARGETS = VLTrainingFields().lora_target_modules


def _lm_linears(model: nn.Module) -> set[str]:
    """What adapters should go on: the LM decoder layers' linear layers named in TARGETS, nothing else."""
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and model_part(name + ".weight") == "language_model"
        and ".layers." in name
        and name.rsplit(".", 1)[-1] in TARGETS
    }


@pytest.mark.parametrize("kind", ["policy", "reward"])
def test_lora_expression_matches_exactly_the_lm_linear_layers(tiny_vlm_path, kind):
    if kind == "policy":
        model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)
    else:
        model, _ = load_reward_model(tiny_vlm_path, new_head_ok=True)
    expr = lora_target_regex(TARGETS)
    matched = {name for name, _ in model.named_modules() if re.fullmatch(expr, name)}  # how peft matches a string
    expected = _lm_linears(model)
    n_layers = model.config.get_text_config().num_hidden_layers
    assert len(expected) == n_layers * len(TARGETS)
    assert matched == expected
    # the vision blocks have gate/up/down_proj too: none of them may match
    assert any(name.startswith("model.visual.") and name.endswith("gate_proj") for name, _ in model.named_modules())


def test_peft_puts_adapters_on_those_modules_only(tiny_vlm_path):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)
    expected = {f"base_model.model.{name}" for name in _lm_linears(model)}
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=lora_target_regex(TARGETS)))
    adapted = {name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == expected


def test_both_configs_take_the_shared_fields(tmp_path):
    shared = {f for f in VLTrainingFields.__dataclass_fields__}
    assert shared <= set(RewardConfig.__dataclass_fields__) and shared <= set(MPOConfig.__dataclass_fields__)
    reward = RewardConfig(output_dir=str(tmp_path), use_lora=True, lora_r=4, on_bad_record="skip")
    cpu = {"use_cpu": True, "bf16": False, "report_to": "none"}
    mpo = MPOConfig(output_dir=str(tmp_path), use_lora=True, lora_r=4, on_bad_record="skip", **cpu)
    assert (reward.lora_r, reward.on_bad_record, mpo.lora_r, mpo.on_bad_record) == (4, "skip", 4, "skip")
    assert not reward.overwrite_output_dir and not mpo.overwrite_output_dir
    # each job keeps its own default where they differ: the reward model freezes the ViT as the paper does
    assert RewardConfig(output_dir=str(tmp_path)).freeze_vision_tower is True
    assert MPOConfig(output_dir=str(tmp_path), **cpu).freeze_vision_tower is False
