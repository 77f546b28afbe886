"""The distributed harness: a real `deepspeed` launcher run with 2 CPU processes trains the tiny VLM."""

import json
import math

import pytest

from tests.launch import REPO, run_deepspeed


@pytest.mark.deepspeed
def test_two_process_zero2_training_step(tiny_vlm_path, toy_data, tmp_path):
    out = tmp_path / "run"
    run_deepspeed(REPO / "tests/scripts/ds_tiny_step.py", [str(tiny_vlm_path), str(toy_data["pairs_train"]), str(out),
                  "zero2"], nprocs=2)  # fmt: skip
    result = json.loads((out / "result.json").read_text())
    assert result["deepspeed"] is True  # not silently plain DDP
    assert result["world_size"] == 2
    assert len(result["losses"]) == 3 and all(math.isfinite(x) for x in result["losses"])
    assert result["changed"] == result["n_params"]  # every parameter, vision tower included, was updated
