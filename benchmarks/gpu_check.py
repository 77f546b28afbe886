"""The GPU check: scoring, sampling and the MPO step at the real Qwen2.5-VL-7B shape on one GPU, in one call.

    bash benchmarks/gpu_check.sh --output_dir outputs/gpu_check                                # one H100/H200
    bash benchmarks/gpu_check.sh --preset small --device cpu --output_dir /tmp/gpu_check      # proves it runs

No network: the model is a random-weight Qwen2.5-VL of `TinyVLMSpec.preset(--preset)` (7b: the real architecture and
vocabulary), built on the device in bf16 and saved once under `--output_dir/model` (deleted at the end), then:

1. reward scoring, K candidates per group: group-aware vs naive (`bench_scoring.py`, reward model built in place
   from the preset), candidates/s;
2. sampling K: shared prefill vs `generate(num_return_sequences)` (`bench_sampling.py`), and vLLM if installed;
3. the MPO step: ours vs TRL `DPOTrainer` with the same loss list (`bench_mpo.py`), with gradient checkpointing and
   the vision tower frozen; a full fine-tune of the LM + projector when TRL's policy, reference and AdamW states fit
   the GPU, else LoRA (`--mode`); step time, tokens/s, MFU, peak GPU memory.

Images are `--image_size` px squares (7b: 1008 px = 1296 image tokens). Everything lands in `--output_dir`: each
benchmark's JSON, `gpu_check.json` (all figures) and `gpu_check.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ideal import Shape, mpo_step_flops  # noqa: E402
from benchmarks.run_all import (  # noqa: E402
    bench_env,
    machine,
    mpo_figures,
    run_script,
    sampling_figures,
    scoring_figures,
)
from common.tiny_vlm import TinyVLMSpec  # noqa: E402

# Dense bf16 tensor-core peak (no sparsity) by GPU name, for MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
DEFAULT_IMAGE_SIZE = {"7b": 1008, "small": 224, "tiny": 224}


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def choose_mode(mode: str, shape: Shape, device: str) -> tuple[str, dict]:
    """Full fine-tune of LM + projector if TRL's side (policy, reference, gradients, AdamW; bf16) fits in 85% of the
    GPU with room for activations, else LoRA."""
    trainable = shape.params - shape.vision_params + (4 * shape.v_hidden) ** 2 + 4 * shape.v_hidden * shape.hidden
    trl_gb = (2 * shape.params + 6 * trainable + 2 * shape.params) / 1e9  # weights, grads + 2 moments, reference
    info = {"trl_full_model_states_gb": round(trl_gb, 1), "trainable_params_full": trainable}
    if mode != "auto":
        return mode, info
    if not device.startswith("cuda"):
        return "full", info
    import torch

    total_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    info["gpu_memory_gb"] = round(total_gb, 1)
    return ("full" if trl_gb + 10 < 0.85 * total_gb else "lora"), info


def build_model(preset: str, device: str, dtype: str, path: Path) -> None:
    import torch

    from common.tiny_vlm import build_tiny_vlm

    model, processor = build_tiny_vlm(TinyVLMSpec.preset(preset), dtype=getattr(torch, dtype), device=device)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def vllm_rate(model_dir: Path, image_size: int, k: int, new_tokens: int) -> dict:
    """Candidates/s of vLLM on the sampling benchmark's prompt (best of 3 after a warm-up), in its own process."""
    code = f"""
import json, time, sys
sys.path.insert(0, {str(REPO)!r})
from benchmarks.bench_sampling import make_prompt
from data_builders.sampling import SamplingParams, VLLMSampler
sampler = VLLMSampler({str(model_dir)!r}, dtype="bfloat16")
prompt, params = make_prompt({image_size}, 60), SamplingParams(num_samples={k}, max_new_tokens={new_tokens})
sampler.sample(prompt, params, seed=0)
times = []
for seed in range(1, 4):
    start = time.perf_counter()
    sampler.sample(prompt, params, seed=seed)
    times.append(time.perf_counter() - start)
print(json.dumps({{"vllm_cand_per_s": {k} / min(times)}}))
"""
    import subprocess

    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=bench_env(), timeout=300
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "detail": "timed out after 300 s"}
    if proc.returncode != 0:
        return {"status": "failed", "detail": proc.stderr[-1500:]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def mpo_details(r: dict, peak: float | None) -> dict:
    """Step time, tokens/s, MFU and peak memory of each side; tokens are the pair's (image, prompt, 2 responses)."""
    ours, trl = r["ours"], r["trl"]
    shape = Shape.from_spec(TinyVLMSpec.preset(r["preset"], **r.get("spec", {})))
    itok, ptok, rtok = ours["image_tokens_per_pair"] or 0, round(ours["prompt_tokens_per_pair"]), ours["response_tokens_per_pair"]  # fmt: skip
    mode = ours["mode"]
    flops = mpo_step_flops(shape, itok, ptok, rtok, ours["gradient_checkpointing"], "vision tower trained" in mode,
                           mode.startswith("full"))  # fmt: skip
    pairs = r["batch_size"]
    out = {"mode": mode, "trainable_params": ours["trainable_params"], "pairs_per_step": pairs,
           "tokens_per_pair": ptok + 2 * rtok, "peak_tflops": peak}  # fmt: skip
    for name, side in (("ours", ours), ("trl", trl)):
        out[name] = {
            "step_s": side["step_s"],
            "tokens_per_s": pairs * (ptok + 2 * rtok) / side["step_s"],
            "peak_memory_gib": side["peak_mb"] / 1024,
            "model_tflops_per_step": pairs * flops[f"{name}_model_flops"] / 1e12,
            "mfu": pairs * flops[f"{name}_model_flops"] / side["step_s"] / (peak * 1e12) if peak else None,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True, help="All JSON (and the temporary model) go here.")
    p.add_argument("--preset", default="7b", help="TinyVLMSpec preset: 7b (real shape), small or tiny.")
    p.add_argument("--device", default="cuda", help="cuda or cpu.")
    p.add_argument("--image_size", type=int, default=None, help="Square image side; default 1008 for 7b (1296 tok).")
    p.add_argument("--k", type=int, default=8, help="Candidates per prompt (scoring and sampling).")
    p.add_argument("--groups", type=int, default=4, help="Scoring groups per measurement.")
    p.add_argument("--new_tokens", type=int, default=64, help="Sampled tokens per candidate.")
    p.add_argument("--pairs_per_step", type=int, default=2, help="MPO pairs per step.")
    p.add_argument("--steps", type=int, default=3, help="Timed MPO steps per side (after one warm-up).")
    p.add_argument("--mode", choices=["auto", "full", "lora"], default="auto", help="MPO: full fine-tune or LoRA.")
    p.add_argument("--lora_r", type=int, default=16, help="LoRA rank when the mode is lora.")
    p.add_argument("--peak_tflops", type=float, default=None, help="Peak bf16 TFLOPS for MFU (H100/H200: 989).")
    p.add_argument("--stage_timeout", type=float, default=420, help="Seconds before a stage is stopped.")
    p.add_argument("--keep_model", action="store_true", help="Keep the random model folder.")
    a = p.parse_args()

    start = time.perf_counter()
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = "bfloat16" if a.device.startswith("cuda") else "float32"
    size = a.image_size or DEFAULT_IMAGE_SIZE.get(a.preset, 448)
    shape = Shape.from_spec(TinyVLMSpec.preset(a.preset))
    mode, mode_info = choose_mode(a.mode, shape, a.device)
    env, stages, figures = bench_env(), {}, []
    common = ["--device", a.device, "--dtype", dtype, "--image_size", str(size)]

    t = time.perf_counter()
    model_dir = out / "model"
    build_model(a.preset, a.device, dtype, model_dir)
    stages["build_model"] = {"status": "ok", "duration_s": round(time.perf_counter() - t, 1)}
    print(f"model: {a.preset} ({shape.params / 1e6:.0f} M params) in {dtype}, {stages['build_model']['duration_s']} s")

    runs = [
        ("scoring", "benchmarks/bench_scoring.py", "--output", scoring_figures,
         # built in place from the preset: a plain VLM folder has no value head, which scoring refuses to load
         ["--preset", a.preset, *common, "--ks", str(a.k), "--groups", str(a.groups), "--repeats", "2",
          "--batch_size", str(a.k)]),
        ("sampling", "benchmarks/bench_sampling.py", "--out", sampling_figures,
         ["--preset", a.preset, "--model", str(model_dir), *common, "--ks", str(a.k), "--repeats", "2",
          "--max_new_tokens", str(a.new_tokens)]),
        ("mpo", "benchmarks/bench_mpo.py", "--out", mpo_figures,
         ["--preset", a.preset, "--model", str(model_dir), "--image_size", str(size), "--batch_size",
          str(a.pairs_per_step), "--steps", str(a.steps), "--warmup", "1", "--freeze_vision_tower",
          "--gradient_checkpointing", "--lora_r", str(a.lora_r if mode == "lora" else 0)]),
    ]  # fmt: skip
    results = {}
    for name, script, flag, to_figures, args in runs:
        json_path = out / f"{name}.json"
        stages[name] = run_script(script, args, flag, json_path, env, timeout=a.stage_timeout)
        print(f"{name}: {stages[name]['status']} ({stages[name].get('duration_s')} s)", flush=True)
        if stages[name]["status"] == "ok":
            results[name] = json.loads(json_path.read_text())
            figures += to_figures(results[name])

    if importlib.util.find_spec("vllm") is None or not a.device.startswith("cuda"):
        vllm = {"status": "not installed" if a.device.startswith("cuda") else "skipped (needs a GPU)"}
    else:
        vllm = vllm_rate(model_dir, size, a.k, a.new_tokens)
        if vllm["status"] == "ok" and "sampling" in results:
            vllm["shared_prefill_over_vllm"] = results["sampling"]["rows"][0]["shared_cand_per_s"] / vllm["vllm_cand_per_s"]  # fmt: skip
    if not a.keep_model:
        shutil.rmtree(model_dir, ignore_errors=True)

    peak = peak_tflops(a.device, a.peak_tflops)
    summary = {
        "command": shlex.join(["bash", "benchmarks/gpu_check.sh", *sys.argv[1:]]),
        "preset": a.preset, "dtype": dtype, "image_size": size, "k": a.k, "mpo_mode": mode, **mode_info,
        "duration_s": round(time.perf_counter() - start, 1), "machine": machine(), "stages": stages,
        "figures": [{**dataclasses.asdict(f), "of_ideal": f.of_ideal} for f in figures],
        "mpo": mpo_details(results["mpo"], peak) if "mpo" in results else None, "vllm": vllm,
    }  # fmt: skip
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"`{summary['command']}`: {summary['duration_s']} s on {summary['machine']['gpu'] or 'CPU'}", "",
             "| benchmark | figure | baseline | ours | ratio | ideal | measured / ideal |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in figures:
        ideal, of_ideal = (f"{f.ideal:.2f}", f"{f.of_ideal:.0%}") if f.ideal else ("—", "—")
        lines.append(f"| {f.benchmark} | {f.figure} | {f.baseline} | {f.ours} | {f.ratio:.2f} | {ideal} | {of_ideal} |")
    if summary["mpo"]:
        m = summary["mpo"]
        lines += ["", f"MPO: {m['mode']} ({m['trainable_params'] / 1e6:.1f} M trainable), gradient checkpointing, "
                  f"{m['pairs_per_step']} pairs/step, {m['tokens_per_pair']:.0f} tokens/pair", "",
                  "| side | step (s) | tokens/s | MFU | peak memory (GiB) |", "|---|---|---|---|---|"]  # fmt: skip
        for side in ("trl", "ours"):
            s = m[side]
            mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "— (no peak for this device)"
            lines.append(
                f"| {side} | {s['step_s']:.3f} | {s['tokens_per_s']:.0f} | {mfu} | {s['peak_memory_gib']:.1f} |"
            )
    lines += ["", f"vLLM: {json.dumps(vllm)[:300]}"]
    failed = [n for n, s in stages.items() if s["status"] != "ok"]
    if failed:
        lines += ["", f"failed stages: {', '.join(failed)} (details in gpu_check.json)"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
