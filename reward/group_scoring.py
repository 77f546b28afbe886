"""Group-aware scoring: K responses to one prompt scored on one shared encoding of its images and prompt.

K responses to one prompt share its images and its chat-templated prefix. Instead of K full forwards (each re-running
the vision tower and the prefix), `RewardScorer.score_groups` runs the backbone once over the prefixes of a batch of
groups with a KV cache, selects each prefix's cache rows K ways, and runs only the K response suffixes through the
language model on top of it (`forward_groups`). Positions are the trap: Qwen2.5-VL gives image tokens 3D (t, h, w)
rotary positions (`get_rope_index`, fed by the processor's `mm_token_type_ids`), after which text positions resume at
`max(prefix positions) + 1`, not at the prefix length. Both forwards get explicit position ids computed that way, so
the scores equal the naive path's (fp32: max abs diff well under 1e-4, see tests/reward/test_scorer.py).

The split point is found on the tokens themselves (`split_group`): the prompt (with generation prompt) and each full
conversation are tokenized, and the shared prefix is their longest common token prefix, so a response whose first
characters would merge with the template's last token still tokenizes exactly as in the naive path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from common.rope import prompt_rope_positions
from common.scoring import ScoringGroup


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def pad_right(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    """Right-pad 1D tensors into (B, T)."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def split_group(
    processor,
    group: ScoringGroup,
    encode: Callable[[str, list, str], dict[str, torch.Tensor]],
    max_length: int | None,
    ref: str,
) -> dict[str, Any]:
    """The group's encoded shared prefix (images included, by `encode(text, images, ref)`) and each response's
    suffix token ids: `{"prefix": {...}, "suffixes": [ids, ...]}`."""
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    prompt_text = processor.apply_chat_template(group.prompt, tokenize=False, add_generation_prompt=True)
    full_texts = [
        processor.apply_chat_template(list(group.prompt) + [assistant_message(r)], tokenize=False)
        for r in group.responses
    ]
    # Image placeholders are special tokens, so tokenizing before or after the processor expands them to one
    # token per merged patch gives the same text tokens around them: find the split on the unexpanded ids.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in full_texts]
    shared = len(prompt_ids)
    for ids in full_ids:
        n = 0
        while n < min(len(ids), shared) and ids[n] == prompt_ids[n]:
            n += 1
        shared = min(shared, n)
    n_image_tokens = sum(t == image_token_id for t in prompt_ids)
    if sum(t == image_token_id for t in prompt_ids[:shared]) != n_image_tokens:
        raise ValueError(f"{ref}: a response changes the prompt's tokens before its last image")
    prefix = encode(prompt_text, list(group.images), ref)
    cut = shared + len(prefix["input_ids"]) - len(prompt_ids)  # the expanded image tokens shift the split
    if prefix["input_ids"][cut:].tolist() != prompt_ids[shared:]:
        raise RuntimeError(f"{ref}: processor and tokenizer disagree on the prompt's text tokens")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if key in prefix:
            prefix[key] = prefix[key][:cut]
    suffixes = [torch.tensor(ids[shared:]) for ids in full_ids]
    if max_length is not None:
        for k, s in enumerate(suffixes):
            if cut + len(s) > max_length:
                raise ValueError(f"{ref}, response {k}: {cut + len(s)} tokens, more than max_length")
    return {"prefix": prefix, "suffixes": suffixes}


def pack_groups(order: Sequence[int], sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Groups (in `order`) into forwards of about `batch_size` responses each, whole groups only."""
    batches, current, n_resp = [], [], 0
    for g in order:
        current.append(g)
        n_resp += sizes[g]
        if n_resp >= batch_size:
            batches.append(current)
            current, n_resp = [], 0
    if current:
        batches.append(current)
    return batches


def forward_groups(model, prefix: dict[str, torch.Tensor], suffixes: Sequence[Sequence[torch.Tensor]], pad_id: int):
    """One prefix forward (with cache) for the groups' collated `prefix` batch, then one forward of all their
    `suffixes` (per group) on that cache; `[[reward of each suffix] for each group]`."""
    device = prefix["input_ids"].device
    backbone = model.model
    positions, next_pos = prompt_rope_positions(backbone, prefix)
    cache = DynamicCache(config=backbone.config.get_text_config())
    backbone(**prefix, position_ids=positions, cache=cache, use_cache=True)
    # Row b of the suffix batch continues group owner[b]'s prefix.
    counts = torch.tensor([len(s) for s in suffixes], device=device)
    owner = torch.repeat_interleave(torch.arange(len(suffixes), device=device), counts)
    cache.batch_select_indices(owner)
    flat = [s for group in suffixes for s in group]
    suffix_ids = pad_right(flat, pad_id).to(device)
    suffix_mask = pad_right([torch.ones_like(s) for s in flat], 0).to(device)
    steps = torch.arange(suffix_ids.shape[1], device=device)
    suffix_pos = (next_pos[owner].unsqueeze(1) + steps).unsqueeze(0).expand(3, -1, -1)
    hidden = backbone.language_model(
        inputs_embeds=backbone.get_input_embeddings()(suffix_ids),
        attention_mask=torch.cat([prefix["attention_mask"][owner], suffix_mask], dim=1),
        position_ids=suffix_pos,
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    rewards = model.score_hidden(hidden, suffix_mask).tolist()
    out, start = [], 0
    for n in counts.tolist():
        out.append(rewards[start : start + n])
        start += n
    return out
