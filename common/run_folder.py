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

**Training may grow.** The training length (`TRAINING_LENGTH_FIELDS` of a `TrainingArguments`, and whatever a config
class lists in `MAY_GROW`, e.g. `stages.*.num_train_epochs`) may grow between reruns, never shrink: the rerun resumes
(the trainer continues from its newest complete checkpoint, the final one of a finished run) and the claim says so.
`is_finished(folder, cfg)` tells a job whether the `run_meta.json` in `folder` records a run finished at `cfg`'s
length (then a rerun has nothing to do) or at a shorter one (then it continues).

**One live run per folder.** The claim takes an advisory lock (`fcntl.flock` on `<output_dir>/.run.lock`, which
records the holder's PID and host; emptied when released) and holds it until the process ends or
`release_output_dir`. A second live run is refused naming the holder; the lock of a process that died is free again
(the kernel drops it) and is taken over.
Under a launcher the lock is taken by one process per node, the node's local rank 0 (its other ranks share the
folder with it): global rank 0 first, then every other node's local rank 0, which holds its own lock on a node-local
folder, or on a shared filesystem finds the lock held by this run's rank 0 (same PID and host in the file).
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.distributed import all_gather_objects, barrier, broadcast_object, is_main_process, print0, rank_and_world
from common.errors import UsageError
from common.io import write_text_atomic

RUN_CONFIG_FILE = "run_config.json"
LOCK_FILE = ".run.lock"
RUN_META_FILE = "run_meta.json"  # what `common.cli.write_run_meta` writes when a job has finished
TRAINING_LENGTH_FIELDS = ("max_steps", "num_train_epochs")  # a TrainingArguments run's length: it may grow
LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup")  # learning-rate schedules that ignore the length

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
_LOCKS: dict[str, int] = {}  # real path of a claimed output_dir -> the descriptor holding its lock file's flock
_MISSING = object()


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


def _is_training_arguments(cls: type) -> bool:
    return f"{cls.__module__}.{cls.__qualname__}" == "transformers.training_args.TrainingArguments"


def not_affecting_results(cfg: Any) -> set[str]:
    """The fields of `cfg` declared as not changing its job's results (see the module docstring)."""
    return _declared(cfg, "NOT_AFFECTING_RESULTS", TRAINING_ARGUMENTS_NOT_AFFECTING_RESULTS)


def may_grow(cfg: Any) -> set[str]:
    """The training-length fields of `cfg` that may grow between reruns: `TRAINING_LENGTH_FIELDS` for a
    `TrainingArguments`, plus each class's `MAY_GROW` (paths into nested values: `stages.*.max_steps`)."""
    return _declared(cfg, "MAY_GROW", TRAINING_LENGTH_FIELDS)


def _declared(cfg: Any, attribute: str, training_arguments_names) -> set[str]:
    """The names every class of `cfg`'s MRO declares in `attribute`, plus `training_arguments_names` when one of them
    is transformers' `TrainingArguments`."""
    names: set[str] = set()
    for cls in type(cfg).__mro__:
        names.update(cls.__dict__.get(attribute, ()))
        if _is_training_arguments(cls):
            names.update(training_arguments_names)
    return names


def _fields(cfg: Any) -> dict[str, Any]:
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return json.loads(json.dumps(values, default=str, sort_keys=True))


def run_identity(configs: Sequence[Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved configs, the fields of each that count (and of those, the ones that may grow), and the inputs'
    fingerprints."""
    resolved = {type(c).__name__: _fields(c) for c in configs}
    counted = {type(c).__name__: sorted(set(resolved[type(c).__name__]) - not_affecting_results(c)) for c in configs}
    return {
        "config": resolved,
        "counted_fields": counted,
        "may_grow": {type(c).__name__: sorted(may_grow(c)) for c in configs},
        "inputs": {name: fingerprint(path) for name, path in inputs.items()},
        "input_paths": {name: None if path is None else str(path) for name, path in inputs.items()},
    }


def _leaf_changes(path: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(path, old, new) for every leaf that differs between two JSON values (`stages.0.max_steps`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(old.keys() | new.keys())
        return [c for k in keys for c in _leaf_changes(f"{path}.{k}", old.get(k, _MISSING), new.get(k, _MISSING))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in _leaf_changes(f"{path}.{i}", a, b)]
    return [] if old == new else [(path, old, new)]


def _growth(old: Any, new: Any) -> bool | None:
    """True when a length grew (a positive number to a larger one), False when it shrank, None otherwise (another
    kind of change: a length given in other units, such as `max_steps: -1`, epochs, to a number of steps)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
    if not numbers or old <= 0:
        return None
    return new > old if new > 0 else None


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """What differs between two identities, in words: (changes that make it another run: fields with old -> new
    values and inputs; training lengths that grew, which the run may continue to)."""
    changes, grown = [], []
    for cls, values in new["config"].items():
        before = old.get("config", {}).get(cls, {})
        growable = set(new.get("may_grow", {}).get(cls, ()))
        for name in new["counted_fields"][cls]:
            if name in before and before[name] == values[name]:
                continue
            leaves = _leaf_changes(name, before.get(name, _MISSING), values[name])
            kinds = [_growth(a, b) if re.sub(r"\.\d+(?=\.|$)", ".*", path) in growable else None
                     for path, a, b in leaves]  # fmt: skip
            if leaves and all(kinds):
                grown += [f"{path}: {a!r} -> {b!r}" for path, a, b in leaves]
                continue
            was = repr(before[name]) if name in before else "(not set)"
            shrank = " (the training length may grow, never shrink)" if False in kinds else ""
            changes.append(f"config field {name}: {was} -> {values[name]!r}{shrank}")
    for name, print_ in new["inputs"].items():
        was = old.get("inputs", {}).get(name)
        if was != print_:
            path = new["input_paths"][name]
            what = "other content at the same path" if old.get("input_paths", {}).get(name) == path else "another path"
            changes.append(f"input {name} ({path}): {what} ({was} -> {print_})")
    return changes, grown


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        info = json.loads(raw)
        return f"PID {info['pid']} on host {info['host']} (since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return "a process that left no PID" if not raw else f"an unreadable lock record {raw!r}"


def _lock_record() -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})


def _take_lock(out: Path, ours: str | None = None) -> str | None:
    """Hold `out`'s lock in this process, writing this process's record into the lock file. Returns None when held
    (or already held by this process, or held by the process whose record is `ours`, this run's rank 0: a folder
    shared with it), else the live holder."""
    key = os.path.realpath(out)
    if key in _LOCKS:
        return None
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.lseek(fd, 0, os.SEEK_SET)
        shared = ours is not None and os.read(fd, 4096).decode(errors="replace").strip() == ours
        holder = None if shared else _holder(fd)
        os.close(fd)
        return holder
    if os.fstat(fd).st_size:
        print(f"[run] {out}: taking over the lock of {_holder(fd)}, which ended without releasing it", flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, _lock_record().encode(), 0)
    _LOCKS[key] = fd
    return None


def _lock_output_dir(out: Path) -> None:
    """Take `out`'s lock on global rank 0, then on every other node's local rank 0 (see the module docstring).

    Raises:
        RunFolderError: another live run holds it, on any node (every rank raises).
    """
    rank, world = rank_and_world()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world == 1 and local_rank != 0:  # under a launcher before its process group: the node's rank 0 holds it
        return
    busy = _take_lock(out) if rank == 0 else None
    # read through the held descriptor: on NFS, where flock is a POSIX lock, closing another one would drop it
    record = os.pread(_LOCKS[os.path.realpath(out)], 4096, 0).decode().strip() if rank == 0 and busy is None else None
    record, busy = broadcast_object((record, busy))
    if busy is None and rank != 0 and local_rank == 0:
        busy = _take_lock(out, record)
    if world > 1:
        busy = next((b for b in all_gather_objects(busy) if b is not None), None)
    if busy is not None:
        release_output_dir(out)
        raise RunFolderError(f"output_dir {out} is in use by a live run: {busy}. Wait for it to end, stop it, or "
                             "choose another output_dir.")  # fmt: skip


@atexit.register
def _release_all() -> None:
    """A job that ends normally leaves its lock file empty (a killed one leaves its record, which the next run reports
    as taken over)."""
    for path in list(_LOCKS):
        release_output_dir(path)


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Release this process's lock on `output_dir` (a no-op when it holds none); the process's end releases it too."""
    fd = _LOCKS.pop(os.path.realpath(output_dir), None)
    if fd is not None:
        os.ftruncate(fd, 0)  # a released lock names no holder
        os.close(fd)


def is_finished(folder: str | os.PathLike, cfg: Any) -> bool:
    """Whether `folder` holds the `run_meta.json` of a finished run of `cfg`'s training length (an older run_meta that
    records no length counts as finished; one recording a shorter length is a run to continue)."""
    path = Path(folder) / RUN_META_FILE
    if not path.is_file():
        return False
    recorded = json.loads(path.read_text()).get(type(cfg).__name__, {})
    return all(recorded.get(name, getattr(cfg, name)) == getattr(cfg, name) for name in TRAINING_LENGTH_FIELDS
               if hasattr(cfg, name))  # fmt: skip


def _schedule_note(configs: Sequence[Any]) -> str:
    """What a grown run's learning rate does, when its schedule depends on the length (a decay, or a warm-up given as
    a ratio of the total steps)."""
    for c in configs:
        schedule = str(getattr(c, "lr_scheduler_type", "constant")).split(".")[-1].lower()
        warmup_steps = getattr(c, "warmup_steps", 0) or 0
        warmup_ratio = (getattr(c, "warmup_ratio", 0) or 0) > 0 or 0 < warmup_steps < 1  # a float < 1 is a ratio
        if schedule not in LENGTH_FREE_SCHEDULES or (schedule != "constant" and warmup_ratio):
            return (f" The learning-rate schedule ({schedule}) depends on the length: the steps taken followed the "
                    "old length's schedule, the rest follow the new one's.")  # fmt: skip
    return ""


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
        True when the folder already holds this run, or a shorter one (the job resumes or continues), False for a
        fresh start. The folder's lock stays held (`release_output_dir`).

    Raises:
        RunFolderError: the folder holds another run, or files of something else, and `overwrite` is False; or
            another live run holds its lock.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output_dir {out} is a file, not a folder: choose another output_dir")
    _lock_output_dir(out)
    try:
        return _claim_locked(out, configs, inputs, overwrite)
    except BaseException:
        release_output_dir(out)
        raise


def _claim_locked(out: Path, configs: Sequence[Any], inputs: Mapping[str, Any], overwrite: bool) -> bool:
    identity = run_identity(configs, inputs)
    state = out / RUN_CONFIG_FILE
    old = json.loads(state.read_text()) if state.is_file() else None
    changes, grown = _differences(old, identity) if old is not None else ([], [])
    occupied = old is None and out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())
    if (changes or occupied) and not overwrite:
        if occupied:
            raise RunFolderError(f"output_dir {out} is not empty and holds no {RUN_CONFIG_FILE} (another job's files, "
                                 "or a run from an older version): choose another output_dir, or pass "
                                 "--overwrite_output_dir true to delete it and start over")  # fmt: skip
        raise RunFolderError(f"output_dir {out} holds a run that differs from this one:\n  - " + "\n  - ".join(changes)
                             + "\nResuming would mix the two. Rerun with the old settings and inputs, choose another "
                             "output_dir, or pass --overwrite_output_dir true to delete it and start over.")  # fmt: skip
    resume = old is not None and not changes
    if resume and grown:
        print0(f"[run] {out}: the training length grows ({'; '.join(grown)}): continuing from the newest complete "
               f"checkpoint.{_schedule_note(configs)}")  # fmt: skip
    barrier()
    if is_main_process():
        if not resume and out.is_dir() and (old is not None or occupied):
            for path in out.iterdir():  # everything but the lock this run holds
                if path.name != LOCK_FILE:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        out.mkdir(parents=True, exist_ok=True)
        if identity != old:
            write_text_atomic(state, json.dumps(identity, indent=2, sort_keys=True))
    barrier()
    return resume
