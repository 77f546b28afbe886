"""What the resume tests compare: per-step losses as the Trainer logged them, and saved weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback


class LossLog(TrainerCallback):
    """Records `{step: loss}` from the Trainer's logs (exact floats with `logging_steps=1`)."""

    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]


class KillAtStep(TrainerCallback):
    """Raises `KeyboardInterrupt` at the end of optimizer step `step`, before that step's checkpoint is written."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated kill after step {self.step}")


def safetensors_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every `*.safetensors` tensor in `folder`, keyed by file name and tensor name."""
    return {f"{f.name}:{k}": v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}


def max_weight_diff(a: str | Path, b: str | Path) -> float:
    """Largest absolute difference between the weights saved in two folders (which must hold the same tensors)."""
    wa, wb = safetensors_weights(a), safetensors_weights(b)
    assert wa and set(wa) == set(wb), sorted(set(wa) ^ set(wb))[:5]
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
