"""Run a job, SIGKILL it at seeded random points, rerun the same command, and count what happened.

A kill point is one of:
    ("step", n)    inside the training step that follows the first n (from `run_job.py`'s signal file), at a random
                   moment of it (each step pauses `STEP_PAUSE_S`, so the kill lands inside training);
    ("save", n)    inside the first checkpoint write at or after step n (it pauses `SAVE_PAUSE_S` half way through);
    ("chunks", n)  once n chunks of the pair builder are finished, then a random delay of up to a second.
The points of a job are in increasing order: each launch resumes what the previous ones saved.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.checkpoints import incomplete_reason
from tests.data_builders.test_resume import env  # one thread: the same float reduction order in every launch
from tests.launch import REPO

RUN_JOB = REPO / "tests" / "faults" / "run_job.py"
STEP_PAUSE_S = 0.2
SAVE_PAUSE_S = 2.0
TIMEOUT_S = 300


@dataclass
class Tally:
    kills_tried: int = 0
    kills_landed: int = 0  # the process was still running when the SIGKILL was sent
    in_write_kills: int = 0  # landed inside a checkpoint write, which was then incomplete on disk
    resumes: int = 0  # launches that picked up saved work (a checkpoint, or finished chunks)
    skipped_incomplete: int = 0  # launches that logged skipping an incomplete checkpoint
    mismatches: int = 0
    jobs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"fault harness: jobs={len(self.jobs)} ({', '.join(self.jobs)}) kills_tried={self.kills_tried} "
                f"kills_landed={self.kills_landed} in_write_kills={self.in_write_kills} resumes={self.resumes} "
                f"skipped_incomplete={self.skipped_incomplete} mismatches={self.mismatches}")  # fmt: skip


TALLY = Tally()


@dataclass
class Job:
    """One recipe and its flags, launched through `run_job.py`; each launch's output goes to `log_dir`."""

    name: str
    script: Path
    args: list[str]
    log_dir: Path
    launches: int = 0

    def command(self) -> list[str]:
        return [sys.executable, str(RUN_JOB), str(self.script), *self.args]

    def _log(self) -> Path:
        self.launches += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{self.name}-{self.launches}.log"

    def run(self) -> str:
        """The command to its end; returns its output (raises with the tail if it fails)."""
        log = self._log()
        with open(log, "w") as f:
            proc = subprocess.run(self.command(), cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT,
                                  timeout=TIMEOUT_S)  # fmt: skip
        text = log.read_text()
        assert proc.returncode == 0, f"{self.name} failed (rc={proc.returncode}):\n{text[-4000:]}"
        return text

    def run_and_kill(self, point: tuple[str, int], rng: random.Random, progress=lambda: 0) -> str:
        """Launch with the fault hooks, SIGKILL at `point`; returns the launch's output."""
        log, signals = self._log(), self.log_dir / f"{self.name}-{self.launches}.signals"
        extra = {"FAULT_SIGNAL": str(signals), "FAULT_STEP_PAUSE_S": str(STEP_PAUSE_S),
                 "FAULT_SAVE_PAUSE_S": str(SAVE_PAUSE_S)}  # fmt: skip
        with open(log, "w") as f:
            proc = subprocess.Popen(self.command(), cwd=REPO, env={**env(), **extra}, stdout=f,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        kind, target = point
        deadline = time.time() + TIMEOUT_S
        try:
            while True:
                assert time.time() < deadline, f"{self.name}: timed out waiting for {point}"
                words = signals.read_text().split() if signals.exists() else []
                reached = any(w == kind and int(n) >= target for w, n in zip(words[0::2], words[1::2]))
                if kind == "step" and reached:
                    time.sleep(rng.uniform(0, STEP_PAUSE_S))
                    break
                if kind == "save" and reached:
                    time.sleep(SAVE_PAUSE_S / 3)  # well inside the paused write
                    break
                if kind == "chunks" and progress() >= target:
                    time.sleep(rng.uniform(0, 1.0))
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.01)
        finally:
            landed = proc.poll() is None
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        TALLY.kills_tried += 1
        TALLY.kills_landed += landed
        assert landed, f"{self.name}: the launch ended (rc={proc.returncode}) before the kill at {point}"
        return log.read_text()


def training_kill_plan(rng: random.Random, max_steps: int, save_steps: int) -> list[tuple[str, int]]:
    """Two kills inside training steps and one inside a checkpoint write, at seeded steps, in step order."""
    steps = rng.sample(range(1, max_steps), 2)
    save = rng.choice(range(save_steps, max_steps, save_steps))
    return sorted([("step", steps[0]), ("step", steps[1]), ("save", save)], key=lambda p: p[1])


def chunk_kill_plan(rng: random.Random, n_chunks: int) -> list[tuple[str, int]]:
    """Three kills after seeded numbers of finished chunks (then a random delay), in order."""
    return [("chunks", n) for n in sorted(rng.sample(range(n_chunks - 1), 3))]


def check_in_write_kill(checkpoint_parent: Path) -> None:
    """After a kill inside a checkpoint write: the newest checkpoint on disk is incomplete."""
    folders = sorted(checkpoint_parent.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert folders and incomplete_reason(folders[-1]) is not None, f"{folders[-1:]} is complete after an in-write kill"
    TALLY.in_write_kills += 1


def count_resume(output: str, resumed: bool) -> None:
    TALLY.resumes += resumed
    TALLY.skipped_incomplete += "[checkpoint] skipping incomplete" in output
