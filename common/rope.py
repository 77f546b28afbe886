"""Qwen-VL multimodal rotary positions for code that runs a prompt through the model itself (prefix caches).

transformers 5 computes 3D image positions only when the forward gets `mm_token_type_ids`; code that feeds a prefix
and then continues from a cache must pass positions explicitly, and text after the prefix resumes at the highest
prefix position + 1 (the row's length plus the `rope_deltas` that images introduce).
"""

from __future__ import annotations

import torch


def prompt_rope_positions(backbone, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, B, T) rotary positions of a right-padded (or unpadded) prompt batch and each row's next position (B,).

    Args:
        backbone: the Qwen2-VL / Qwen2.5-VL backbone (`Qwen2_5_VLModel`), whose `get_rope_index` reads the config only.
        batch: processor output with `input_ids`, `attention_mask`, and `image_grid_thw` + `mm_token_type_ids`
            when there are images.
    """
    mask = batch["attention_mask"]
    if batch.get("image_grid_thw") is None:
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)
        return positions, mask.sum(-1)
    positions, deltas = backbone.get_rope_index(
        batch["input_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=mask,
        mm_token_type_ids=batch["mm_token_type_ids"],
    )
    return positions, mask.sum(-1) + deltas.view(-1).to(mask.device)
