"""Run a recipe exactly as users do (`python tests/faults/run_job.py recipes/X.py --flags ...` is `python recipes/X.py
--flags ...`), with hooks that let the fault harness place a SIGKILL. Without the variables below nothing changes.

Environment:
    FAULT_SIGNAL=path      append `step N` when a training step begins and `save N` when a checkpoint write is half done.
    FAULT_STEP_PAUSE_S=s   sleep s seconds in every training step (so a kill at a random delay lands inside training).
    FAULT_SAVE_PAUSE_S=s   sleep s seconds in the middle of every checkpoint write (weights and optimizer written,
                           RNG state, trainer_state.json and the completion marker not yet).
"""

import os
import runpy
import sys
import time

from transformers import Trainer


def _signal(line: str) -> None:
    with open(os.environ["FAULT_SIGNAL"], "a") as f:
        f.write(line + "\n")


def _patch(name: str, pause: float, label: str) -> None:
    original = getattr(Trainer, name)

    def paused(self, *args, **kwargs):
        if os.environ.get("FAULT_SIGNAL"):
            _signal(f"{label} {self.state.global_step}")
        time.sleep(pause)
        return original(self, *args, **kwargs)

    setattr(Trainer, name, paused)


def main() -> None:
    _patch("training_step", float(os.environ.get("FAULT_STEP_PAUSE_S", 0)), "step")
    _patch("_save_rng_state", float(os.environ.get("FAULT_SAVE_PAUSE_S", 0)), "save")
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
