"""Batches of preference pairs for the reward model: chosen and rejected in ONE forward, `[chosen; rejected]`.

Text is the chat-templated conversation (prompt + response, no generation prompt), as the released model is
scored. Every batch is processed by the model's own processor, so `mm_token_type_ids` (3D image positions in
transformers 5) and the image grid always come from it. Pairs are length-checked beforehand (`reward.data`): a batch
longer than `max_length` is cut at the response tail only, never through image tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def conversation_text(processor, messages: Sequence[Mapping]) -> str:
    """The chat-templated conversation the reward is read from (assistant turn included, no generation prompt)."""
    return processor.apply_chat_template(list(messages), tokenize=False)


def image_token_id(processor) -> int:
    return processor.tokenizer.convert_tokens_to_ids(processor.image_token)


class RewardCollator:
    """Turns preference records into `[chosen rows; rejected rows]` model inputs (+ `margin` when records have one).

    Args:
        processor: the model's processor (Qwen-VL image + text).
        max_length: longest row in tokens; longer rows lose their tail (the records were checked to keep every
            image token and at least one response token, see `reward.data.filter_long_pairs`).
    """

    def __init__(self, processor, max_length: int):
        self.processor = processor
        self.max_length = max_length
        self.image_token_id = image_token_id(processor)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [
            conversation_text(self.processor, r["prompt"] + r[key]) for key in ("chosen", "rejected") for r in rows
        ]
        images = [list(r.get("images") or []) for r in rows] * 2
        kwargs = {"images": images} if any(images) else {}
        # Right padding, so that cutting columns past max_length only ever removes a row's own tail.
        batch = self.processor(text=texts, return_tensors="pt", padding=True, padding_side="right", **kwargs)
        batch = dict(batch)
        if batch["input_ids"].shape[1] > self.max_length:
            n_image_tokens = (batch["input_ids"] == self.image_token_id).sum()
            for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
                if key in batch:
                    batch[key] = batch[key][:, : self.max_length]
            if (batch["input_ids"] == self.image_token_id).sum() != n_image_tokens:
                ids = [r.get("id") for r in rows]
                raise ValueError(f"records {ids}: max_length {self.max_length} would cut image tokens; filter the "
                                 "dataset with reward.data.filter_long_pairs first")  # fmt: skip
        margins = [r.get("margin") for r in rows]
        if any(m is not None for m in margins):
            batch["margin"] = torch.tensor([0.0 if m is None else float(m) for m in margins])
        return batch
