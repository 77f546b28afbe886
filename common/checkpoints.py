"""Trainer checkpoints that resume exactly or not at all, for every job built on `transformers.Trainer`.

`CompleteCheckpointsMixin` (put it before the Trainer class: `class MyTrainer(CompleteCheckpointsMixin, Trainer)`):

- writing: once every rank has written `checkpoint-N/` (weights, optimizer, RNG, `trainer_state.json`, DeepSpeed's
  `global_stepN/` and `latest`), each node's local rank 0 writes `checkpoint_complete.json` last (the name and size of
  every file it sees: on nodes without a shared filesystem each node vouches for its own files), then, once every
  node has, rotates old checkpoints, by step number, never by mtime (a touched old checkpoint is still old), so a kill
  never leaves fewer complete checkpoints than before. A failed write (a full
  disk shows in torch as `basic_ios::clear: iostream error`) raises `CheckpointWriteError` naming the folder and the
  free space.
- resuming: `train(resume_from_checkpoint=True)` takes the newest checkpoint of `output_dir` complete on every node
  (the steps each node finds complete are all-gathered; or starts from step 0 if there is none), logs every newer one
  it skips and why, and removes it (the run writes that step again). An explicit path must be complete.
- loading: the weights load strictly; a missing or unexpected key is an error naming the keys. Without DeepSpeed the
  Trainer would load `model.safetensors` by its on-disk names, which `save_pretrained` writes in the checkpoint's
  original layout (Qwen2-VL's `model.layers.*`, `visual.*`), so the backbone would silently stay where the run
  started; here the keys go through the model's own conversion mapping first. DeepSpeed checkpoints load through
  DeepSpeed, strictly, except a PEFT model's: DeepSpeed saves it without its frozen parameters and the Trainer loads it
  with `load_module_strict=False`, so its keys are checked here first (exactly the model's less the frozen ones).
- training state kept by callbacks (`CheckpointedState`: BCO's delta, an evaluation history) is saved in each
  checkpoint and restored in place on resume, whatever `restore_callback_states_from_checkpoint` says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.core_model_loading import revert_weight_conversion
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from common.distributed import all_gather_objects, print0
from common.errors import ExpectedError, InputError

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


def _node_main() -> bool:
    """Whether this process is its node's local rank 0 (the one process when not launched)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0


def checkpoint_steps(output_dir: str | Path) -> dict[int, Path]:
    """`{N: folder}` for every `checkpoint-N` folder in `output_dir`, in step order (never mtime order)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return {}
    found = {int(m.group(1)): p for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()}
    return dict(sorted(found.items()))


def newest_common_step(complete_per_node: list[list[int]]) -> int | None:
    """The newest step complete in every node's view (None if there is none)."""
    common = set.intersection(*map(set, complete_per_node)) if complete_per_node else set()
    return max(common, default=None)


def last_complete_checkpoint(output_dir: str | Path, remove_incomplete: bool = True) -> str | None:
    """The newest `checkpoint-N` in `output_dir` complete on every node (None if there is none). Every rank must call
    it under a launcher: each rank's complete steps are all-gathered. Newer ones are logged with the reason and, with
    `remove_incomplete`, deleted by each node's local rank 0 (the run writes them again)."""
    found = checkpoint_steps(output_dir)
    reasons = {step: incomplete_reason(folder) for step, folder in found.items()}
    step = newest_common_step(all_gather_objects([s for s, reason in reasons.items() if reason is None]))
    for newer in [s for s in reversed(found) if step is None or s > step]:
        what = (
            f"incomplete {found[newer]} ({reasons[newer]})"
            if reasons[newer]
            else f"{found[newer]} (complete here, not on every node)"
        )
        print0(f"[checkpoint] skipping {what}" + ("; removing it" if remove_incomplete else ""))
        if remove_incomplete and _node_main():
            shutil.rmtree(found[newer], ignore_errors=True)
    return None if step is None else str(found[step])


def mark_complete(folder: str | Path) -> None:
    """Write `checkpoint_complete.json` (every file's relative name and size) into `folder`, atomically and last."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    files.pop(COMPLETE_FILE, None)
    files = {name: size for name, size in files.items() if not name.startswith(f".{COMPLETE_FILE}.")}  # others' tmp
    tmp = folder / f".{COMPLETE_FILE}.{socket.gethostname()}.{os.getpid()}.tmp"  # one per node on a shared folder
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


def deepspeed_module_keys(folder: str | Path) -> set[str]:
    """The module keys of the DeepSpeed checkpoint in `folder` (its `latest` tag's rank-0 model states file)."""
    folder = Path(folder)
    tags = [(folder / "latest").read_text().strip()] if (folder / "latest").is_file() else []
    files = [f for tag in tags for f in sorted((folder / tag).glob("*model_states.pt"))]
    if not files:
        raise FileNotFoundError(f"{folder}: no DeepSpeed model states (latest -> global_stepN/*model_states.pt)")
    return set(torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)["module"] or {})


def check_deepspeed_module_keys(model: torch.nn.Module, folder: str | Path) -> None:
    """Check a DeepSpeed checkpoint of a PEFT `model` before DeepSpeed loads it non-strictly: its keys must be the
    model's state-dict keys less its frozen parameters (what `save_checkpoint(exclude_frozen_parameters=True)` keeps).

    Raises:
        KeyError: naming the missing and unexpected keys.
    """
    expected = set(model.state_dict())
    expected -= {name for name, param in model.named_parameters() if not param.requires_grad}
    saved = deepspeed_module_keys(folder)
    _raise_on_mismatch(folder, sorted(expected - saved), sorted(saved - expected))


def _raise_on_mismatch(folder, missing, unexpected) -> None:
    if missing or unexpected:
        raise KeyError(
            f"{folder}: the checkpoint does not match the model: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {list(unexpected)[:5]}; resuming would train from other weights"
        )


class CheckpointedState(TrainerCallback, ExportableState):
    """A callback holding training state (BCO's delta, an evaluation history): `Trainer` saves its `state()` in every
    checkpoint's `trainer_state.json`, and `CompleteCheckpointsMixin` restores it in place on resume (`restore`)."""

    def restore(self, saved: dict) -> None:
        for name, value in {**saved.get("args", {}), **saved.get("attributes", {})}.items():
            setattr(self, name, value)


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
                raise InputError(f"cannot resume from {resume_from_checkpoint}: {reason}")
        if resume_from_checkpoint:
            print0(f"[checkpoint] resuming from {resume_from_checkpoint}")
            if getattr(self, "is_deepspeed_enabled", False) and is_peft_model(self.model):
                check_deepspeed_module_keys(self.model, resume_from_checkpoint)  # the Trainer loads it non-strictly
        self.resumed_from = resume_from_checkpoint or None
        return super().train(self.resumed_from, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate only after the marker
        node_main = getattr(self.args, "local_process_index", 0) == 0  # each node marks (and rotates) what it holds
        if node_main:  # rewriting a checkpoint: it is incomplete until the new marker is written
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
        if node_main:
            mark_complete(folder)
        self.accelerator.wait_for_everyone()  # complete on every node before any node drops an older one
        if node_main:
            rotate_checkpoints(str(folder.parent), limit, self.state.best_model_checkpoint, use_mtime=False)

    def _load_callback_state(self) -> None:
        # Runs when resuming: restore every `CheckpointedState` in place; the Trainer handles the other callbacks
        # (only with `restore_callback_states_from_checkpoint`, by replacing them with new objects).
        saved = self.state.stateful_callbacks
        ours = {type(cb).__name__: cb for cb in self.callback_handler.callbacks if isinstance(cb, CheckpointedState)}
        self.state.stateful_callbacks = {name: value for name, value in saved.items() if name not in ours}
        try:
            super()._load_callback_state()
        finally:
            self.state.stateful_callbacks = saved
        for name, callback in ours.items():
            if name in saved:
                callback.restore(saved[name])
            saved.setdefault(name, callback.state())  # a checkpoint from before the callback existed

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if is_peft_model(model):
            result = model.load_adapter(resume_from_checkpoint, model.active_adapter, is_trainable=True)
            return _raise_on_mismatch(resume_from_checkpoint, result.missing_keys, result.unexpected_keys)
        load_weights_strict(model, resume_from_checkpoint)
