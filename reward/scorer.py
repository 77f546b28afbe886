"""Fast reward scoring: conversations in length-sorted batches, and group-aware scoring of K responses per prompt.

    scorer = RewardScorer.from_pretrained("outputs/reward-tiny")     # ours or the Skywork-VL-Reward format
    scorer.score([{"messages": prompt + [assistant], "images": [img]}, ...])   # -> [float, ...]
    scorer.score_groups([ScoringGroup(prompt, [img], ["answer A", "answer B", ...]), ...])  # -> [[float] * K, ...]

`score_groups` encodes each group's images and prompt once and scores its K responses on that shared prefix (KV
cache); how, and why the scores equal K full forwards', is `reward.group_scoring`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from common.distributed import resolve_device
from common.errors import ConfigError
from common.images import load_image
from common.scoring import ScoringGroup
from reward.group_scoring import assistant_message, forward_groups, pack_groups, pad_right, split_group
from reward.model import load_reward_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Inputs are encoded (pixels included) and length-sorted this many batches at a time: a full-resolution image is
# ~25 MB of pixel patches, so the window bounds host memory while still grouping similar lengths.
_WINDOW_BATCHES = 8


@dataclass
class ScorerConfig:
    """How to load and run a `RewardScorer`."""

    model_name_or_path: str = field(
        default=None,
        metadata={
            "help": "Reward model folder (ours or the Skywork-VL-Reward format, with value_head.safetensors).",
            "aliases": ["--model"],
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    device: str = field(
        default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (this rank's GPU when there is one)."}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Conversations per forward (group-aware: responses per suffix forward)."}
    )
    group_aware: bool = field(
        default=True, metadata={"help": "Encode each group's images and prompt once (KV cache) instead of K times."}
    )
    min_pixels: int | None = field(default=None, metadata={"help": "Lower bound on image area (processor resize)."})
    max_pixels: int | None = field(default=None, metadata={"help": "Upper bound on image area (processor resize)."})
    max_length: int | None = field(
        default=None, metadata={"help": "Longest conversation in tokens; a longer one raises an error naming it."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ConfigError("model_name_or_path (--model) is required: a reward model folder")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: choose one of {sorted(DTYPES)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be >= 1")


def _windows(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


class RewardScorer:
    """Scores conversations with a reward model, without gradients, on CPU or GPU.

    Args:
        model: a `reward.model.VLRewardModel` (eval mode).
        processor: its processor (`common.processor.load_processor`).
        config: batch size, group-aware switch, length bound, progress bar.
    """

    def __init__(self, model, processor, config: ScorerConfig):
        self.model, self.processor, self.config = model, processor, config
        self.tokenizer = processor.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)

    @classmethod
    def from_pretrained(cls, path: str, **options) -> RewardScorer:
        """Load a reward model folder; `options` are `ScorerConfig` fields."""
        config = ScorerConfig(model_name_or_path=str(path), **options)
        model, processor = load_reward_model(
            config.model_name_or_path,
            dtype=DTYPES[config.dtype],
            device=resolve_device(config.device),
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
        )
        return cls(model, processor, config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------------ encoding
    def _encode(self, text: str, images: list, ref: str) -> dict[str, torch.Tensor]:
        """Processor output for one text (batch dim dropped for the token tensors)."""
        pil = [load_image(im) for im in images] or None
        enc = self.processor(text=[text], images=pil, return_tensors="pt")
        length = enc["input_ids"].shape[1]
        if self.config.max_length is not None and length > self.config.max_length:
            raise ValueError(f"{ref}: {length} tokens, more than max_length={self.config.max_length}")
        out = {k: enc[k][0] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in enc}
        if "mm_token_type_ids" not in out:  # processors saved before transformers 5 do not return it
            out["mm_token_type_ids"] = (out["input_ids"] == self.image_token_id).int()
        if "pixel_values" in enc:
            out["pixel_values"], out["image_grid_thw"] = enc["pixel_values"], enc["image_grid_thw"]
        return out

    def _collate(self, encs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-padded batch; pixel rows and grids concatenated in order."""
        batch = {
            "input_ids": pad_right([e["input_ids"] for e in encs], self.pad_id),
            "attention_mask": pad_right([e["attention_mask"] for e in encs], 0),
            "mm_token_type_ids": pad_right([e["mm_token_type_ids"] for e in encs], 0),
        }
        with_images = [e for e in encs if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
        return {k: v.to(self.device) for k, v in batch.items()}

    def _to_model_dtype(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        return batch

    # ------------------------------------------------------------------------------------------------ naive path
    @torch.no_grad()
    def score(self, conversations: Sequence[Mapping[str, Any]]) -> list[float]:
        """Score whole conversations, one full forward each, in batches of similar length.

        Args:
            conversations: dicts with `messages` (the full chat, the assistant's response last) and `images`.

        Returns:
            one float per conversation, in input order.
        """
        scores: list[float] = [math.nan] * len(conversations)
        bar = tqdm(total=len(conversations), desc="scoring", disable=not self.config.progress, unit="conv")
        for window in _windows(len(conversations), _WINDOW_BATCHES * self.config.batch_size):
            encs = {}
            for i in window:
                conv = conversations[i]
                text = self.processor.apply_chat_template(conv["messages"], tokenize=False)
                encs[i] = self._encode(text, list(conv.get("images") or []), f"conversation #{i}")
            order = sorted(window, key=lambda i: len(encs[i]["input_ids"]))
            for chunk in _windows(len(order), self.config.batch_size):
                idx = [order[j] for j in chunk]
                batch = self._to_model_dtype(self._collate([encs[i] for i in idx]))
                rewards = self.model(**batch).rewards.float().tolist()
                for i, r in zip(idx, rewards):
                    scores[i] = r
                bar.update(len(idx))
        bar.close()
        return scores

    # ------------------------------------------------------------------------------------------------ groups
    def score_groups(self, groups: Sequence[ScoringGroup]) -> list[list[float]]:
        """Score K responses per group; `[[score of responses[k] for k] for each group]`.

        With `group_aware` (default) each group's images and prompt are encoded once; otherwise every response is a
        full conversation scored by `score`. Both give the same numbers (fp32).
        """
        for g, group in enumerate(groups):
            if not group.responses:
                raise ValueError(f"group #{g}: no responses to score")
        if not self.config.group_aware:
            flat = [
                {"messages": list(group.prompt) + [assistant_message(r)], "images": group.images}
                for group in groups
                for r in group.responses
            ]
            scores, out = self.score(flat), []
            for group in groups:
                out.append(scores[: len(group.responses)])
                scores = scores[len(group.responses) :]
            return out
        return self._score_groups_shared(groups)

    @torch.no_grad()
    def _score_groups_shared(self, groups: Sequence[ScoringGroup]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in groups]
        bar = tqdm(total=sum(len(g.responses) for g in groups), desc="scoring", disable=not self.config.progress)
        for window in _windows(len(groups), _WINDOW_BATCHES * self.config.batch_size):
            split = {
                g: split_group(self.processor, groups[g], self._encode, self.config.max_length, f"group #{g}")
                for g in window
            }
            order = sorted(window, key=lambda g: len(split[g]["prefix"]["input_ids"]))
            sizes = {g: len(split[g]["suffixes"]) for g in window}
            for members in pack_groups(order, sizes, self.config.batch_size):
                prefix = self._to_model_dtype(self._collate([split[g]["prefix"] for g in members]))
                rewards = forward_groups(self.model, prefix, [split[g]["suffixes"] for g in members], self.pad_id)
                for g, r in zip(members, rewards):
                    out[g] = r
                bar.update(sum(sizes[g] for g in members))
        bar.close()
        return out
