"""The benchmark suite: the work counts behind each ideal, `run_all.py --quick`, and the GPU check run on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from benchmarks.ideal import Shape, mpo_memory_ideal, mpo_step_flops, sampling_ideal, scoring_ideal
from benchmarks.run_all import correctness_figures, run_script
from common.tiny_vlm import TinyVLMSpec, build_config, build_processor

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}


@pytest.mark.parametrize("preset", ["small", "7b"])
def test_shape_counts_the_models_parameters(preset):
    spec = TinyVLMSpec.preset(preset)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(build_config(spec, build_processor(spec).tokenizer))
    shape = Shape.from_spec(spec)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.vision_params == sum(p.numel() for p in model.model.visual.parameters())


def test_ideals_are_one_without_sharing_and_grow_with_k():
    shape = Shape.from_spec(TinyVLMSpec.preset("7b"))
    # one candidate: the prompt is encoded once either way (causal attention over prompt + response is the same work)
    assert scoring_ideal(shape, 1, 1296, 1340, 50)["ideal_speedup"] == pytest.approx(1.0)
    assert sampling_ideal(shape, 1, 1296, 1340, 64)["ideal_speedup"] == pytest.approx(1.0)
    k4, k8 = (scoring_ideal(shape, k, 1296, 1340, 50)["ideal_speedup"] for k in (4, 8))
    assert 1 < k4 < k8 < 8
    # MPO: TRL runs 2 policy rows (fwd + bwd) and 2 reference rows; a pair with no image and no prompt is pure
    # response work, where ours = 3 x 2R and TRL = 2 x 3R + 2R: ideal 8/6
    step = mpo_step_flops(shape, 0, 0, 1, checkpointing=False)
    assert step["ideal_speedup"] == pytest.approx(8 / 6, rel=1e-6)
    assert mpo_step_flops(shape, 1296, 1340, 50, checkpointing=True)["ideal_speedup"] > 2
    mem = mpo_memory_ideal(shape, 2, 1296, 1340, 50, bytes_per=2, checkpointing=True)
    assert 0.7 < mem["ideal_memory_ratio"] < 1  # the reference copy (1 of 5 bytes per param) dominates


def test_an_absent_benchmark_is_reported_not_present(tmp_path):
    status = run_script("benchmarks/no_such_bench.py", [], "--output", tmp_path / "x.json", dict(os.environ))
    assert status["status"] == "not present" and "no_such_bench.py" in status["detail"]


def test_run_all_quick_writes_json_and_table(tmp_path):
    cmd = [sys.executable, "benchmarks/run_all.py", "--quick", "--output_dir", str(tmp_path),
           "--only", "scoring", "sampling"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "results.json").read_text())
    meta = result["meta"]
    assert meta["command"].startswith("python benchmarks/run_all.py --quick")
    for key in ("cpu", "cores", "memory_gib", "torch", "transformers", "trl", "deepspeed", "git_sha"):
        assert meta["machine"][key], key
    assert len(meta["load_start"]) == 3
    names = {f["benchmark"] for f in result["figures"]}
    assert {"scoring", "sampling"} <= names
    for f in result["figures"]:
        assert f["ratio"] > 0
        if f["benchmark"] in ("scoring", "sampling"):
            assert f["ideal"] > 1 and f["of_ideal"] == pytest.approx(f["ratio"] / f["ideal"])
    # the scores and samples behind the ratios agree between the two paths
    assert meta["benchmarks"]["scoring"]["result"]["results"][0]["max_abs_diff"] < 1e-3
    assert all(r["same_samples"] for r in meta["benchmarks"]["sampling"]["result"]["rows"])
    table = (tmp_path / "results.md").read_text()
    assert "| benchmark | figure | shape | baseline | ours | measured ratio | ideal ratio | measured / ideal |" in table
    assert table.count("| scoring |") == 1 and table.count("| sampling |") == 1


def test_gpu_check_runs_on_cpu_with_the_small_preset(tmp_path):
    cmd = ["bash", "benchmarks/gpu_check.sh", "--preset", "small", "--device", "cpu", "--output_dir", str(tmp_path),
           "--k", "2", "--groups", "1", "--new_tokens", "2", "--steps", "1", "--pairs_per_step", "1",
           "--image_size", "112"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True, timeout=600)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    assert not (tmp_path / "model").exists()  # the random weights are not left behind
    figures = {f["figure"].split(",")[0].split(":")[0]: f for f in summary["figures"]}
    assert set(figures) == {"group-aware vs naive", "shared prefill vs generate(num_return_sequences)", "step",
                            "peak memory"}  # fmt: skip
    for f in figures.values():
        assert f["ratio"] > 0 and f["ideal"] and f["of_ideal"] == pytest.approx(f["ratio"] / f["ideal"])
    mpo = summary["mpo"]
    assert mpo["mode"] == "full fine-tune, vision tower frozen" and summary["mpo_mode"] == "full"
    for side in ("ours", "trl"):
        s = mpo[side]
        assert s["step_s"] > 0 and s["peak_memory_gib"] > 0 and s["mfu"] is None  # no peak FLOPS known for a CPU
        assert s["tokens_per_s"] == pytest.approx(mpo["pairs_per_step"] * mpo["tokens_per_pair"] / s["step_s"])
    assert mpo["ours"]["model_tflops_per_step"] < mpo["trl"]["model_tflops_per_step"]
    mpo_json = json.loads((tmp_path / "mpo.json").read_text())
    assert mpo_json["same_loss_abs_diff"] < 1e-4 and mpo_json["ours"]["gradient_checkpointing"]
    assert summary["vllm"]["status"].startswith("skipped")
    assert "| trl |" in (tmp_path / "gpu_check.md").read_text()


def test_bench_correctness_measures_both_rules_on_the_same_labelled_mix(tmp_path):
    """A small mix: the verifier agrees with the generator's labels (the old rule does not), a third is multiple
    choice, a few percent needs math-verify; both table rows come out."""
    args = ["--prompts", "48", "--k", "4", "--math_verify_judgments", "16"]
    status = run_script("benchmarks/bench_correctness.py", args, "--output", tmp_path / "c.json", ENV, timeout=600)
    assert status["status"] == "ok", status
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["judgments"] == 192 and r["multiple_choice_share"] == pytest.approx(1 / 3)
    assert r["ours_agreement"] == 1.0 and r["old_agreement"] < 0.8
    assert 0 < r["symbolic_share"] < 0.2 and r["math_verify_judgments"] == 16
    rows = correctness_figures(r)
    assert [f.ratio for f in rows] == [r["ours_per_cpu_s"] / r["old_per_cpu_s"], r["ratio_to_math_verify"]]


def _fake_python(path: Path, name: str) -> None:
    """An executable `python` that prints which one it is and its arguments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{name} $*"\n')
    path.chmod(0o755)


def test_gpu_check_sh_uses_the_project_venv_unless_python_is_given(tmp_path):
    """After `make install` the user runs `bash benchmarks/gpu_check.sh` without activating `.venv`: the script must
    take `.venv/bin/python` (where torch is), not the `python` on PATH; `PYTHON=...` still wins."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "gpu_check.sh").write_text((REPO / "benchmarks" / "gpu_check.sh").read_text())
    _fake_python(tmp_path / "bin" / "python", "path-python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"

    def run(**extra: str) -> str:
        cmd = ["bash", str(repo / "benchmarks" / "gpu_check.sh"), "--preset", "small"]
        proc = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, check=True, timeout=30)
        return proc.stdout.strip()

    assert run() == "path-python benchmarks/gpu_check.py --preset small"  # no .venv: python on PATH
    _fake_python(repo / ".venv" / "bin" / "python", "venv-python")
    assert run() == "venv-python benchmarks/gpu_check.py --preset small"
    _fake_python(tmp_path / "chosen", "chosen-python")
    assert run(PYTHON=str(tmp_path / "chosen")) == "chosen-python benchmarks/gpu_check.py --preset small"
