"""One policy for a job's `output_dir`: claim it, recognise the same run (then resume), refuse any other.

    claim_output_dir(cfg.output_dir, [cfg], {"prompts": cfg.prompts, "policy": cfg.policy_name_or_path},
                     overwrite=cfg.overwrite_output_dir)

**What counts as the same run.** Every field of every config counts, except those declared as not affecting the
results: `NOT_AFFECTING_RESULTS`, a class attribute of each config class (inherited and added up along the class
hierarchy; a `transformers.TrainingArguments` subclass also gets `TRAINING_ARGUMENTS_NOT_AFFECTING_RESULTS`: logging,
progress, output paths, save/eval cadence, hub and tracker settings). A field added later counts until someone
declares it, so a forgotten declaration refuses too much, never too little.

**Input fingerprints.** Each named input (data files or folders, model folders) is hashed by content: the SHA-256 of
every file under it (relative names and bytes, streamed in 1 MiB blocks, in sorted order; the `cache-*.arrow` files
that `datasets` writes beside a dataset it reads are left out). File hashes are cached
in the process by (path, size, mtime), so a 15 GB model that two inputs name (policy and reference) is read once per
run. An input that is not a local path (a hub id) is recorded as its name. A JSONL data file's images folder
(`<stem>.images/`, written by `common.io.write_records`) is part of its fingerprint.

**The claim.** `<output_dir>/run_config.json` holds the resolved configs (every field), the fields that count, and
the input fingerprints; it is written when the folder is claimed, before any output, so every output sits beside the
config that made it. A rerun with the same identity resumes; one whose identity differs is refused with a message
naming the changed fields and inputs; a non-empty folder without `run_config.json` is refused too.
`overwrite=True` (`--overwrite_output_dir true`) deletes the folder and starts over. Under a launcher every rank
computes the same verdict (all raise together) before rank 0 changes anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.distributed import barrier, is_main_process
from common.errors import UsageError
from common.io import write_text_atomic

RUN_CONFIG_FILE = "run_config.json"

# transformers.TrainingArguments fields that change no trained weight or data: logging, progress, trackers, hub,
# output paths, checkpoint and evaluation cadence, evaluation-only batching, the launcher's rank.
TRAINING_ARGUMENTS_NOT_AFFECTING_RESULTS = (
    "output_dir", "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node",
    "logging_nan_inf_filter", "include_num_input_tokens_seen", "log_level", "log_level_replica", "disable_tqdm",
    "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "eval_strategy", "eval_steps", "eval_delay", "per_device_eval_batch_size", "prediction_loss_only", "eval_on_start",
    "eval_do_concat_batches", "eval_use_gather_object", "eval_accumulation_steps", "include_for_metrics",
    "batch_eval_metrics", "save_only_model", "save_strategy", "save_steps", "save_on_each_node", "save_total_limit",
    "enable_jit_checkpoint", "push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy",
    "hub_always_push", "hub_revision", "skip_memory_metrics", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "ddp_timeout", "do_train", "do_eval", "do_predict",
    "resume_from_checkpoint", "local_rank", "overwrite_output_dir", "debug",
)  # fmt: skip

_HASHES: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256 of the file's bytes


class RunFolderError(UsageError, ValueError):
    """`output_dir` holds another run (or something else); the message names what differs."""


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _derived(path: Path) -> bool:
    """Files that reading leaves in a data folder: `datasets`' cache files (`cache-*.arrow`) and lock files."""
    return (path.name.startswith("cache-") and path.suffix == ".arrow") or path.suffix == ".lock"


def hash_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of every file under a folder (relative names and contents, sorted; the cache
    files `datasets` writes beside a dataset it reads are left out)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not _derived(p))
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        h.update(_file_sha256(f).encode())
    return h.hexdigest()


def fingerprint(path: str | os.PathLike | None) -> str | None:
    """What `claim_output_dir` records for an input: a content hash of a local file or folder (a JSONL file's
    `<stem>.images/` folder included), or the name itself when it is not a local path (a hub id, None)."""
    if path is None or not Path(path).exists():
        return None if path is None else str(path)
    path = Path(path)
    digest = hash_path(path)
    images = path.with_name(f"{path.stem}.images")
    if path.is_file() and images.is_dir():
        digest = hashlib.sha256(f"{digest}/{hash_path(images)}".encode()).hexdigest()
    return f"sha256:{digest}"


def not_affecting_results(cfg: Any) -> set[str]:
    """The fields of `cfg` declared as not changing its job's results (see the module docstring)."""
    names: set[str] = set()
    for cls in type(cfg).__mro__:
        names.update(cls.__dict__.get("NOT_AFFECTING_RESULTS", ()))
        if f"{cls.__module__}.{cls.__qualname__}" == "transformers.training_args.TrainingArguments":
            names.update(TRAINING_ARGUMENTS_NOT_AFFECTING_RESULTS)
    return names


def _fields(cfg: Any) -> dict[str, Any]:
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return json.loads(json.dumps(values, default=str, sort_keys=True))


def run_identity(configs: Sequence[Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved configs, the fields of each that count, and the inputs' fingerprints."""
    resolved = {type(c).__name__: _fields(c) for c in configs}
    counted = {type(c).__name__: sorted(set(resolved[type(c).__name__]) - not_affecting_results(c)) for c in configs}
    return {
        "config": resolved,
        "counted_fields": counted,
        "inputs": {name: fingerprint(path) for name, path in inputs.items()},
        "input_paths": {name: None if path is None else str(path) for name, path in inputs.items()},
    }


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two identities, in words: changed fields (old -> new values) and changed inputs."""
    changes = []
    for cls, values in new["config"].items():
        before = old.get("config", {}).get(cls, {})
        for name in new["counted_fields"][cls]:
            if name not in before or before[name] != values[name]:
                was = repr(before[name]) if name in before else "(not set)"
                changes.append(f"config field {name}: {was} -> {values[name]!r}")
    for name, print_ in new["inputs"].items():
        was = old.get("inputs", {}).get(name)
        if was != print_:
            path = new["input_paths"][name]
            what = "other content at the same path" if old.get("input_paths", {}).get(name) == path else "another path"
            changes.append(f"input {name} ({path}): {what} ({was} -> {print_})")
    return changes


def claim_output_dir(
    output_dir: str | os.PathLike,
    configs: Sequence[Any],
    inputs: Mapping[str, Any],
    overwrite: bool = False,
) -> bool:
    """Claim `output_dir` for the run that `configs` and `inputs` describe (see the module docstring).

    Args:
        output_dir: the job's output folder.
        configs: the job's config objects (dataclasses or `TrainingArguments`).
        inputs: input name -> local path (or hub id) whose content the results depend on.
        overwrite: delete a folder holding another run (or anything else) and start over.

    Returns:
        True when the folder already holds this run (the job resumes), False for a fresh start.

    Raises:
        RunFolderError: the folder holds another run, or files of something else, and `overwrite` is False.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output_dir {out} is a file, not a folder: choose another output_dir")
    identity = run_identity(configs, inputs)
    state = out / RUN_CONFIG_FILE
    old = json.loads(state.read_text()) if state.is_file() else None
    changes = _differences(old, identity) if old is not None else []
    occupied = old is None and out.is_dir() and any(out.iterdir())
    if (changes or occupied) and not overwrite:
        if occupied:
            raise RunFolderError(f"output_dir {out} is not empty and holds no {RUN_CONFIG_FILE} (another job's files, "
                                 "or a run from an older version): choose another output_dir, or pass "
                                 "--overwrite_output_dir true to delete it and start over")  # fmt: skip
        raise RunFolderError(f"output_dir {out} holds a run that differs from this one:\n  - " + "\n  - ".join(changes)
                             + "\nResuming would mix the two. Rerun with the old settings and inputs, choose another "
                             "output_dir, or pass --overwrite_output_dir true to delete it and start over.")  # fmt: skip
    resume = old is not None and not changes
    barrier()
    if is_main_process():
        if not resume and out.is_dir() and (old is not None or occupied):
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(state, json.dumps(identity, indent=2, sort_keys=True))
    barrier()
    return resume
