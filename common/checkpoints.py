"""Trainer checkpoints that resume exactly or not at all, for every job built on `transformers.Trainer`.

`CompleteCheckpointsMixin` (put it before the Trainer class: `class MyTrainer(CompleteCheckpointsMixin, Trainer)`):

- writing: once every rank has written `checkpoint-N/` (weights, optimizer, RNG, `trainer_state.json`, DeepSpeed's
  `global_stepN/` and `latest`), rank 0 writes `checkpoint_complete.json` last (the name and size of every file),
  then rotates old checkpoints, so a kill never leaves fewer complete checkpoints than before. A failed write (a full
  disk shows in torch as `basic_ios::clear: iostream error`) raises `CheckpointWriteError` naming the folder and the
  free space.
- resuming: `train(resume_from_checkpoint=True)` takes the newest complete checkpoint of `output_dir` (or starts from
  step 0 if there is none), logs every incomplete one it skips and why, and removes it (the run writes that step
  again). An explicit path must be complete.
- loading: the weights load strictly; a missing or unexpected key is an error naming the keys. Without DeepSpeed the
  Trainer would load `model.safetensors` by its on-disk names, which `save_pretrained` writes in the checkpoint's
  original layout (Qwen2-VL's `model.layers.*`, `visual.*`), so the backbone would silently stay where the run
  started; here the keys go through the model's own conversion mapping first. DeepSpeed checkpoints load through
  DeepSpeed (already strict).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from safetensors.torch import load_file
from transformers.core_model_loading import revert_weight_conversion
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from common.distributed import is_main_process, print0
from common.errors import ExpectedError

COMPLETE_FILE = "checkpoint_complete.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointWriteError(ExpectedError, RuntimeError):
    """Writing a checkpoint failed (often a full disk); the message names the folder and the free space."""


def incomplete_reason(folder: str | Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None if it is (marker present, every listed file there at its
    recorded size)."""
    folder = Path(folder)
    try:
        listed = json.loads((folder / COMPLETE_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"no {COMPLETE_FILE}: the run stopped while writing it"
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable {COMPLETE_FILE} ({err})"
    for name, size in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def last_complete_checkpoint(output_dir: str | Path, remove_incomplete: bool = True) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir` (None if there is none). Newer incomplete ones are logged
    with the reason and, with `remove_incomplete`, deleted by the main process."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    for _, folder in sorted(found, reverse=True):
        reason = incomplete_reason(folder)
        if reason is None:
            return str(folder)
        print0(f"[checkpoint] skipping incomplete {folder} ({reason})" + ("; removing it" if remove_incomplete else ""))
        if remove_incomplete and is_main_process():
            shutil.rmtree(folder, ignore_errors=True)
    return None


def mark_complete(folder: str | Path) -> None:
    """Write `checkpoint_complete.json` (every file's relative name and size) into `folder`, atomically and last."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    files.pop(COMPLETE_FILE, None)
    tmp = folder / f".{COMPLETE_FILE}.tmp"
    with open(tmp, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / COMPLETE_FILE)


def checkpoint_key_names(model: torch.nn.Module) -> dict[str, str]:
    """`{model key: key in a save_pretrained file}`: the model's reverse conversion mapping, as `save_pretrained`
    applies it (each key is sent through it with a one-number tensor holding its index)."""
    keys = list(model.state_dict())
    probe = {k: torch.tensor([float(i)]) for i, k in enumerate(keys)}
    names = {}
    for file_key, value in revert_weight_conversion(model, probe).items():
        if value.numel() != 1:
            raise ValueError(f"{type(model).__name__}: {file_key} is saved through a weight conversion, not a rename; "
                             "resuming from such a checkpoint is not supported without DeepSpeed")  # fmt: skip
        names[keys[int(value.item())]] = file_key
    return names


def load_weights_strict(model: torch.nn.Module, folder: str | Path) -> None:
    """Load the `save_pretrained` weights in `folder` into `model`, mapping the on-disk key names to the model's.

    Raises:
        FileNotFoundError: no `model.safetensors` (or its shard index) in `folder`.
        KeyError: a weight of the model is not in the checkpoint, or the checkpoint has one the model lacks.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors to resume the weights from")
    on_disk = {}
    for name in files:
        on_disk.update(load_file(str(folder / name)))
    model_key = {file_key: key for key, file_key in checkpoint_key_names(model).items()}
    result = model.load_state_dict({model_key.get(k, k): v for k, v in on_disk.items()}, strict=False)
    missing = set(result.missing_keys)
    shared = {}  # tied weights (saved once): a missing key is fine when a loaded key shares its storage
    for key, value in model.state_dict().items():
        shared.setdefault(value.data_ptr(), []).append(key)
    for keys in shared.values():
        if len(keys) > 1 and not missing.issuperset(keys):
            missing -= set(keys)
    _raise_on_mismatch(folder, sorted(missing), result.unexpected_keys)


def _raise_on_mismatch(folder, missing, unexpected) -> None:
    if missing or unexpected:
        raise KeyError(
            f"{folder}: the checkpoint does not match the model: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {list(unexpected)[:5]}; resuming would train from other weights"
        )


class CompleteCheckpointsMixin:
    """A `Trainer` mixin: checkpoints marked complete when written, resume from the newest complete one, strict
    weight loading (see the module docstring). `self.resumed_from` is the checkpoint the last `train` started from."""

    resumed_from: str | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if str(resume_from_checkpoint).lower() in ("false", "none", ""):
            resume_from_checkpoint = None
        elif resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                print0(f"[checkpoint] no complete checkpoint in {self.args.output_dir}: starting from step 0")
        elif resume_from_checkpoint:
            reason = incomplete_reason(resume_from_checkpoint)
            if reason:
                raise ValueError(f"cannot resume from {resume_from_checkpoint}: {reason}")
        if resume_from_checkpoint:
            print0(f"[checkpoint] resuming from {resume_from_checkpoint}")
        self.resumed_from = resume_from_checkpoint or None
        return super().train(self.resumed_from, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate only after the marker
        if self.args.should_save:  # rewriting a checkpoint: it is incomplete until the new marker is written
            (folder / COMPLETE_FILE).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:
            usage = shutil.disk_usage(folder.parent) if folder.parent.is_dir() else None
            free = f"{usage.free / 2**20:.1f} MiB free there" if usage else "its folder is gone"
            raise CheckpointWriteError(
                f"writing checkpoint {folder} failed ({type(err).__name__}: {err}); {free}. A full disk is the usual "
                "cause: free space (or keep fewer checkpoints with save_total_limit) and rerun the same command; "
                "the incomplete checkpoint is skipped on resume."
            ) from err
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's shards are on disk
        if self.args.should_save:
            mark_complete(folder)
            rotate_checkpoints(str(folder.parent), limit, self.state.best_model_checkpoint, use_mtime=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if is_peft_model(model):
            result = model.load_adapter(resume_from_checkpoint, model.active_adapter, is_trainable=True)
            return _raise_on_mismatch(resume_from_checkpoint, result.missing_keys, result.unexpected_keys)
        load_weights_strict(model, resume_from_checkpoint)
