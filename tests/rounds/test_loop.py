"""The loop end to end on the tiny model: a planted reward-hacking reward model trips the alarm and the best round is
kept; a run SIGKILLed at a seeded random point of round 2 resumes without redoing round 1 and ends with the weights
of an uninterrupted run."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import rounds.loop
from common.checkpoints import COMPLETE_FILE, incomplete_reason
from common.run_folder import RunFolderError
from reward.serving.process import server_process
from rounds.config import RoundsConfig
from rounds.loop import run_rounds
from tests.launch import REPO, cpu_env


class LengthScorer:
    """A planted reward model: reward = sign * characters / 10, whatever the answer says."""

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def score_groups(self, groups):
        return [[self.sign * len(r) / 10 for r in g.responses] for g in groups]


def _weights(policy: str) -> dict:
    return load_file(str(Path(policy) / "model.safetensors"))


def test_planted_reward_hacking_trips_the_alarm_and_keeps_the_best_round(rounds_args, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    build = [*rounds_args["build_pairs_args"], "--num_samples", "4"]
    cfg = RoundsConfig(**{**rounds_args, "num_rounds": 3, "build_pairs_args": build, "report_to": "wandb",
                          "run_name": "hack", "mpo_args": ["--learning_rate", "2e-2", "--max_steps", "4"],
                          "output_dir": str(tmp_path / "rounds")})  # fmt: skip
    # The training reward model likes long answers (in characters): the tiny policy learns to repeat its longest
    # token. The held-out reward model (never trained on) likes short ones.
    result = run_rounds(cfg, scorer=LengthScorer(1.0), heldout_scorer=LengthScorer(-1.0))
    out = Path(cfg.output_dir)
    stop = result["stopped"]
    assert stop and stop["reason"] == "reward hacking"
    r = stop["round"]
    records = {k: json.loads((out / f"round-{k:02d}" / "round.json").read_text()) for k in range(r + 1)}
    prev, cur = records[r - 1]["eval"], records[r]["eval"]
    assert cur["reward_mean"] > prev["reward_mean"]  # the evidence: reward up, held-out reward model down
    assert prev["heldout_reward_mean"] - cur["heldout_reward_mean"] > cfg.hacking_tolerance
    assert stop["evidence"]["fell"]["heldout_reward_mean"] == [prev["heldout_reward_mean"], cur["heldout_reward_mean"]]
    assert not (out / f"round-{r + 1:02d}").exists()  # the loop stopped there
    heldout = {k: rec["eval"]["heldout_reward_mean"] for k, rec in records.items()}
    assert result["best_round"] == max(heldout, key=heldout.get) < r
    assert result["policy"] == records[result["best_round"]]["policy"]
    assert "REWARD-HACKING ALARM" in (out / "rounds.log").read_text()
    assert "reward-hacking alarm" in (out / "report.md").read_text()
    assert all((out / f"rounds_{name}.png").stat().st_size > 0 for name in ("metrics", "pair_rewards", "mpo_losses"))
    stage_runs, loop_runs = [list((d / "wandb").glob("offline-run-*/*.wandb")) for d in (tmp_path, out)]
    assert len(stage_runs) == r and len(loop_runs) == 1  # one MPO run per round and the loop's, all in one group
    assert len(list(loop_runs[0].parent.glob("files/media/images/*.png"))) == 3  # the report's plots
    for _ in range(100):  # wandb's service writes the offline file asynchronously
        if all(b"hack" in p.read_bytes() for p in stage_runs + loop_runs):
            break
        time.sleep(0.1)
    assert all(b"hack" in p.read_bytes() for p in stage_runs + loop_runs)  # the group name


def _plant_bad_round(monkeypatch, bad: str = "round-01") -> None:
    """Round 1's held-out answers count as 90% degenerate (the policy itself is untouched)."""
    real = rounds.loop.evaluate_round

    def evaluate(policy, *args, **kwargs):
        metrics = real(policy, *args, **kwargs)
        return {**metrics, "degenerate_rate": 0.9} if bad in str(policy) else metrics

    monkeypatch.setattr(rounds.loop, "evaluate_round", evaluate)


def _meta(folder: Path, config: str, field: str) -> str:
    return json.loads((folder / "run_meta.json").read_text())[config][field]


def test_an_unhealthy_round_is_not_the_next_start_under_rollback(rounds_args, tmp_path, monkeypatch):
    _plant_bad_round(monkeypatch)
    initial = rounds_args["policy_name_or_path"]
    cfg = RoundsConfig(**{**rounds_args, "stop_on_hacking": False, "on_unhealthy": "rollback",
                          "output_dir": str(tmp_path / "rounds")})  # fmt: skip
    result = run_rounds(cfg)
    out = Path(cfg.output_dir)
    r1, r2 = (json.loads((out / f"round-0{r}" / "round.json").read_text()) for r in (1, 2))
    assert "degenerate held-out answers: 0.900 > 0.2" in r1["health"][0]
    assert r2["start_round"] == 0 and r2["start_policy"] == initial  # not round 1's policy
    assert _meta(out / "round-02" / "build", "BuildPairsConfig", "policy_name_or_path") == initial  # sampled from it
    assert _meta(out / "round-02" / "mpo", "MPOConfig", "model_name_or_path") == initial  # trained from it
    unhealthy = result["unhealthy_rounds"]  # round 2 of this random tiny policy may have warnings of its own
    assert unhealthy[0] == 1 and result["best_round"] not in unhealthy  # the kept policy is a healthy round's
    assert "round 2: starts from round 0's policy: round 1 is unhealthy" in (out / "rounds.log").read_text()
    report = (out / "report.md").read_text()
    assert "- round 2: started from round 0's policy, not round 1's" in report
    assert f"Unhealthy rounds: {', '.join(map(str, unhealthy))}." in report
    assert re.search(r"^\| 2 \| 0 \| ", report, re.M)  # the table's `from` column


def test_an_unhealthy_round_stops_the_loop_under_stop(rounds_args, tmp_path, monkeypatch):
    _plant_bad_round(monkeypatch)
    cfg = RoundsConfig(**{**rounds_args, "stop_on_hacking": False, "on_unhealthy": "stop",
                          "output_dir": str(tmp_path / "rounds")})  # fmt: skip
    result = run_rounds(cfg)
    assert result["stopped"]["reason"] == "MPO health" and result["stopped"]["round"] == 1
    assert result["best_round"] == 0 and not (tmp_path / "rounds" / "round-02").exists()


@pytest.fixture(scope="module")
def clean_run(rounds_args, tmp_path_factory):
    """The uninterrupted run the killed ones must match."""
    args = {**rounds_args, "stop_on_hacking": False}  # a random policy: the alarm may fire on noise
    out = tmp_path_factory.mktemp("clean") / "rounds"
    return args, out, run_rounds(RoundsConfig(**{**args, "output_dir": str(out)}))


# Seed 1 kills in round 2's pair building; seed 5 inside its MPO stage, once a checkpoint is complete. What the resumed
# run must do follows from what is on disk at the kill, not from when it came; no fixed deadline (a loaded machine
# reaches any): the waits end with the run.
@pytest.mark.parametrize("seed", [1, 5])
def test_killed_in_round_2_resumes_without_redoing_round_1(clean_run, tmp_path, seed):
    args, clean_out, clean = clean_run
    rng = random.Random(seed)
    stage, delay = rng.choice(["prompts", "pairs", "mpo", "eval"]), rng.uniform(0.0, 1.0)
    out = tmp_path / "rounds"
    args = {**args, "output_dir": str(out)}
    (tmp_path / "rounds.yaml").write_text(yaml.safe_dump(args))
    cmd = [sys.executable, "recipes/mpo_rounds.py", "--config", str(tmp_path / "rounds.yaml")]
    env = {**cpu_env(1), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    order = ["prompts", "pairs", "mpo", "eval"]
    state, mpo = out / "round-02" / "state.json", out / "round-02" / "mpo"
    while proc.poll() is None:
        seen = json.loads(state.read_text())["stage"] if state.exists() else None
        started = seen is not None and order.index(seen) >= order.index(stage)
        if started and stage == "mpo" and seen == "mpo":  # inside MPO: once its first checkpoint is complete
            if list(mpo.glob(f"checkpoint-*/{COMPLETE_FILE}")):
                time.sleep(delay / 4)
                break
        elif started:
            time.sleep(delay)
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists()
    killed_in = json.loads(state.read_text())["stage"]
    markers = {"prompts": "prompts", "pairs": "build/run_meta.json", "mpo": "mpo/run_meta.json", "eval": "eval.json"}
    finished = (out / "round-02" / markers[killed_in]).exists()  # killed after the stage's output, before the next
    complete = [c for c in mpo.glob("checkpoint-*") if incomplete_reason(c) is None]  # what a resume can use
    resumable = killed_in == "mpo" and not finished and bool(complete)
    round1 = (out / "round-01" / "round.json").stat().st_mtime_ns
    log_before = (out / "rounds.log").read_text()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    resumed = (out / "rounds.log").read_text()[len(log_before) :]
    assert "round 1: already done" in resumed and "round 1: prompts: start" not in resumed
    assert f"round 2: {killed_in}: {'already done' if finished else 'start'}" in resumed  # at the stage it was in
    assert resumable == ("round 2: mpo: resuming from the last complete checkpoint" in resumed)
    if resumable:
        newest = max(complete, key=lambda c: int(c.name.split("-")[1]))
        assert f"complete checkpoint, {newest}" in resumed
    assert "round 1: mpo: start" not in resumed and (out / "round-01" / "round.json").stat().st_mtime_ns == round1
    result = json.loads((out / "result.json").read_text())
    assert result["rounds_done"] == clean["rounds_done"] == 2
    final, ref = _weights(str(out / "round-02" / "mpo")), _weights(str(clean_out / "round-02" / "mpo"))
    assert final.keys() == ref.keys()
    assert max((final[k] - ref[k]).abs().max().item() for k in ref) <= 1e-6
    assert (out / "report.md").read_text().replace(str(out), "X") == (clean_out / "report.md").read_text().replace(str(clean_out), "X")  # fmt: skip


def test_a_rerun_resumes_only_the_same_run(clean_run):
    args, out, clean = clean_run
    log_before = (out / "rounds.log").read_text()
    assert run_rounds(RoundsConfig(**{**args, "output_dir": str(out)})) == json.loads(json.dumps(clean))
    rerun = (out / "rounds.log").read_text()[len(log_before) :]
    assert "round 1: already done" in rerun and "round 2: already done" in rerun and ": start" not in rerun
    with pytest.raises(RunFolderError, match="config field hacking_tolerance: 0.05 -> 0.5"):
        run_rounds(RoundsConfig(**{**args, "output_dir": str(out), "hacking_tolerance": 0.5}))


def test_reward_server_scores_like_the_local_reward_model(clean_run, tiny_reward_path, tmp_path):
    """Round 1 scored through the reward server (recipes/serve_reward.py) equals round 1 scored locally; a rerun
    through another replica of the same model resumes (the run records the served model, not the URLs)."""
    args, clean_out, _ = clean_run
    with server_process(tiny_reward_path, "--device", "cpu") as (_, url):
        cfg = {**args, "num_rounds": 1, "reward_model_name_or_path": None, "reward_url": [url],
               "output_dir": str(tmp_path / "rounds")}  # fmt: skip
        result = run_rounds(RoundsConfig(**cfg))
    with server_process(tiny_reward_path, "--device", "cpu") as (_, other_url):
        log_before = (tmp_path / "rounds" / "rounds.log").read_text()
        assert run_rounds(RoundsConfig(**{**cfg, "reward_url": [other_url]})) == json.loads(json.dumps(result))
        rerun = (tmp_path / "rounds" / "rounds.log").read_text()[len(log_before) :]
        assert "round 1: already done" in rerun and ": start" not in rerun
    served, local = [json.loads((d / "round-01" / "round.json").read_text()) for d in (tmp_path / "rounds", clean_out)]
    assert served["stats"]["pairs"] == local["stats"]["pairs"] > 0
    for side in ("chosen_scores", "rejected_scores"):
        assert served["stats"][side] == pytest.approx(local["stats"][side], abs=1e-4)
    assert served["eval"]["rewards"] == pytest.approx(local["eval"]["rewards"], abs=1e-4)
    assert served["eval"]["accuracy"] == local["eval"]["accuracy"]
