"""Fast reward scoring: conversations in length-sorted batches, and group-aware scoring of K responses per prompt.

    scorer = RewardScorer.from_pretrained("outputs/reward-tiny")     # ours or the Skywork-VL-Reward format
    scorer.score([{"messages": prompt + [assistant], "images": [img]}, ...])   # -> [float, ...]
    scorer.score_groups([ScoringGroup(prompt, [img], ["answer A", "answer B", ...]), ...])  # -> [[float] * K, ...]

**Group-aware scoring.** K responses to one prompt share its images and its chat-templated prefix. Instead of K full
forwards (each re-running the vision tower and the prefix), `score_groups` runs the backbone once over the prefixes
of a batch of groups with a KV cache, selects each prefix's cache rows K ways, and runs only the K response suffixes
through the language model on top of it. Positions are the trap: Qwen2.5-VL gives image tokens 3D (t, h, w) rotary
positions (`get_rope_index`, fed by the processor's `mm_token_type_ids`), after which text positions resume at
`max(prefix positions) + 1`, not at the prefix length. Both forwards get explicit position ids computed that way, so
the scores equal the naive path's (fp32: max abs diff well under 1e-4, see tests/reward/test_scorer.py).

The split point is found on the tokens themselves: the prompt (with generation prompt) and each full conversation are
tokenized, and the shared prefix is their longest common token prefix, so a response whose first characters would
merge with the template's last token still tokenizes exactly as in the naive path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from common.images import load_image
from common.rope import prompt_rope_positions
from common.scoring import ScoringGroup
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
            "help": "Reward model folder (ours or the Skywork-VL-Reward format) or a base Qwen2.5-VL folder.",
            "aliases": ["--model"],
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)."})
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
            raise ValueError("model_name_or_path (--model) is required: a reward model or base Qwen2.5-VL folder")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {sorted(DTYPES)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    """Right-pad 1D tensors into (B, T)."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


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
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, processor = load_reward_model(
            config.model_name_or_path,
            dtype=DTYPES[config.dtype],
            device=device,
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
            "input_ids": _pad([e["input_ids"] for e in encs], self.pad_id),
            "attention_mask": _pad([e["attention_mask"] for e in encs], 0),
            "mm_token_type_ids": _pad([e["mm_token_type_ids"] for e in encs], 0),
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

    def _split_group(self, group: ScoringGroup, ref: str) -> dict[str, Any]:
        """The group's encoded shared prefix (images included) and each response's suffix token ids."""
        prompt_text = self.processor.apply_chat_template(group.prompt, tokenize=False, add_generation_prompt=True)
        full_texts = [
            self.processor.apply_chat_template(list(group.prompt) + [assistant_message(r)], tokenize=False)
            for r in group.responses
        ]
        # Image placeholders are special tokens, so tokenizing before or after the processor expands them to one
        # token per merged patch gives the same text tokens around them: find the split on the unexpanded ids.
        prompt_ids = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in full_texts]
        shared = len(prompt_ids)
        for ids in full_ids:
            n = 0
            while n < min(len(ids), shared) and ids[n] == prompt_ids[n]:
                n += 1
            shared = min(shared, n)
        n_image_tokens = sum(t == self.image_token_id for t in prompt_ids)
        if sum(t == self.image_token_id for t in prompt_ids[:shared]) != n_image_tokens:
            raise ValueError(f"{ref}: a response changes the prompt's tokens before its last image")
        prefix = self._encode(prompt_text, list(group.images), ref)
        cut = shared + len(prefix["input_ids"]) - len(prompt_ids)  # the expanded image tokens shift the split
        if prefix["input_ids"][cut:].tolist() != prompt_ids[shared:]:
            raise RuntimeError(f"{ref}: processor and tokenizer disagree on the prompt's text tokens")
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in prefix:
                prefix[key] = prefix[key][:cut]
        suffixes = [torch.tensor(ids[shared:]) for ids in full_ids]
        if self.config.max_length is not None:
            for k, s in enumerate(suffixes):
                if cut + len(s) > self.config.max_length:
                    raise ValueError(f"{ref}, response {k}: {cut + len(s)} tokens, more than max_length")
        return {"prefix": prefix, "suffixes": suffixes}

    @torch.no_grad()
    def _score_groups_shared(self, groups: Sequence[ScoringGroup]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in groups]
        bar = tqdm(total=sum(len(g.responses) for g in groups), desc="scoring", disable=not self.config.progress)
        for window in _windows(len(groups), _WINDOW_BATCHES * self.config.batch_size):
            split = {g: self._split_group(groups[g], f"group #{g}") for g in window}
            order = sorted(window, key=lambda g: len(split[g]["prefix"]["input_ids"]))
            # Fill each forward with about batch_size responses (whole groups).
            batches, current, n_resp = [], [], 0
            for g in order:
                current.append(g)
                n_resp += len(split[g]["suffixes"])
                if n_resp >= self.config.batch_size:
                    batches.append(current)
                    current, n_resp = [], 0
            if current:
                batches.append(current)
            for members in batches:
                rewards = self._forward_groups([split[g] for g in members])
                for g, r in zip(members, rewards):
                    out[g] = r
                bar.update(sum(len(split[g]["suffixes"]) for g in members))
        bar.close()
        return out

    def _forward_groups(self, parts: Sequence[dict[str, Any]]) -> list[list[float]]:
        """One prefix forward (with cache) for the groups, then one forward of all their suffixes on that cache."""
        prefix = self._to_model_dtype(self._collate([p["prefix"] for p in parts]))
        backbone = self.model.model
        positions, next_pos = prompt_rope_positions(backbone, prefix)
        cache = DynamicCache(config=backbone.config.get_text_config())
        backbone(**prefix, position_ids=positions, cache=cache, use_cache=True)
        # Row b of the suffix batch continues group owner[b]'s prefix.
        counts = torch.tensor([len(p["suffixes"]) for p in parts], device=self.device)
        owner = torch.repeat_interleave(torch.arange(len(parts), device=self.device), counts)
        cache.batch_select_indices(owner)
        suffixes = [s for p in parts for s in p["suffixes"]]
        suffix_ids = _pad(suffixes, self.pad_id).to(self.device)
        suffix_mask = _pad([torch.ones_like(s) for s in suffixes], 0).to(self.device)
        steps = torch.arange(suffix_ids.shape[1], device=self.device)
        suffix_pos = (next_pos[owner].unsqueeze(1) + steps).unsqueeze(0).expand(3, -1, -1)
        hidden = backbone.language_model(
            inputs_embeds=backbone.get_input_embeddings()(suffix_ids),
            attention_mask=torch.cat([prefix["attention_mask"][owner], suffix_mask], dim=1),
            position_ids=suffix_pos,
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        rewards = self.model.score_hidden(hidden, suffix_mask).tolist()
        out, start = [], 0
        for n in counts.tolist():
            out.append(rewards[start : start + n])
            start += n
        return out
