"""`run_stage(cmd)`: a stage's command (e.g. `deepspeed --num_gpus 8 recipes/mpo_qwen.py ...`) in its own process
group, which is ended with everything in it when the stage returns or the loop is stopped.

A launcher starts ranks that are its children, in its process group; killing the launcher alone leaves them running
(on GPUs they hold memory). So the stage starts a new session (its own process group), SIGTERM or SIGINT to the loop
ends that group (SIGTERM, then SIGKILL after a grace period) before the loop exits with the signal's status, and a
stage that exits leaving processes behind has them ended too. The stage's direct child also gets SIGKILL when the
loop dies without a chance to clean up (SIGKILL; `PR_SET_PDEATHSIG`), which reaches the ranks only through the
launcher.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stopped(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is in process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: a zombie counts as alive here
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
                return True
    return False


def end_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM every process of group `pgid`, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.05)


def run_stage(cmd: Sequence[str], cwd: str | Path, env: Mapping[str, str], grace: float = 10.0) -> None:
    """Run `cmd` in its own process group and end the group when it returns (see module docstring).

    Raises:
        subprocess.CalledProcessError: the stage failed.
        On SIGTERM / SIGINT: after ending the group, the loop's process ends with that signal (SIGINT: KeyboardInterrupt).
    """
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), start_new_session=True, preexec_fn=_die_with_parent)
    saved = {}
    if threading.current_thread() is threading.main_thread():

        def stop(signum, frame):
            raise _Stopped(signum)

        saved = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    stopped = None
    try:
        proc.wait()
    except _Stopped as e:
        stopped = e.signum
    finally:
        end_group(proc.pid, grace)  # after a signal the whole group; else the ranks the launcher left behind
        proc.wait()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if stopped == signal.SIGINT:
        raise KeyboardInterrupt
    if stopped is not None:
        signal.signal(stopped, signal.SIG_DFL)
        os.kill(os.getpid(), stopped)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, list(cmd))
