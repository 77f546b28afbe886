"""A stage under a launcher runs in its own process group: the launcher's ranks do not outlive the loop, whether the
stage ends by itself leaving them behind or the loop is stopped with SIGTERM."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rounds.stage_process import run_stage
from tests.launch import REPO, cpu_env

# A "launcher" that starts a "rank" in the background and waits for it (or, with `&& exit`, leaves it behind).
RANK = "{py} -c 'import time; time.sleep(600)' & echo $! > {pid}; wait"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(path: Path, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_stage_that_leaves_a_rank_behind_has_it_ended(tmp_path):
    pid_file = tmp_path / "rank.pid"
    run_stage(["sh", "-c", RANK.format(py=sys.executable, pid=pid_file).replace("; wait", "")], tmp_path, os.environ)
    rank = _wait_for(pid_file)
    assert _gone(rank), "the rank outlived its stage"


def test_sigterm_to_the_loop_ends_the_stage_and_its_ranks(tmp_path):
    pid_file = tmp_path / "rank.pid"
    loop = ("import os, sys; from rounds.stage_process import run_stage; "
            "run_stage(['sh', '-c', sys.argv[1]], '.', os.environ)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", loop, RANK.format(py=sys.executable, pid=pid_file)], cwd=REPO,
                            env=cpu_env(1))  # fmt: skip
    try:
        rank = _wait_for(pid_file)
        assert _alive(rank) and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM  # the loop ends with the signal's status
        assert _gone(rank), "the rank outlived the loop"
    finally:
        proc.kill()
