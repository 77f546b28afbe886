"""The recipe as users run it: SIGKILL at several points then rerun, and a 2-process sharded run, each equal to an
uninterrupted 1-process run (same records, same scores, same image bytes)."""

import os
import signal
import subprocess
import sys
import time

import datasets
import pytest

from tests.launch import REPO, cpu_env, run_deepspeed

RECIPE = REPO / "recipes" / "build_pairs.py"


def recipe_args(toy_data, policy, reward, out):
    return ["--config", str(REPO / "recipes/configs/build_pairs_tiny.yaml"), "--prompts", str(toy_data["prompts_train"]),
            "--policy_name_or_path", str(policy), "--reward_model_name_or_path", str(reward), "--output_dir", str(out),
            "--progress", "false"]  # fmt: skip


def env():
    e = cpu_env(1)
    e["OMP_NUM_THREADS"] = "1"  # the same float reduction order in every run, 1 or 2 processes
    return e


def finished_chunks(out):
    return len(list((out / "chunks").glob("chunk-*.json"))) if (out / "chunks").exists() else 0


def run_and_kill_after(args, out, n_chunks, timeout=120):
    """Start the recipe, SIGKILL it once `n_chunks` chunks are finished; return how many were finished then."""
    proc = subprocess.Popen([sys.executable, str(RECIPE), *args], cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + timeout
    try:
        while finished_chunks(out) < n_chunks:
            assert proc.poll() is None, f"the run ended (rc={proc.returncode}) before {n_chunks} chunks were done"
            assert time.time() < deadline, "timed out waiting for chunks"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return finished_chunks(out)


def rows(path):
    ds = datasets.load_from_disk(str(path))
    return [dict(r) for r in ds.cast_column("images", datasets.List(datasets.Image(decode=False)))]


@pytest.fixture(scope="module")
def reference(toy_data, tiny_vlm_path, tiny_reward_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    subprocess.run([sys.executable, str(RECIPE), *recipe_args(toy_data, tiny_vlm_path, tiny_reward_path, out)],
                   cwd=REPO, env=env(), check=True, capture_output=True)  # fmt: skip
    return rows(out / "pairs")


def test_sigkill_at_several_points_then_rerun_equals_uninterrupted(reference, toy_data, tiny_vlm_path,
                                                                     tiny_reward_path, tmp_path):  # fmt: skip
    out = tmp_path / "out"
    args = recipe_args(toy_data, tiny_vlm_path, tiny_reward_path, out)
    assert len(reference) > 0
    done_first = run_and_kill_after(args, out, 1)
    done_second = run_and_kill_after(args, out, done_first + 2)
    assert 0 < done_first < done_second < 8 and not (out / "pairs").exists()  # 32 prompts / chunk_size 4 = 8 chunks
    subprocess.run([sys.executable, str(RECIPE), *args], cwd=REPO, env=env(), check=True, capture_output=True)
    assert rows(out / "pairs") == reference  # no lost, no duplicated, no changed pair


@pytest.mark.deepspeed
def test_two_process_sharded_run_equals_one_process(reference, toy_data, tiny_vlm_path, tiny_reward_path, tmp_path):
    out = tmp_path / "out"
    run_deepspeed(RECIPE, recipe_args(toy_data, tiny_vlm_path, tiny_reward_path, out), nprocs=2)
    assert rows(out / "pairs") == reference
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["chunks"] == 8 and report["pairs"] == len(reference)
