"""The vision-language reward model: a Qwen-VL backbone without its LM head, plus a scalar value head.

Score of a conversation = the value head at the last non-pad token (DESIGN.md, "Facts from the paper")::

    model, processor = load_reward_model("models/Skywork-VL-Reward-7B")  # released format: head from value_head.safetensors
    model, processor = load_reward_model("outputs/tiny-vlm", new_head_ok=True)  # base VLM: a new (seeded) head,
                                                                                # for training only
    rewards = model(**processor(text=..., images=..., return_tensors="pt", padding=True)).rewards   # (B,)

Checkpoint format (what `save_reward_model` writes and the released Skywork-VL-Reward-7B uses): the backbone in the
`Qwen2_5_VLForConditionalGeneration` layout (`model.safetensors`, legacy keys `model.layers.*` / `visual.*`; no
`lm_head`, which the reward never uses), the processor, and `value_head.safetensors` with `v_head.summary.weight`
`[1, H]` and `v_head.summary.bias` `[1]`. `config.json` also carries the transformers-4 keys `rope_scaling` /
`rope_theta` so that the model card's loading code (transformers 4.5x + TRL's value-head wrapper) reads it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, PretrainedConfig, Qwen2_5_VLModel, Qwen2VLModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import ModelOutput
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLPreTrainedModel
from transformers.utils import logging as hf_logging

from common.distributed import zero3_gathered
from common.errors import InputError, InputNotFound
from common.processor import load_processor

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
HEAD_KEYS = ("v_head.summary.weight", "v_head.summary.bias")

# model_type -> (backbone class, class name written as `architectures` in saved configs)
_BACKBONES: dict[str, tuple[type, str]] = {
    "qwen2_5_vl": (Qwen2_5_VLModel, "Qwen2_5_VLForConditionalGeneration"),
    "qwen2_vl": (Qwen2VLModel, "Qwen2VLForConditionalGeneration"),
}


class ValueHead(nn.Module):
    """dropout(p) then `Linear(hidden, 1)` with bias, as TRL's and LLaMA-Factory's `v_head` (same parameter names)."""

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(hidden_size, 1, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(hidden_states)).squeeze(-1)


@dataclass
class RewardModelOutput(ModelOutput):
    """`rewards`: (B,) float, the value at each row's last non-pad token."""

    rewards: torch.Tensor | None = None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last non-pad token; works for left and right padding alike."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


class VLRewardModel(Qwen2_5_VLPreTrainedModel):
    """Qwen2.5-VL / Qwen2-VL backbone (`.model`, no LM head) and a scalar value head (`.v_head`).

    `always_run_vision = True` (the trainer sets it) makes a batch without images still run the vision tower on a
    blank 4-patch image and add `0 * its output` to the rewards: under ZeRO-3 every rank must gather the same
    parameters in the same order, so a text-only batch on one rank and an image batch on another would hang.
    """

    always_run_vision: bool = False

    _no_split_modules = [
        "Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"
    ]  # fmt: skip

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        if config.model_type not in _BACKBONES:
            raise ValueError(f"VLRewardModel supports model types {sorted(_BACKBONES)}, got {config.model_type!r}")
        self.model = _BACKBONES[config.model_type][0](config)
        self.v_head = ValueHead(config.get_text_config().hidden_size)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """`PreTrainedModel.from_pretrained`, reading the config with `AutoConfig` (Qwen2-VL or Qwen2.5-VL)."""
        config = config if config is not None else AutoConfig.from_pretrained(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def score_hidden(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) from final hidden states (B, T, H): the value head at the last non-pad token, in float32."""
        last = last_token_index(attention_mask)
        picked = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
        return self.v_head(picked).float()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        **kwargs,
    ) -> RewardModelOutput:
        """Score a batch. Pass `mm_token_type_ids` from the processor: without it transformers 5 gives image tokens
        1D positions and the scores drift."""
        kwargs.pop("use_cache", None)  # RewardTrainer-style callers pass it; a reward forward never caches
        kwargs.pop("labels", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # The vision tower runs first, outside the backbone's forward, for image and text-only batches alike (a blank
        # image for the latter): ZeRO-3 checks that every rank enters the same modules in the same order.
        encoded, blank = None, None
        if pixel_values is not None:
            encoded = {"image": self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)}
        elif self.always_run_vision:
            blank = self._blank_image_features().sum()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=encoded,
            use_cache=False,
            **kwargs,
        )
        rewards = self.score_hidden(out.last_hidden_state, attention_mask)
        if blank is not None:
            rewards = rewards + 0.0 * blank
        return RewardModelOutput(rewards=rewards)

    def _blank_image_features(self) -> torch.Tensor:
        vision = self.config.vision_config
        merge = vision.spatial_merge_size
        grid = torch.tensor([[1, merge, merge]], device=self.device)  # the smallest grid: one merged token
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        pixels = torch.zeros(merge * merge, patch_dim, dtype=self.dtype, device=self.device)
        features = self.model.get_image_features(pixels, grid, return_dict=True).pooler_output
        return torch.cat(list(features))

    def reset_value_head(self, seed: int = 0) -> None:
        """Fresh head, deterministic in `seed`: weight ~ N(0, initializer_range), bias 0 (gathers under ZeRO-3)."""
        std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
        generator = torch.Generator().manual_seed(seed)
        with zero3_gathered(self.v_head.parameters(), modifier_rank=0):
            weight = torch.randn(self.v_head.summary.weight.shape, generator=generator) * std
            with torch.no_grad():
                self.v_head.summary.weight.copy_(weight)
                self.v_head.summary.bias.zero_()

    def load_value_head(self, state: dict[str, torch.Tensor], source: str = "value head") -> None:
        """Load `v_head.summary.{weight,bias}` (the released format) into the head, checking keys and shapes."""
        missing = [k for k in HEAD_KEYS if k not in state]
        if missing:
            raise KeyError(f"{source}: missing {missing}; found {sorted(state)}")
        with zero3_gathered(self.v_head.parameters(), modifier_rank=0), torch.no_grad():
            for key, param in zip(HEAD_KEYS, (self.v_head.summary.weight, self.v_head.summary.bias)):
                if tuple(state[key].shape) != tuple(param.shape):
                    raise ValueError(
                        f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}"
                    )
                param.copy_(state[key].to(param.dtype))


# Checkpoints keep the legacy Qwen2-VL key layout (`model.layers.*`, `visual.*`); transformers renames keys on load by
# class name, so without this the whole backbone would load silently random. The same mapping reverses on save.
register_checkpoint_conversion_mapping(
    VLRewardModel.__name__, get_checkpoint_conversion_mapping("Qwen2VLForConditionalGeneration"), overwrite=True
)


def is_reward_checkpoint(path: str | Path) -> bool:
    """A local folder with a value head file."""
    return (Path(path) / VALUE_HEAD_FILE).is_file()


def _no_value_head(path: str | Path) -> str:
    return (f"{path} has no {VALUE_HEAD_FILE}: it is not a reward model (a base VLM would be scored by a random head). "
            "Train one with recipes/train_reward.py, or point to a folder that has the file.")  # fmt: skip


def _weight_names(folder: Path) -> list[str]:
    """The tensor names of a local checkpoint's safetensors, from the index or the file header (nothing loaded)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text()).get("weight_map", {}))
    if (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return list(f.keys())
    return []


def check_value_head(path: str | None, name: str) -> None:
    """Raise `InputNotFound` when the local folder `path` (the option `name`) has no value head: neither
    `value_head.safetensors` nor `v_head.*` weights (as a Trainer checkpoint has). Read from file names and headers, no
    weights loaded: the check a job runs before claiming its folder or loading a model. A hub id or a missing path
    passes here (`common.config_checks.model_path_problems` covers the latter)."""
    if not path or not Path(path).is_dir() or is_reward_checkpoint(path):
        return
    if not any(k.startswith("v_head.") for k in _weight_names(Path(path))):
        raise InputNotFound(f"{name}: {_no_value_head(path)}")


def value_head_file(path: str | Path) -> str | None:
    """`value_head.safetensors` of a local folder, or of a hub repo (downloaded) when `path` is a hub id."""
    if Path(path).exists() or Path(path).is_absolute() or str(path).count("/") > 1:
        return str(Path(path) / VALUE_HEAD_FILE) if is_reward_checkpoint(path) else None
    from transformers.utils import cached_file

    return cached_file(str(path), VALUE_HEAD_FILE, _raise_exceptions_for_missing_entries=False)


def load_reward_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    head_seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    new_head_ok: bool = False,
) -> tuple[VLRewardModel, object]:
    """Load a reward model and its processor from a local folder.

    Args:
        path: a reward checkpoint (has `value_head.safetensors`), or, with `new_head_ok`, a base Qwen2.5-VL / Qwen2-VL
            checkpoint whose head is then freshly initialised from `head_seed`; a local folder, or a hub id where the
            hub is reachable.
        dtype / device: where the weights go.
        min_pixels / max_pixels: image area bounds for the processor (Qwen's `smart_resize`).
        new_head_ok: start a new random head when the checkpoint has none (training only: scores from it mean
            nothing, so scoring, evaluation and pair building leave it False and get an error instead).

    Returns:
        (model in eval mode, processor).

    Raises:
        FileNotFoundError: `path` has no value head (no `value_head.safetensors`) and `new_head_ok` is False.
        KeyError / ValueError: `value_head.safetensors` lacks the expected keys or shapes.
        ValueError: backbone weights are missing from the checkpoint (they would silently stay random).
    """
    path = Path(path)
    # We check the missing keys ourselves below, so transformers' load report (which lists the value head as
    # MISSING even when value_head.safetensors is about to fill it) is kept out of the user's way.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = VLRewardModel.from_pretrained(path, dtype=dtype, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing_backbone = sorted(k for k in info["missing_keys"] if not k.startswith("v_head."))
    if missing_backbone:
        raise InputError(
            f"{path}: {len(missing_backbone)} backbone weight(s) missing from the checkpoint, e.g. "
            f"{missing_backbone[:3]}; they would stay randomly initialised. Is it a Qwen2-VL / Qwen2.5-VL checkpoint?"
        )
    head_file = value_head_file(path)
    if head_file is not None:
        model.load_value_head(load_file(head_file), source=head_file)
    elif any(k.startswith("v_head.") for k in info["missing_keys"]):  # a base VLM (a Trainer checkpoint has the head)
        if not new_head_ok:
            raise InputNotFound(_no_value_head(path))
        logger.warning(f"{path} has no {VALUE_HEAD_FILE}: starting a new value head (seed {head_seed})")
        model.reset_value_head(head_seed)
    model.to(device).eval()
    return model, load_processor(str(path), min_pixels=min_pixels, max_pixels=max_pixels)


def _legacy_rope_keys(config: dict) -> dict:
    """transformers-4 `rope_scaling` / `rope_theta` beside transformers-5 `rope_parameters` (see module docstring)."""
    rope = config.get("rope_parameters") or {}
    legacy = {}
    if "mrope_section" in rope:
        legacy["rope_scaling"] = {"type": "mrope", "mrope_section": list(rope["mrope_section"])}
    if "rope_theta" in rope:
        legacy["rope_theta"] = rope["rope_theta"]
    return legacy


def save_reward_model(
    model: VLRewardModel,
    processor,
    path: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` in the Skywork-VL-Reward format (see module docstring); return `path`.

    Args:
        state_dict: full weights to write instead of `model.state_dict()` (e.g. gathered from ZeRO-3 shards).
    """
    path = Path(path)
    state_dict = model.state_dict() if state_dict is None else state_dict
    head = {k: state_dict[k].detach().contiguous().cpu() for k in HEAD_KEYS}
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("v_head.")}
    model.save_pretrained(path, state_dict=backbone)
    save_file(head, str(path / VALUE_HEAD_FILE), metadata={"format": "pt"})
    if processor is not None:
        processor.save_pretrained(path)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [_BACKBONES[config["model_type"]][1]]
    text = config.get("text_config", {})
    for block in (config, text):
        block.update(_legacy_rope_keys(text) or _legacy_rope_keys(config))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
