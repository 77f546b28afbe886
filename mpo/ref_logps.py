"""Reference log-probs computed once, sharded across ranks, cached in a folder of the run's choosing.

TRL refuses `precompute_ref_log_probs` for image datasets, so image DPO pays a reference forward and holds a second
model on every step. Here one pass (each rank takes every `world_size`-th pair, packed so each image is encoded once)
writes `<cache_dir>/<key>.parquet` (the MPO job's default: `<output_dir>/ref_logps`, so read-only data works). The key
hashes everything the numbers depend on: the dataset's files and record ids, the reference model's files, the
processor's image bounds and chat template, `max_length`, the dtype and the packing format. Change any of them and
the pass runs again; otherwise training starts at once. The pass uses the training collator, so it scores exactly
the tokens training scores (responses cut to `max_length`); the cache also records which responses were cut.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForImageTextToText, ProcessorMixin

from common.distributed import all_gather_objects, barrier, broadcast_object, local_device, print0, rank_and_world
from common.io import atomic_tmp_path
from common.run_folder import fingerprint
from mpo.packing import PairCollator, ensure_fused_lm_head, pair_logps

FORMAT_VERSION = 2  # bump when the packed forward or the stored columns change


def ref_logps_key(
    dataset: Dataset,
    data_path: str | os.PathLike,
    ref_model: str,
    processor: ProcessorMixin,
    max_length: int | None,
    dtype: torch.dtype,
) -> str:
    """The cache key: a hash of everything the reference log-probs depend on (see module docstring)."""
    parts = {
        "format": FORMAT_VERSION,
        "data": fingerprint(data_path),  # the same content hash the run folder records (images folder included)
        "ids": hashlib.sha256("\n".join(dataset["id"]).encode()).hexdigest(),
        "ref_model": fingerprint(ref_model),
        "image_size": dict(processor.image_processor.size),
        "chat_template": hashlib.sha256((processor.chat_template or "").encode()).hexdigest(),
        "max_length": max_length,
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@contextlib.contextmanager
def without_zero3_init():
    """Load and run a full (unpartitioned) model even when a ZeRO-3 config is active: HF would wrap
    `from_pretrained` in `zero.Init`, and a partitioned model cannot run a forward outside a DeepSpeed engine."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


@torch.no_grad()
def compute_ref_logps(
    model,
    dataset: Dataset,
    collator: PairCollator,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> dict[int, tuple[float, float, bool, bool]]:
    """This rank's shard (every `world_size`-th pair from `rank`):
    {index: (ref chosen, ref rejected, chosen was cut, rejected was cut)}."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    rope_index = model.model.get_rope_index
    indices = list(range(rank, len(dataset), world_size))
    out = {}
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        batch = collator([dataset[i] for i in idx])
        cut = zip(batch["chosen_truncated"].tolist(), batch["rejected_truncated"].tolist())
        batch = {k: v.to(device) for k, v in batch.items()}
        logps = pair_logps(model, batch, rope_index, dtype)
        for i, c, r, (c_cut, r_cut) in zip(idx, logps.chosen.float().tolist(), logps.rejected.float().tolist(), cut):
            out[i] = (c, r, c_cut, r_cut)
    return out


def attach_ref_logps(
    dataset: Dataset,
    data_path: str | os.PathLike,
    ref_model: str,
    processor: ProcessorMixin,
    max_length: int | None,
    dtype: torch.dtype,
    cache_dir: str | os.PathLike,
    batch_size: int = 4,
) -> tuple[Dataset, dict]:
    """The dataset with `ref_chosen_logps` / `ref_rejected_logps` columns, from the cache or from one pass.

    Under a launcher every rank must call this (the pass is sharded; rank 0 writes the cache file). Nothing is
    written outside `cache_dir`.

    Returns:
        The dataset and a report: `{"key", "path", "cached": bool, "truncated": {"chosen": n, "rejected": n}}`
        (responses cut to fit `max_length`, counted over the whole dataset).
    """
    rank, world = rank_and_world()
    # Hashing reads every file of the data and the reference (GBs for a 7B): rank 0 does it and tells the others.
    key = broadcast_object(
        ref_logps_key(dataset, data_path, ref_model, processor, max_length, dtype) if rank == 0 else None
    )
    path = Path(cache_dir) / f"{key}.parquet"
    cached = path.exists()
    cached = broadcast_object(cached)  # every rank must take the same branch (the pass has collectives)
    if not cached:
        with without_zero3_init():
            model = AutoModelForImageTextToText.from_pretrained(ref_model, dtype=dtype)
            ensure_fused_lm_head(model)
            model.to(local_device()).eval()
            shard = compute_ref_logps(model, dataset, PairCollator(processor, max_length), batch_size, rank, world)
            del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        shards = all_gather_objects(shard)
        if rank == 0:
            merged = {i: v for s in shards for i, v in s.items()}
            table = Dataset.from_dict(
                {
                    "index": list(range(len(dataset))),
                    "ref_chosen_logps": [merged[i][0] for i in range(len(dataset))],
                    "ref_rejected_logps": [merged[i][1] for i in range(len(dataset))],
                    "chosen_truncated": [merged[i][2] for i in range(len(dataset))],
                    "rejected_truncated": [merged[i][3] for i in range(len(dataset))],
                }
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = atomic_tmp_path(path)
            table.to_parquet(str(tmp))
            os.replace(tmp, path)  # atomic: a killed pass leaves no half file
            meta = {"data": str(data_path), "ref_model": str(ref_model), "n": len(dataset), "dtype": str(dtype)}
            path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
        barrier()
    table = Dataset.from_parquet(str(path))
    if len(table) != len(dataset):
        raise ValueError(f"{path}: {len(table)} reference log-probs for {len(dataset)} pairs; delete the file")
    dataset = dataset.add_column("ref_chosen_logps", table["ref_chosen_logps"])
    dataset = dataset.add_column("ref_rejected_logps", table["ref_rejected_logps"])
    truncated = {"chosen": sum(table["chosen_truncated"]), "rejected": sum(table["rejected_truncated"])}
    if any(truncated.values()):
        print0(f"max_length {max_length}: {truncated['chosen']} chosen and {truncated['rejected']} rejected responses "
               f"of {len(dataset)} pairs are longer and are cut (training and the reference score the same tokens)")  # fmt: skip
    return dataset, {"key": key, "path": str(path), "cached": cached, "truncated": truncated}
