"""Reward training under the real `deepspeed` launcher on CPU: ZeRO-2 and ZeRO-3, 1 and 2 processes.

Each launcher run costs ~15-40 s, so each one checks several things at once.
"""

import json
import re
import shutil

import pytest
import torch

from common.checkpoints import mark_complete
from tests.launch import REPO, run_deepspeed
from tests.resume import max_weight_diff
from tests.reward.conftest import check_export

SCRIPT = REPO / "tests/scripts/ds_train_reward.py"
RECIPE = REPO / "recipes/train_reward.py"


def _args(model, out, zero, stages, **kw):
    flags = {"model_name_or_path": model, "output_dir": out, "deepspeed": REPO / f"recipes/deepspeed/{zero}.json",
             "use_cpu": True, "stages": json.dumps(stages), "learning_rate": 1e-3, "logging_steps": 1,
             "max_length": 512, "report_to": "none", "seed": 0, **kw}  # fmt: skip
    return [x for k, v in flags.items() for x in (f"--{k}", *(map(str, v) if isinstance(v, list) else [str(v)]))]


def _losses(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["rank"], r["step"]): r["loss"] for r in rows}


@pytest.mark.deepspeed
def test_zero3_two_ranks_mixed_batches_resume_after_kill(
    tiny_vlm_path, mixed_pair_data, toy_data, tmp_path, monkeypatch
):
    """2 ranks, ZeRO-3, every step one text-only and one image rank; killed after step 3, rerun resumes from
    checkpoint-2 with the same step-3 loss, finishes both stages, and the export reloads to the same scores."""
    stages = [
        {"name": "s1", "datasets": {str(mixed_pair_data): 4.0}, "max_steps": 4},
        {"name": "s2", "datasets": {str(mixed_pair_data): 1.0}, "max_steps": 1, "learning_rate": 1e-4},
    ]
    args = _args(tiny_vlm_path, tmp_path / "run", "zero3", stages, save_steps=2,
                 eval_datasets=[toy_data["pairs_eval"]])  # fmt: skip
    monkeypatch.setenv("LOSS_FILE", str(tmp_path / "killed.jsonl"))
    monkeypatch.setenv("KILL_AT_STEP", "3")
    with pytest.raises(AssertionError, match="rc="):
        run_deepspeed(SCRIPT, args, nprocs=2)
    killed = _losses(tmp_path / "killed.jsonl")
    assert sorted(killed) == [(rank, step) for rank in (0, 1) for step in (0, 1, 2)]
    assert not (tmp_path / "run/s1/model").exists()

    monkeypatch.setenv("LOSS_FILE", str(tmp_path / "resumed.jsonl"))
    monkeypatch.delenv("KILL_AT_STEP")
    run_deepspeed(SCRIPT, args, nprocs=2)
    resumed = [json.loads(line) for line in (tmp_path / "resumed.jsonl").read_text().splitlines()]
    first = {(r["rank"], r["step"]): r["loss"] for r in resumed[:4]}  # stage s1 steps 2 and 3 on both ranks
    assert sorted(first) == [(rank, step) for rank in (0, 1) for step in (2, 3)]
    for rank in (0, 1):  # the step after the checkpoint gives the loss the uninterrupted run had
        assert first[(rank, 2)] == pytest.approx(killed[(rank, 2)], abs=1e-6)
    s1 = json.loads((tmp_path / "run/s1/model/stage_summary.json").read_text())
    assert s1["resumed_from"].endswith("checkpoint-2") and s1["deepspeed"] and s1["world_size"] == 2
    assert s1["trainable_params"]["language_model"] > 0 and s1["trainable_params"]["vision_tower"] == 0
    s2 = check_export(tmp_path / "run/s2/model", toy_data["pairs_eval"])  # gathered from ZeRO-3 shards
    assert s2["init_from"] == str(tmp_path / "run/s1/model")


@pytest.mark.deepspeed
def test_zero2_two_ranks_recipe_counts_skips_and_logs_to_wandb(tiny_vlm_path, dirty_pair_data, toy_data, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """The recipe itself, 2 ranks, ZeRO-2, two stages: bad and over-long pairs are counted in the summary, the reward
    metrics reach wandb (offline), and the export reloads to the scores the run evaluated."""
    stages = [
        {"name": "multimodal", "datasets": {str(dirty_pair_data): 1.0}, "max_steps": 2},
        {"name": "with_text", "datasets": {str(dirty_pair_data): 1.0}, "max_steps": 1, "learning_rate": 1e-4},
    ]
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = _args(tiny_vlm_path, tmp_path / "run", "zero2", stages, max_length=256, on_bad_record="skip",
                 report_to="wandb", eval_datasets=[toy_data["pairs_eval"]], per_device_train_batch_size=2)  # fmt: skip
    proc = run_deepspeed(RECIPE, args, nprocs=2)
    assert f"reward model: {tmp_path / 'run/with_text/model'}" in proc.stdout
    for stage in ("multimodal", "with_text"):
        summary = check_export(tmp_path / "run" / stage / "model", toy_data["pairs_eval"])
        assert summary["deepspeed"] and summary["world_size"] == 2 and summary["n_train_pairs"] == 8
        assert summary["skipped"]["by_reason"] == {"chosen: the response is empty": 1,
                                                   "length: pair longer than max_length": 1}  # fmt: skip
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # both stages log into one run
    logged = runs[0].read_bytes()
    for key in (b"train/loss", b"train/accuracy", b"train/margin", b"train/chosen_reward", b"eval/accuracy"):
        assert key in logged, key


@pytest.mark.deepspeed
@pytest.mark.parametrize("zero, lora", [("zero2", False), ("zero3", True)])
def test_one_rank_resume_equals_uninterrupted(zero, lora, tiny_vlm_path, toy_data, tmp_path, monkeypatch):
    """One process, uninterrupted vs killed after step 3 and rerun: steps 3 and 4 give the same losses and the exports
    the same weights. The ZeRO-3 run trains LoRA adapters, whose export merges them from the gathered shards; its
    checkpoint loads strictly (a copy with one adapter key swapped for another is refused, naming both)."""
    stages = [{"name": "s1", "datasets": {str(toy_data["pairs_train"]): 0.25}, "max_steps": 4}]
    losses = {}
    for run, name, kill in (("full", "full", None), ("killed", "killed", "3"), ("resumed", "killed", None)):
        args = _args(tiny_vlm_path, tmp_path / name, zero, stages, eval_datasets=[toy_data["pairs_eval"]], save_steps=2,
                     per_device_train_batch_size=4, use_lora=lora, lora_r=4)  # fmt: skip
        monkeypatch.setenv("LOSS_FILE", str(tmp_path / f"{run}.jsonl"))
        if kill:
            monkeypatch.setenv("KILL_AT_STEP", kill)
            with pytest.raises(AssertionError, match="rc="):
                run_deepspeed(SCRIPT, args, nprocs=1)
            if lora:
                _refuses_a_checkpoint_with_a_wrong_key(tmp_path, args)
        else:
            monkeypatch.delenv("KILL_AT_STEP", raising=False)
            run_deepspeed(SCRIPT, args, nprocs=1)
        losses[run] = _losses(tmp_path / f"{run}.jsonl")
    assert sorted(losses["resumed"]) == [(0, 2), (0, 3)]  # from checkpoint-2: the 3rd and 4th steps
    for key, loss in losses["resumed"].items():
        assert loss == pytest.approx(losses["full"][key], abs=1e-6), key
    summary = check_export(tmp_path / "full/s1/model", toy_data["pairs_eval"])
    assert summary["deepspeed"] and summary["world_size"] == 1 and summary["metrics"]["global_step"] == 4
    assert (summary["trainable_params"].get("lora", 0) > 0) == lora
    resumed = json.loads((tmp_path / "killed/s1/model/stage_summary.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert max_weight_diff(tmp_path / "killed/s1/model", tmp_path / "full/s1/model") <= 1e-6


def _refuses_a_checkpoint_with_a_wrong_key(tmp_path, args):
    """A copy of the killed LoRA run whose DeepSpeed checkpoint lacks one adapter weight and has an extra one: the
    rerun is refused naming both (the Trainer alone would load it with load_module_strict=False)."""
    copy = tmp_path / "wrong-key"
    shutil.copytree(tmp_path / "killed", copy)
    checkpoint = copy / "s1/checkpoint-2"
    (states,) = (checkpoint / "global_step2").glob("*model_states.pt")
    saved = torch.load(states, map_location="cpu", weights_only=False)
    dropped = next(k for k in saved["module"] if ".lora_B." in k)
    saved["module"]["base_model.model.extra.weight"] = saved["module"].pop(dropped)
    torch.save(saved, states)
    mark_complete(checkpoint)  # complete, so only the keys are wrong
    args = [str(copy) if a == str(tmp_path / "killed") else a for a in args]
    with pytest.raises(AssertionError, match=rf"missing key\(s\) \['{re.escape(dropped)}'\].*unexpected key\(s\) "
                                             r"\['base_model.model.extra.weight'\]"):  # fmt: skip
        run_deepspeed(SCRIPT, args, nprocs=1)
