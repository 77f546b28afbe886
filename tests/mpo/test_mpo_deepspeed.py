"""MPO under the real `deepspeed` launcher on CPU: ZeRO-2 and ZeRO-3, 1 and 2 processes, resume after a kill, LoRA.

Eight launcher runs, each checking several things (a run costs ~20 s).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from common.distributed import free_port
from tests.launch import REPO, cpu_env, run_deepspeed
from tests.resume import max_weight_diff

RECIPE = REPO / "recipes" / "mpo_qwen.py"
PROBE = REPO / "tests" / "scripts" / "ds_mpo_run.py"
TINY_CONFIG = REPO / "recipes" / "configs" / "mpo_tiny_cpu.yaml"
pytestmark = pytest.mark.deepspeed


def _args(model, data, out, zero, *extra):
    return ["--config", str(TINY_CONFIG), "--model_name_or_path", str(model), "--train_data", str(data),
            "--output_dir", str(out), "--deepspeed", str(REPO / "recipes" / "deepspeed" / f"{zero}.json"),
            "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", *extra]  # fmt: skip


def _history(out):
    return json.loads((Path(out) / "mpo_history.json").read_text())["train"]


def _probe(out, rank):
    return json.loads((Path(out) / "probe" / f"rank{rank}.json").read_text())


def _weights(path):
    """The state dict as transformers loads it (so keys do not depend on the on-disk layout)."""
    return AutoModelForImageTextToText.from_pretrained(path).state_dict()


def _disk_keys(path):
    return set(load_file(str(Path(path) / "model.safetensors")))


def _changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return sum(not torch.equal(before[k], after[k]) for k in keys), len(keys)


def _kill_after_checkpoint_2_and_resume(model, data, out, zero, *extra):
    """The run killed (SIGKILL) right after checkpoint-2 is written, then the same command with
    `--resume_from_checkpoint true`."""
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--master_port", str(free_port()), "--num_gpus", "1",
           str(PROBE), *_args(model, data, out, zero, *extra)]  # fmt: skip
    env = {**cpu_env(1), "MPO_TEST_KILL_AFTER_SAVE": "2"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    run_deepspeed(RECIPE, _args(model, data, out, zero, *extra, "--resume_from_checkpoint", "true"), nprocs=1)


def _assert_resume_equals_uninterrupted(full, resumed):
    a, c = _history(full), _history(resumed)
    # The resumed history holds steps 1-2 restored from checkpoint-2, then the steps it ran.
    assert [h["step"] for h in a] == [1, 2, 3, 4] and [h["step"] for h in c] == [1, 2, 3, 4]
    for ha, hc in zip(a[2:], c[2:]):  # the next steps after resume equal the uninterrupted run's
        assert hc["loss"] == pytest.approx(ha["loss"], abs=1e-6)
        assert hc["bco_delta"] == pytest.approx(ha["bco_delta"], rel=1e-5, abs=1e-7)
    assert json.loads((Path(resumed) / "run_meta.json").read_text())["resumed_from"].endswith("checkpoint-2")
    assert max_weight_diff(resumed, full) <= 1e-6  # the final weights, backbone included


def test_zero2_one_process_resume_after_kill(tiny_vlm_path, toy_data, tmp_path):
    # A: uninterrupted, 4 steps. B: the same, killed right after checkpoint-2, then resumed.
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_deepspeed(RECIPE, _args(tiny_vlm_path, toy_data["pairs_train"], full, "zero2"), nprocs=1)
    _kill_after_checkpoint_2_and_resume(tiny_vlm_path, toy_data["pairs_train"], killed, "zero2")
    _assert_resume_equals_uninterrupted(full, killed)
    a = _history(full)
    # delta moves, is saved in the checkpoint and restored: step 3 folds into step 2's value.
    deltas = [h["bco_delta"] for h in a]
    assert abs(deltas[0]) < 1e-4 and len(set(deltas)) == 4  # step 1: policy == reference, rewards 0
    saved = json.loads((killed / "checkpoint-2" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["RunningDelta"]["args"]["value"] == pytest.approx(deltas[1], rel=1e-5)
    assert saved["RunningDelta"]["args"]["steps"] == 2
    # The final model loads with transformers and has moved away from the start.
    changed, total = _changed(_weights(tiny_vlm_path), _weights(full), "model.language_model")
    assert changed == total


def test_zero2_two_processes_delta_in_sync_and_sharded_reference(tiny_vlm_path, toy_data, tmp_path):
    out, single = tmp_path / "run", tmp_path / "single"
    run_deepspeed(PROBE, _args(tiny_vlm_path, toy_data["pairs_train"], out, "zero2",
                               "--ref_logps_dir", str(tmp_path / "ref2")), nprocs=2)  # fmt: skip
    r0, r1 = _probe(out, 0), _probe(out, 1)
    assert [r["step"] for r in r0] == [1, 2, 3, 4]
    assert [r["bco_delta"] for r in r0] == [r["bco_delta"] for r in r1]  # all-reduced: identical on both ranks
    assert r0[-1]["bco_delta"] != r0[0]["bco_delta"]
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["ref_logps"]["cached"] is False and meta["world_size"] == 2
    # The 2-rank sharded pass wrote the same numbers as a 1-process pass.
    from common.io import read_records
    from common.processor import load_processor
    from mpo.ref_logps import attach_ref_logps

    ds = read_records(toy_data["pairs_train"])
    one, _ = attach_ref_logps(ds, toy_data["pairs_train"], str(tiny_vlm_path), load_processor(str(tiny_vlm_path)),
                              256, torch.float32, single)  # fmt: skip
    two = Dataset.from_parquet(meta["ref_logps"]["path"])
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        assert max(abs(x - y) for x, y in zip(one[col], two[col])) <= 1e-4


def test_zero3_two_processes_lora_saves_and_reloads(tiny_vlm_path, toy_data, tmp_path):
    # Batch 1 per rank: ranks often get an image pair and a text-only pair in the same step (ZeRO-3 must not hang).
    out = tmp_path / "lora"
    run_deepspeed(PROBE, _args(tiny_vlm_path, toy_data["pairs_train"], out, "zero3", "--use_lora", "true",
                               "--per_device_train_batch_size", "1", "--learning_rate", "1e-2",
                               "--lora_r", "4", "--lora_alpha", "8"), nprocs=2)  # fmt: skip
    r0, r1 = _probe(out, 0), _probe(out, 1)
    assert [r["bco_delta"] for r in r0] == [r["bco_delta"] for r in r1]
    from peft import PeftModel

    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path)
    adapted = PeftModel.from_pretrained(base, out / "adapter")
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and all(".language_model." in n for n, _ in adapted.named_parameters() if "lora_" in n)
    assert any(p.abs().sum() > 0 for p in lora_b)  # trained (LoRA B starts at zero)
    changed, total = _changed(_weights(tiny_vlm_path), _weights(out), "model.language_model.layers")
    assert changed > 0  # the merged final model loads with transformers and carries the update


def test_zero3_one_process_frozen_vision_checkpointing_and_resume(tiny_vlm_path, toy_data, tmp_path):
    out, killed = tmp_path / "z3", tmp_path / "killed"
    flags = ("--freeze_vision_tower", "true", "--gradient_checkpointing", "true")
    run_deepspeed(RECIPE, _args(tiny_vlm_path, toy_data["pairs_train"], out, "zero3", *flags), nprocs=1)
    _kill_after_checkpoint_2_and_resume(tiny_vlm_path, toy_data["pairs_train"], killed, "zero3", *flags)
    _assert_resume_equals_uninterrupted(out, killed)
    history = _history(out)
    assert len(history) == 4 and history[-1]["loss"] < history[0]["loss"]
    before, after = _weights(tiny_vlm_path), _weights(out)
    assert _disk_keys(out) == _disk_keys(tiny_vlm_path)  # saved in the standard layout, as the input was
    vision_blocks = [k for k in before if k.startswith("model.visual.") and ".merger." not in k]
    assert all(torch.equal(before[k], after[k]) for k in vision_blocks)
    changed, total = _changed(before, after, "model.visual.merger")
    assert changed == total
    changed, total = _changed(before, after, "model.language_model")
    assert changed == total
