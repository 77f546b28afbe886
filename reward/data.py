"""A stage's training data: read and validate the datasets, mix them by weight, and deal with over-long pairs.

Every record that does not make it into training is counted by reason in a `SkipLog` (bad records, with
`on_bad_record="skip"`, and over-long pairs), which the run summary reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import datasets
import numpy as np
from datasets import Dataset

from common.io import SkipLog, read_records
from common.schema import record_ref
from reward.collator import conversation_text
from reward.config import RewardConfig, StageConfig

# Columns the trainer reads; others (scores, source, meta) are dropped so that datasets with different extras mix.
COLUMNS = ("id", "prompt", "chosen", "rejected", "images", "margin")


@dataclass
class PairLengths:
    """Token counts (image tokens included) of the prompt with its generation header, and of both conversations."""

    prompt: int
    chosen: int
    rejected: int


def image_tokens(processor, image) -> int:
    """LM tokens one image becomes after the processor resizes it into its min/max pixel bounds."""
    ip = processor.image_processor
    width, height = image.size
    return ip.get_number_of_image_patches(height, width) // (ip.merge_size**2)


def pair_lengths(processor, record: Mapping) -> PairLengths:
    """Token lengths of a pair without running the image processor (Qwen's resize rule gives the image size)."""
    extra = sum(image_tokens(processor, im) - 1 for im in record.get("images") or [])  # the template has one pad each
    tok = processor.tokenizer

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"]) + extra

    prompt = processor.apply_chat_template(list(record["prompt"]), tokenize=False, add_generation_prompt=True)
    return PairLengths(
        prompt=n(prompt),
        chosen=n(conversation_text(processor, record["prompt"] + record["chosen"])),
        rejected=n(conversation_text(processor, record["prompt"] + record["rejected"])),
    )


def filter_long_pairs(ds: Dataset, processor, max_length: int, policy: str, skipped: SkipLog) -> Dataset:
    """Keep pairs that fit `max_length`; with `policy="truncate_response"` also keep pairs whose prompt (image tokens
    included) leaves room for at least one response token: the collator cuts their response tails."""
    keep = []
    for i, record in enumerate(ds):
        lengths = pair_lengths(processor, record)
        longest = max(lengths.chosen, lengths.rejected)
        ref = record_ref(record, i)
        if longest <= max_length:
            keep.append(i)
        elif policy == "truncate_response" and lengths.prompt < max_length:
            keep.append(i)
        elif policy == "truncate_response":
            skipped.add("length: prompt with image tokens longer than max_length",
                        f"record {ref}: prompt {lengths.prompt} tokens > max_length {max_length}")  # fmt: skip
        else:
            skipped.add("length: pair longer than max_length",
                        f"record {ref}: {longest} tokens > max_length {max_length}")  # fmt: skip
    return ds.select(keep)


def _common_columns(ds: Dataset) -> Dataset:
    if "margin" not in ds.column_names:
        ds = ds.add_column("margin", [None] * len(ds), feature=datasets.Value("float64"))
    ds = ds.select_columns(list(COLUMNS))
    return ds.cast_column("margin", datasets.Value("float64"))


def _weighted(ds: Dataset, weight: float, seed: int) -> Dataset:
    """`weight` x len(ds) records: whole copies plus a seeded random remainder."""
    n = round(weight * len(ds))
    whole, rest = divmod(n, len(ds)) if len(ds) else (0, 0)
    rng = np.random.default_rng(seed)
    indices = np.concatenate([np.tile(np.arange(len(ds)), whole), rng.permutation(len(ds))[:rest]]).astype(int)
    return ds.select(indices.tolist())


def read_pairs(path: str, cfg: RewardConfig, processor, skipped: SkipLog) -> Dataset:
    """One dataset, validated (bad records raise or are counted) and length-filtered, with the trainer's columns."""
    ds = read_records(path, "preference", on_bad_record=cfg.on_bad_record, skipped=skipped)
    ds = _common_columns(ds) if len(ds) else ds
    return filter_long_pairs(ds, processor, cfg.max_length, cfg.long_pair_policy, skipped) if len(ds) else ds


def stage_dataset(stage: StageConfig, cfg: RewardConfig, processor, skipped: SkipLog) -> Dataset:
    """The stage's mixture: each dataset read, filtered and scaled by its weight, concatenated (the Trainer shuffles)."""
    parts = []
    for k, (path, weight) in enumerate(stage.datasets.items()):
        ds = read_pairs(path, cfg, processor, skipped)
        if len(ds):
            parts.append(_weighted(ds, weight, seed=cfg.seed + k))
    if not parts:
        raise ValueError(
            f"stage {stage.name!r}: no usable pairs in {list(stage.datasets)} (skipped: {skipped.to_dict()})"
        )
    return datasets.concatenate_datasets(parts)


def eval_dataset(cfg: RewardConfig, processor, skipped: SkipLog) -> Dataset | None:
    parts = [ds for ds in (read_pairs(p, cfg, processor, skipped) for p in cfg.eval_datasets) if len(ds)]
    return datasets.concatenate_datasets(parts) if parts else None
