"""MPO step time and peak memory: ours (packed pairs, precomputed reference) vs TRL's DPOTrainer with the same loss.

    python benchmarks/bench_mpo.py                      # CPU: TinyVLMSpec "small", 448x448 images, batch 4 pairs
    python benchmarks/bench_mpo.py --steps 10 --out outputs/bench_mpo.json
    # GPU, 7B-wide shape cut to a few layers so that TRL's policy + reference + AdamW fit on one card
    python benchmarks/bench_mpo.py --preset 7b --spec '{"num_hidden_layers": 4, "vision_depth": 8}' --image_size 896
    # an existing (random-weight) model folder, vision tower frozen, checkpointing, LoRA (benchmarks/gpu_check.py)
    python benchmarks/bench_mpo.py --model DIR --freeze_vision_tower --gradient_checkpointing --lora_r 16

Both sides train the same random-weight Qwen2.5-VL (the policy nudged off the reference so every loss term is live)
on the same toy pairs, image-heavy: 256 image tokens + ~20 prompt tokens per pair against ~8 response tokens.

* TRL: `DPOTrainer(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])` with a reference
  model in memory; each pair is two rows (images encoded twice) and every step runs the reference forward.
* Ours: `MPOTrainer`, one packed row per pair (image and prompt encoded once), reference log-probs precomputed once
  (that pass is timed separately and reported per pair).

Each side runs in its own process (so peak RSS is its own), one after the other, in the same invocation. A step is
`training_step` (forward + backward) plus the optimizer step; the table gives the median after warm-up. The same-loss
check evaluates both losses on the first batch before any update; ours with delta = 0, because TRL's `bco_pair` has
no running shift (with delta, ours differs from TRL by design).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _setup(work: Path, n_pairs: int, image_size: int, preset: str, spec: dict, model: str | None) -> tuple[Path, Path]:
    from common.tiny_vlm import TinyVLMSpec, save_tiny_vlm
    from common.toy_task import ToyTaskConfig, write_toy_task

    model = Path(model) if model else save_tiny_vlm(work / "model", TinyVLMSpec.preset(preset, **spec))
    toy = ToyTaskConfig(n_train=n_pairs, n_eval=1, kinds=("color", "shape", "count"), image_size=image_size)
    return model, write_toy_task(work / "toy", toy)["pairs_train"]


def _nudge(model) -> None:
    """Move the policy off the reference (same change on both sides) so DPO/BCO are not at their constant."""
    import torch

    from mpo.packing import base_vlm

    with torch.no_grad():
        for layer in base_vlm(model).model.language_model.layers:
            layer.mlp.down_proj.weight.mul_(1.2)


def _peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _run_side(side: str, model_path: str, data_path: str, a: argparse.Namespace) -> dict:
    import torch

    from common.io import read_records
    from common.processor import load_processor
    from mpo.config import MPOConfig
    from mpo.train import load_policy

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    batch_size, steps, warmup = a.batch_size, a.steps, a.warmup
    common = dict(output_dir=tempfile.mkdtemp(), use_cpu=device == "cpu", bf16=dtype == torch.bfloat16,
                  report_to="none", gradient_checkpointing=a.gradient_checkpointing, learning_rate=1e-5,
                  max_length=None, per_device_train_batch_size=batch_size)  # fmt: skip
    # the same policy on both sides: vision tower frozen or not, full weights or LoRA on the language model
    what = MPOConfig(model_name_or_path=model_path, freeze_vision_tower=a.freeze_vision_tower,
                     use_lora=a.lora_r > 0, lora_r=max(a.lora_r, 1), lora_alpha=2 * max(a.lora_r, 1), **common)  # fmt: skip
    processor = load_processor(model_path)
    dataset = read_records(data_path)
    result = {"side": side}
    if side == "trl":
        from transformers import AutoModelForImageTextToText
        from trl import DPOConfig, DPOTrainer

        policy = load_policy(what, dtype)
        # with LoRA, TRL's reference is the policy with its adapters off: no second model
        ref = None if a.lora_r else AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
        if not a.lora_r:  # LoRA starts at the reference (and TRL's reference is the policy, adapters off)
            _nudge(policy)
        args = DPOConfig(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], beta=0.1, **common)
        trainer = DPOTrainer(policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=processor)
    else:
        from mpo.config import MPOConfig
        from mpo.ref_logps import attach_ref_logps
        from mpo.trainer import MPOTrainer

        t0 = time.perf_counter()
        dataset, _ = attach_ref_logps(dataset, data_path, model_path, processor, None, dtype,
                                      Path(common["output_dir"]) / "ref", batch_size=batch_size)  # fmt: skip
        result["precompute_s_per_pair"] = (time.perf_counter() - t0) / len(dataset)
        policy = load_policy(what, dtype)
        if not a.lora_r:  # LoRA starts at the reference (and TRL's reference is the policy, adapters off)
            _nudge(policy)
        args = MPOConfig(model_name_or_path=model_path, train_data=data_path, **common)
        trainer = MPOTrainer(policy, args, dataset, processor)
    model = trainer.model.to(device)
    if a.gradient_checkpointing:  # `Trainer.train` would switch it on; the steps here are driven by hand
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    result["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result["mode"] = (f"LoRA r={a.lora_r} on the language model" if a.lora_r else "full fine-tune") + (
        ", vision tower frozen" if a.freeze_vision_tower else ", vision tower trained"
    )
    if trainer.ref_model is not None:
        trainer.ref_model.to(device)
    batches = [trainer.data_collator([dict(dataset[(i * batch_size + j) % len(dataset)]) for j in range(batch_size)])
               for i in range(warmup + steps)]  # fmt: skip
    batches = [{k: v.to(device) if hasattr(v, "to") else v for k, v in b.items()} for b in batches]
    if "pixel_values" in batches[0]:
        grid = batches[0]["image_grid_thw"]  # TRL's batch holds each image twice
        result["image_tokens_per_pair"] = int(grid.prod(-1).sum()) // 4 // grid.size(0) * (grid.size(0) // batch_size)
    model.train()
    with torch.no_grad():  # the same-loss check, before any update
        if side == "trl":
            result["first_batch_loss"] = trainer.compute_loss(model, dict(batches[0])).item()
        else:
            from mpo.loss import mpo_loss
            from mpo.packing import pair_logps

            b = batches[0]
            lp = pair_logps(model, b, trainer._rope_index, dtype)
            result["first_batch_loss"] = mpo_loss(lp.chosen, lp.rejected, b["ref_chosen_logps"].to(device),
                                                  b["ref_rejected_logps"].to(device), lp.chosen_lengths,
                                                  delta=0.0).loss.item()  # fmt: skip
            result["prompt_tokens_per_pair"] = float(b["prompt_attention_mask"].sum(1).float().mean())
            result["response_tokens_per_pair"] = float(lp.chosen_lengths.float().mean())
    optimizer = trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by `Trainer.train`, read by `training_step`
    times = []
    for i, batch in enumerate(batches):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.training_step(model, dict(batch))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    result.update(step_s=statistics.median(times), peak_mb=_peak_mb(), device=device, steps=steps,
                  gradient_checkpointing=a.gradient_checkpointing)  # fmt: skip
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=4, help="pairs per step")
    p.add_argument("--steps", type=int, default=8, help="timed steps per side (after warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--image_size", type=int, default=448, help="toy image side: 448 -> 256 image tokens")
    p.add_argument("--preset", default="small", help="TinyVLMSpec preset of the random model")
    p.add_argument("--spec", default="{}", help="JSON overrides of the preset, e.g. '{\"num_hidden_layers\": 4}'")
    p.add_argument("--model", help="train this saved model folder instead of a random preset")
    p.add_argument("--freeze_vision_tower", action="store_true", help="train the LM and projector only")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--lora_r", type=int, default=0, help="LoRA rank on the language model (0: full fine-tune)")
    p.add_argument("--out", default="outputs/bench_mpo.json", help="where the JSON result goes")
    p.add_argument("--side", choices=["trl", "ours"], help=argparse.SUPPRESS)  # child mode
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        print(json.dumps(_run_side(a.side, a.model, a.data, a)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench_mpo_"))
    n_pairs = max(8, a.batch_size * (a.steps + a.warmup) // 3 + 1)
    model, data = _setup(work, n_pairs, a.image_size, a.preset, json.loads(a.spec), a.model)
    flags = [f"--{f}" for f in ("freeze_vision_tower", "gradient_checkpointing") if getattr(a, f)]
    results = {}
    for side in ("trl", "ours"):
        cmd = [sys.executable, __file__, "--side", side, "--model", str(model), "--data", str(data),
               "--batch_size", str(a.batch_size), "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--lora_r", str(a.lora_r), *flags]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
        if out.returncode != 0:
            raise SystemExit(f"{side} failed:\n{out.stderr[-4000:]}")
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    trl, ours = results["trl"], results["ours"]
    summary = {
        "speedup": trl["step_s"] / ours["step_s"],
        "peak_memory_ratio": ours["peak_mb"] / trl["peak_mb"],
        "same_loss_abs_diff": abs(trl["first_batch_loss"] - ours["first_batch_loss"]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "preset": a.preset,
        "spec": json.loads(a.spec),
        "batch_size": a.batch_size,
        "image_size": a.image_size,
        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
    }
    print(f"shape: TinyVLMSpec.preset({a.preset!r}, **{a.spec}), {a.batch_size} pairs/step, {ours.get('image_tokens_per_pair')} image tokens, "
          f"{ours['prompt_tokens_per_pair']:.0f} prompt tokens (image included), "
          f"{ours['response_tokens_per_pair']:.1f} response tokens per pair, device {ours['device']}")  # fmt: skip
    print(f"| {'':28} | {'step (s)':>9} | {'peak mem (MiB)':>14} | {'loss, 1st batch':>16} |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 16}|{'-' * 18}|")
    for name, r in (("TRL DPOTrainer (MPO losses)", trl), ("ours (packed, precomputed)", ours)):
        print(f"| {name:28} | {r['step_s']:9.3f} | {r['peak_mb']:14.0f} | {r['first_batch_loss']:16.6f} |")
    print(f"speedup {summary['speedup']:.2f}x, peak memory ours/TRL {summary['peak_memory_ratio']:.2f}, "
          f"same-loss |diff| {summary['same_loss_abs_diff']:.2e}; reference pass once: "
          f"{ours['precompute_s_per_pair'] * 1000:.1f} ms/pair")  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"trl": trl, "ours": ours, **summary}, indent=2))


if __name__ == "__main__":
    main()
