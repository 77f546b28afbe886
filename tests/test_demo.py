"""`make demo` end to end at a small size: every stage runs through its real command and the summary is filled."""

import json
import re
import subprocess
import sys

import pytest

from tests.launch import REPO, cpu_env


@pytest.mark.deepspeed
def test_demo_runs_every_stage(tmp_path):
    root = tmp_path / "demo"
    args = ["--root", root, "--n_train", 32, "--n_eval", 8, "--warm_start_steps", 3, "--rounds", 2,
            "--prompts_per_round", 8, "--mpo_epochs", 1, "--selection", "reward"]  # fmt: skip
    proc = subprocess.run([sys.executable, "recipes/demo.py", *map(str, args)], cwd=REPO, env=cpu_env(1),
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"reward model, held-out pairwise accuracy: (0|1)\.\d{3}", out)
    result = json.loads((root / "rounds" / "result.json").read_text())
    rows = re.findall(
        r"^\| (\d+) \| (\S+) \| (\S+) \| .* \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \| (-?[\d.]+) \| (-?[\d.]+) \| - \| [\d.]+ \| "
        r"[\d.]+ \|$",
        out,
        re.M,
    )
    assert [int(r[0]) for r in rows] == list(range(result["rounds_done"] + 1))  # round 0 = the warm-started policy
    assert [r[1] for r in rows[:2]] == ["-", "0"]  # round 1 started from round 0
    assert rows[1][2] != "-" and int(rows[1][2]) > 0  # round 1 trained on reward-ranked pairs
    for r in rows:  # every held-out rate with its Wilson 95% interval around it
        assert 0.0 <= float(r[4]) <= float(r[3]) <= float(r[5]) <= 1.0
    assert re.search(r"held-out correct, round 0 -> kept round: [\d.]+ \[[\d.]+, [\d.]+\] -> [\d.]+ \[", out)
    assert f"kept: round {result['best_round']}" in out
    again = subprocess.run([sys.executable, "recipes/demo.py", "--root", str(root)], cwd=REPO, env=cpu_env(1),
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode != 0 and "exists" in again.stderr
