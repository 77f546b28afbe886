"""What reward-model and MPO training share about a Qwen2.5-VL: its parts, freezing them, LoRA targets, and the
config fields both jobs have (`VLTrainingFields`, a mixin of `RewardConfig` and `MPOConfig`).

Parts, by parameter name (peft's `base_model.model.` prefix ignored): `vision_tower` (`model.visual.*` but the
merger), `merger` (`model.visual.merger.*`), `head` (the reward model's `v_head.*`, never frozen here) and
`language_model` (everything else: decoder, embeddings, the policy's `lm_head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

# peft matches a string `target_modules` with re.fullmatch against each module name. Adapters go on the language
# model only: the vision blocks also have modules named qkv/proj/gate_proj/up_proj/down_proj.
LORA_TARGETS = r".*language_model\..*\.({})"


def lora_target_regex(modules: Sequence[str]) -> str:
    """The `LoraConfig.target_modules` expression for these module names inside the language model."""
    return LORA_TARGETS.format("|".join(modules))


def model_part(name: str) -> str:
    """`vision_tower`, `merger`, `head` or `language_model`: the part a parameter name belongs to."""
    name = name.removeprefix("base_model.model.")
    if name.startswith("v_head."):
        return "head"
    if name.startswith("model.visual.merger."):
        return "merger"
    if name.startswith("model.visual."):
        return "vision_tower"
    return "language_model"


def freeze_parts(model: nn.Module, vision_tower: bool, merger: bool, language_model: bool) -> None:
    """Set `requires_grad` by part: the chosen parts frozen, the others (and always a reward head) trainable."""
    frozen = {"vision_tower": vision_tower, "merger": merger, "language_model": language_model, "head": False}
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen[model_part(name)])


def lora_config(cfg: VLTrainingFields, **options):
    """peft's `LoraConfig` from the shared LoRA fields (rank, alpha, dropout, target modules) plus job `options`."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_regex(cfg.lora_target_modules),
        **options,
    )


@dataclass
class VLTrainingFields:
    """Config fields of both training jobs: image size, bad records, the run folder, what trains (freezing, LoRA)."""

    min_pixels: int | None = field(default=None, metadata={"help": "Lower bound on image area (None: processor's)."})
    max_pixels: int | None = field(
        default=None, metadata={"help": "Upper bound on image area (None: processor's). Memory grows with it."}
    )
    on_bad_record: Literal["raise", "skip"] = field(
        default="raise",
        metadata={"help": "A malformed record (missing field, empty response, unreadable image): raise, or skip it "
                  "and count it in the run summary."},
    )  # fmt: skip
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete an output_dir holding a run of other settings or inputs, start over."}
    )
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Freeze the ViT blocks and patch embedding."})
    freeze_merger: bool = field(default=False, metadata={"help": "Freeze the vision-to-LM projector (merger)."})
    freeze_language_model: bool = field(
        default=False, metadata={"help": "Freeze the LM (decoder, embeddings, LM head; a reward head still trains)."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the LM instead of full weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (higher: more capacity and memory)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "LM linear layers that get adapters (the vision tower never does)."},
    )
