"""`make demo` end to end at a small size: every stage runs through its real command and the summary is filled."""

import re
import subprocess
import sys

import pytest

from tests.launch import REPO, cpu_env


@pytest.mark.deepspeed
def test_demo_runs_every_stage(tmp_path):
    root = tmp_path / "demo"
    args = ["--root", root, "--n_train", 32, "--n_eval", 8, "--n_pair_prompts", 8, "--warm_start_steps", 3,
            "--mpo_steps", 3]  # fmt: skip
    proc = subprocess.run([sys.executable, "recipes/demo.py", *map(str, args)], cwd=REPO, env=cpu_env(1),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"reward model, held-out pairwise accuracy: (0|1)\.\d{3}", out)
    assert re.search(r"reward-ranked pairs: \d+ from 8 prompts, 32 candidates", out)
    rows = re.findall(r"\| mpo-round([01]) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (-?[\d.]+) \|", out)
    assert [(r[0], r[1]) for r in rows] == [("0", "0"), ("0", "3"), ("1", "0"), ("1", "3")]
    assert all(0.0 <= float(r[2]) <= 1.0 and 0.0 <= float(r[3]) <= 1.0 for r in rows)
    assert rows[1][2:] == rows[2][2:]  # round 1 starts from the policy round 0 ended with
    again = subprocess.run([sys.executable, "recipes/demo.py", "--root", str(root)], cwd=REPO, env=cpu_env(1),
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode != 0 and "exists" in again.stderr
