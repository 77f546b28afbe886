"""A stage's training data: read and validate the datasets, mix them by weight, and deal with over-long pairs.

Every record that does not make it into training is counted by reason in a `SkipLog` (bad records, with
`on_bad_record="skip"`, and over-long pairs), which the run summary reports. Records that train but look wrong
(an id seen before in the same file, a rejected response that is the same text as the chosen one) are counted in
another `SkipLog`, the summary's `flagged`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import datasets
import numpy as np
from datasets import Dataset

from common.errors import InputError
from common.io import SkipLog, read_records
from common.record_checks import flag_pairs
from common.schema import RecordError, record_ref
from reward.collator import conversation_text
from reward.config import RewardConfig, StageConfig

# Columns the trainer reads; others (scores, source, meta) are dropped so that datasets with different extras mix.
COLUMNS = ("id", "prompt", "chosen", "rejected", "images", "margin")
# Rewards differ by a few units; a margin far beyond that only saturates the loss, and 1e308 overflows it to inf.
MAX_ABS_MARGIN = 1000.0


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


def check_margins(ds: Dataset, source: str, on_bad_record: str, skipped: SkipLog) -> Dataset:
    """Records whose `margin` exceeds `MAX_ABS_MARGIN` in size raise (naming the record) or are skipped and counted.
    (Non-finite margins never get here: `common.schema` refuses them on read.)"""
    if "margin" not in ds.column_names:
        return ds
    keep, ids = [], ds["id"]
    for i, margin in enumerate(ds["margin"]):
        if margin is None or abs(margin) <= MAX_ABS_MARGIN:
            keep.append(i)
            continue
        ref = record_ref({"id": ids[i]}, i)
        error = RecordError(ref, "margin", f"|margin| must be <= {MAX_ABS_MARGIN:g}", f"got {margin!r}, in {source}")
        if on_bad_record == "raise":
            raise error
        skipped.add(error.reason, str(error))
    return ds if len(keep) == len(ds) else ds.select(keep)


def read_pairs(path: str, cfg: RewardConfig, processor, skipped: SkipLog, flagged: SkipLog | None = None) -> Dataset:
    """One dataset, validated (bad records raise or are counted in `skipped`) and length-filtered, with the trainer's
    columns; duplicate ids and chosen == rejected are counted in `flagged` (see `common.record_checks.flag_pairs`)."""
    ds = read_records(path, "preference", on_bad_record=cfg.on_bad_record, skipped=skipped)
    ds = check_margins(ds, path, cfg.on_bad_record, skipped)
    if flagged is not None:
        flag_pairs(ds, path, flagged)
    ds = _common_columns(ds) if len(ds) else ds
    return filter_long_pairs(ds, processor, cfg.max_length, cfg.long_pair_policy, skipped) if len(ds) else ds


def stage_dataset(
    stage: StageConfig, cfg: RewardConfig, processor, skipped: SkipLog, flagged: SkipLog | None = None
) -> Dataset:
    """The stage's mixture: each dataset read, filtered and scaled by its weight, concatenated (the Trainer shuffles)."""
    parts = []
    for k, (path, weight) in enumerate(stage.datasets.items()):
        ds = read_pairs(path, cfg, processor, skipped, flagged)
        if len(ds):
            parts.append(_weighted(ds, weight, seed=cfg.seed + k))
    if not parts:
        raise InputError(
            f"stage {stage.name!r}: no usable pairs in {list(stage.datasets)} (skipped: {skipped.to_dict()})"
        )
    return datasets.concatenate_datasets(parts)


def eval_dataset(cfg: RewardConfig, processor, skipped: SkipLog) -> Dataset | None:
    parts = [ds for ds in (read_pairs(p, cfg, processor, skipped) for p in cfg.eval_datasets) if len(ds)]
    return datasets.concatenate_datasets(parts) if parts else None
