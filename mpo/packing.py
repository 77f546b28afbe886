"""One forward per preference pair: the images and the prompt are encoded once, both responses read them.

TRL's `DataCollatorForVisionPreference` stacks a batch as ``[chosen; rejected]``: every image goes through the
vision tower twice and every prompt token through the language model twice. Here each pair is one packed row::

    [ prompt[:-1] (left-padded) | prompt[-1], chosen (right-padded) | prompt[-1], rejected (right-padded) ]

with a 4D attention mask in which each branch sees the prompt and itself, never the other branch, and with
Qwen2.5-VL's 3D (mrope) positions: the prompt's from the model's own `get_rope_index`, each branch continuing from
the prompt's last position. The prompt's last token is repeated at the head of each branch (same position, same
context, so the same hidden state) because it predicts the first token of both responses. Log-probabilities come
from TRL's fused LM head (`add_fused_lm_head`) with pre-shifted labels, so no `(tokens, vocab)` logits are built.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import ProcessorMixin
from trl.data_utils import apply_chat_template, prepare_multimodal_messages
from trl.trainer.utils import add_fused_lm_head

IGNORE = -100


def base_vlm(model):
    """The Hugging Face VLM under any PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def ensure_fused_lm_head(model) -> None:
    """Give the (unwrapped) VLM TRL's fused LM head once: `model(..., fused_lm_head=True)` returns log-probs."""
    model = base_vlm(model)
    if not getattr(model, "_has_fused_lm_head", False):
        add_fused_lm_head(model)
        model._has_fused_lm_head = True


def render_pair(example: dict[str, Any], processor: ProcessorMixin) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts exactly as TRL's vision preference collator renders them."""
    example = copy.copy(example)
    example["prompt"] = prepare_multimodal_messages(example["prompt"], images=example.get("images") or [])
    example["chosen"] = prepare_multimodal_messages(example["chosen"])
    example["rejected"] = prepare_multimodal_messages(example["rejected"])
    out = apply_chat_template(example, processor)
    return out["prompt"], out["chosen"], out["rejected"]


@dataclass
class PairCollator:
    """Collate preference records into prompt (with images, processed once per pair) and the two responses.

    Truncation never cuts the prompt (where the image tokens are): the response ids are cut so that prompt plus
    response fit in `max_length` (so memory is bounded by it), and `chosen_truncated` / `rejected_truncated` (bool,
    one per pair) say which were cut. A prompt that alone leaves no room raises, naming the record.
    """

    processor: ProcessorMixin
    max_length: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [render_pair(ex, self.processor) for ex in examples]
        images = [ex.get("images") or [] for ex in examples]
        prompt = self.processor(
            images=images if any(images) else None,
            text=[t[0] for t in texts],
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=False,
        )
        tokenizer = self.processor.tokenizer
        chosen = tokenizer([t[1] for t in texts], add_special_tokens=False)["input_ids"]
        rejected = tokenizer([t[2] for t in texts], add_special_tokens=False)["input_ids"]
        room = self._room(prompt, examples)
        # Cut the ids themselves (not only the mask): the packed rows, and their L x L attention mask, are then
        # bounded by max_length whatever the response length.
        chosen_truncated = torch.tensor([r is not None and len(ids) > r for ids, r in zip(chosen, room)])
        rejected_truncated = torch.tensor([r is not None and len(ids) > r for ids, r in zip(rejected, room)])
        pad = dict(padding=True, padding_side="right", return_tensors="pt")
        chosen = tokenizer.pad({"input_ids": [ids[:r] for ids, r in zip(chosen, room)]}, **pad)
        rejected = tokenizer.pad({"input_ids": [ids[:r] for ids, r in zip(rejected, room)]}, **pad)
        out = {
            "prompt_input_ids": prompt["input_ids"],
            "prompt_attention_mask": prompt["attention_mask"],
            "chosen_input_ids": chosen["input_ids"],
            "chosen_attention_mask": chosen["attention_mask"],
            "rejected_input_ids": rejected["input_ids"],
            "rejected_attention_mask": rejected["attention_mask"],
            "chosen_truncated": chosen_truncated,
            "rejected_truncated": rejected_truncated,
        }
        if "mm_token_type_ids" in prompt:
            out["prompt_mm_token_type_ids"] = prompt["mm_token_type_ids"]
        for key in ("pixel_values", "image_grid_thw"):
            if key in prompt:
                out[key] = prompt[key]
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                out[key] = torch.tensor([ex[key] for ex in examples], dtype=torch.float32)
        return out

    def _room(self, prompt, examples: list[dict[str, Any]]) -> list[int | None]:
        """Response tokens each row may keep: `max_length` minus its prompt (None: no limit)."""
        prompt_lengths = prompt["attention_mask"].sum(1).tolist()
        if self.max_length is None:
            return [None] * len(prompt_lengths)
        for i, n in enumerate(prompt_lengths):
            if n >= self.max_length:
                n_image = int((prompt["mm_token_type_ids"][i] == 1).sum()) if "mm_token_type_ids" in prompt else 0
                raise ValueError(
                    f"record {examples[i].get('id', f'#{i}')!r}, field 'prompt': the prompt is {n} tokens "
                    f"({n_image} of them image tokens) and max_length is {self.max_length}; the prompt is never "
                    "truncated (it holds the image tokens). Raise max_length or lower max_pixels."
                )
        return [self.max_length - n for n in prompt_lengths]


@dataclass
class BlankImage:
    """A 2x2-patch blank image added (attended by nothing) to batches that have no image.

    Under ZeRO-3 parameters are gathered collectively, module by module: a rank whose batch has no image would skip
    the vision tower while the others run it, and the ranks would hang. With the blank image every rank runs the same
    modules in the same order; it reaches no loss, so it changes no number.
    """

    image_token_id: int
    patch_dim: int  # in_channels * temporal_patch_size * patch_size**2

    @classmethod
    def for_model(cls, config) -> BlankImage:
        v = config.vision_config
        return cls(config.image_token_id, v.in_channels * v.temporal_patch_size * v.patch_size**2)


@dataclass
class PackedPairs:
    """Model inputs for packed pairs plus where each response's labels sit."""

    model_inputs: dict[str, torch.Tensor]
    shift_labels: torch.Tensor  # [B, L]: the token each position predicts, IGNORE elsewhere
    chosen_positions: torch.Tensor  # [B, L] bool
    rejected_positions: torch.Tensor  # [B, L] bool


def pack_pairs(
    batch: dict[str, torch.Tensor], rope_index: Callable, dtype: torch.dtype, blank_image: BlankImage | None = None
) -> PackedPairs:
    """Build the packed rows (see module docstring) from a `PairCollator` batch.

    Args:
        batch: output of `PairCollator`.
        rope_index: the model's `get_rope_index` (Qwen2.5-VL), giving 3D positions of the prompts.
        dtype: dtype of the additive attention mask (the model's).
        blank_image: if given and the batch has no image, append one masked-out image token (see `BlankImage`).
    """
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    chosen_ids, chosen_mask = batch["chosen_input_ids"], batch["chosen_attention_mask"]
    rejected_ids, rejected_mask = batch["rejected_input_ids"], batch["rejected_attention_mask"]
    device = prompt_ids.device
    B, P = prompt_ids.shape
    C, R = chosen_ids.size(1), rejected_ids.size(1)
    last, ones = prompt_ids[:, -1:], torch.ones_like(prompt_mask[:, -1:])  # left padding: the last column is real
    input_ids = torch.cat([prompt_ids[:, :-1], last, chosen_ids, last, rejected_ids], dim=1)
    valid = torch.cat([prompt_mask[:, :-1], ones, chosen_mask, ones, rejected_mask], dim=1).bool()
    segment = torch.cat([torch.zeros(P - 1), torch.ones(1 + C), torch.full((1 + R,), 2)]).to(device)
    add_blank = blank_image is not None and "pixel_values" not in batch
    if add_blank:  # one extra column, an image token in row 0, seen by no query but itself
        column = torch.full_like(last, blank_image.image_token_id)
        input_ids = torch.cat([input_ids, column], dim=1)
        valid = torch.cat([valid, torch.zeros_like(valid[:, :1])], dim=1)
        segment = torch.cat([segment, torch.full((1,), 3, device=device)])
    L = input_ids.size(1)

    # Allowed attention: a real key, not in the future, in the prompt or in the query's own branch. Each query
    # also sees itself, so padding rows are never fully masked (softmax over nothing gives NaN).
    k_idx = torch.arange(L, device=device)
    causal = k_idx.unsqueeze(0) <= k_idx.unsqueeze(1)  # [q, k]
    same_branch = (segment.unsqueeze(0) == 0) | (segment.unsqueeze(0) == segment.unsqueeze(1))
    allowed = valid.unsqueeze(1) & (causal & same_branch).unsqueeze(0)
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=device).unsqueeze(0)
    attention_mask = torch.zeros(B, 1, L, L, dtype=dtype, device=device)
    attention_mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)

    mm_types = batch.get("prompt_mm_token_type_ids")
    if mm_types is None:
        mm_types = torch.zeros_like(prompt_ids)
    prompt_pos, _ = rope_index(
        input_ids=prompt_ids,
        mm_token_type_ids=mm_types,
        image_grid_thw=batch.get("image_grid_thw"),
        attention_mask=prompt_mask,
    )
    start = prompt_pos[:, :, -1:]
    branches = [start + torch.arange(1 + C, device=device), start + torch.arange(1 + R, device=device)]
    position_ids = torch.cat([prompt_pos[:, :, :-1], *branches] + ([start] if add_blank else []), dim=2)

    shift_labels = torch.full((B, L), IGNORE, dtype=prompt_ids.dtype, device=device)
    shift_labels[:, P - 1 : P - 1 + C] = chosen_ids.masked_fill(chosen_mask == 0, IGNORE)
    shift_labels[:, P + C : P + C + R] = rejected_ids.masked_fill(rejected_mask == 0, IGNORE)
    chosen_positions = torch.zeros(B, L, dtype=torch.bool, device=device)
    chosen_positions[:, P - 1 : P - 1 + C] = chosen_mask.bool()
    rejected_positions = torch.zeros(B, L, dtype=torch.bool, device=device)
    rejected_positions[:, P + C : P + C + R] = rejected_mask.bool()

    model_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    for key in ("pixel_values", "image_grid_thw"):
        if key in batch:
            model_inputs[key] = batch[key]
    if add_blank:
        model_inputs["input_ids"][1:, -1] = prompt_ids[1:, 0]  # rows after the first: any token, it is masked
        model_inputs["pixel_values"] = torch.zeros(4, blank_image.patch_dim, dtype=dtype, device=device)
        model_inputs["image_grid_thw"] = torch.tensor([[1, 2, 2]], device=device)
    return PackedPairs(model_inputs, shift_labels, chosen_positions, rejected_positions)


@dataclass
class PairLogps:
    """Per-pair sums of response log-probabilities and response lengths."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor


def pair_logps(
    model,
    batch: dict[str, torch.Tensor],
    rope_index: Callable,
    dtype: torch.dtype,
    blank_image: BlankImage | None = None,
) -> PairLogps:
    """Log-probabilities of both responses of each pair in one packed forward.

    `model` must carry TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`); it may be wrapped (DeepSpeed,
    PEFT). Arguments as in `pack_pairs`.
    """
    packed = pack_pairs(batch, rope_index, dtype, blank_image)
    out = model(**packed.model_inputs, shift_labels=packed.shift_labels, fused_lm_head=True, use_cache=False)
    log_probs = out.log_probs[:, -packed.shift_labels.size(1) :]
    return PairLogps(
        chosen=(log_probs * packed.chosen_positions).sum(1),
        rejected=(log_probs * packed.rejected_positions).sum(1),
        chosen_lengths=packed.chosen_positions.sum(1),
        rejected_lengths=packed.rejected_positions.sum(1),
    )
