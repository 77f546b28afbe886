"""Reward scoring throughput: group-aware (images + prompt encoded once per group) vs naive (K full forwards).

    python benchmarks/bench_scoring.py                                  # CPU, fp32, TinyVLMSpec.preset("small")
    python benchmarks/bench_scoring.py --ks 2 4 8 --groups 8 --repeats 3 --output outputs/bench_scoring.json
    python benchmarks/bench_scoring.py --preset 7b --device cuda --dtype bfloat16 --image_size 896   # a GPU box

Each K scores the same groups (one image of `--image_size` px, i.e. (size/28)^2 image tokens, a ~40-token
question and K responses of ~50 tokens) both ways in the same process, checks the scores agree, and reports
candidates per second and the ratio. Timings are the best of `--repeats` alternating runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from common.scoring import ScoringGroup
from common.tiny_vlm import TinyVLMSpec, build_config, build_processor
from reward.model import VLRewardModel
from reward.scorer import DTYPES, RewardScorer, ScorerConfig

WORDS = "the a red blue green circle square triangle left right top bottom is are two three shape image shows".split()


def make_groups(n_groups: int, k: int, image_size: int, response_words: int, seed: int = 0) -> list[ScoringGroup]:
    rnd = random.Random(seed)
    groups = []
    for g in range(n_groups):
        image = Image.new("RGB", (image_size, image_size), "white")
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rnd.randrange(image_size - 60), rnd.randrange(image_size - 60)
            draw.rectangle((x, y, x + 50, y + 50), fill=rnd.choice(["red", "blue", "green"]))
        question = " ".join(rnd.choice(WORDS) for _ in range(30)) + f" (question {g})?"
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        responses = [" ".join(rnd.choice(WORDS) for _ in range(response_words)) + "." for _ in range(k)]
        groups.append(ScoringGroup(prompt, [image], responses))
    return groups


def best_times(scorer: RewardScorer, groups: list[ScoringGroup], repeats: int) -> tuple[dict, dict, dict]:
    """Best wall and process-CPU seconds of each path; the paths alternate so that outside load hits both alike.

    CPU seconds (all threads of this process) are reported beside wall time: on a shared machine they do not count
    the time spent waiting for a core, so their ratio is the steadier figure.
    """
    wall = {"naive": float("inf"), "group_aware": float("inf")}
    cpu, scores = dict(wall), {}
    for _ in range(repeats):
        for name in wall:
            scorer.config.group_aware = name == "group_aware"
            start, start_cpu = time.perf_counter(), time.process_time()
            scores[name] = scorer.score_groups(groups)
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return wall, cpu, scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="TinyVLMSpec preset: tiny, small or 7b (random weights).")
    p.add_argument("--model", default=None, help="Score with this reward/VLM folder instead of a random preset.")
    p.add_argument("--ks", type=int, nargs="+", default=[4, 8], help="Responses per group to measure.")
    p.add_argument("--groups", type=int, default=8, help="Groups (prompts) per measurement.")
    p.add_argument("--image_size", type=int, default=448, help="Square image side in px (448 -> 256 image tokens).")
    p.add_argument("--response_words", type=int, default=50, help="Words per response (~50 tokens).")
    p.add_argument("--batch_size", type=int, default=8, help="Conversations (responses) per forward, both paths.")
    p.add_argument("--repeats", type=int, default=3, help="Timed runs per path (alternating); the best is reported.")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16.")
    p.add_argument("--device", default="cpu", help="cpu or cuda.")
    p.add_argument("--output", default="outputs/bench_scoring.json", help="Where the JSON results go.")
    args = p.parse_args()

    if args.model:
        scorer = RewardScorer.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                              batch_size=args.batch_size, progress=False)  # fmt: skip
    else:
        # random weights built in place (no save/load round trip: a 7B-shaped model would write ~16 GB)
        spec = TinyVLMSpec.preset(args.preset, max_pixels=max(28 * 28 * 256, args.image_size**2))
        processor = build_processor(spec)
        torch.manual_seed(spec.seed)
        with torch.device(args.device):
            model = VLRewardModel(build_config(spec, processor.tokenizer)).to(DTYPES[args.dtype]).eval()
        config = ScorerConfig(model_name_or_path=f"random:{args.preset}", dtype=args.dtype, device=args.device,
                              batch_size=args.batch_size, progress=False)  # fmt: skip
        scorer = RewardScorer(model, processor, config)
    warm = make_groups(1, 2, args.image_size, args.response_words, seed=99)
    for aware in (False, True):
        scorer.config.group_aware = aware
        scorer.score_groups(warm)

    sample = make_groups(1, 1, args.image_size, args.response_words)[0]
    text = scorer.processor.apply_chat_template(sample.prompt, tokenize=False, add_generation_prompt=True)
    prompt_tokens = scorer.processor(text=[text], images=sample.images, return_tensors="pt")["input_ids"].shape[1]
    response_tokens = len(scorer.tokenizer(sample.responses[0])["input_ids"])

    results = []
    for k in args.ks:
        groups = make_groups(args.groups, k, args.image_size, args.response_words)
        timings, cpu, scores = best_times(scorer, groups, args.repeats)
        diff = max(abs(a - b) for x, y in zip(scores["naive"], scores["group_aware"]) for a, b in zip(x, y))
        n = args.groups * k
        results.append({
            "k": k, "candidates": n, "naive_s": timings["naive"], "group_aware_s": timings["group_aware"],
            "naive_cand_per_s": n / timings["naive"], "group_aware_cand_per_s": n / timings["group_aware"],
            "speedup": timings["naive"] / timings["group_aware"], "naive_cpu_s": cpu["naive"],
            "group_aware_cpu_s": cpu["group_aware"], "cpu_speedup": cpu["naive"] / cpu["group_aware"],
            "max_abs_diff": diff,
        })  # fmt: skip

    print(f"\nmodel {args.model or args.preset} | {args.dtype} on {args.device} | prompt+image {prompt_tokens} tokens "
          f"| response ~{response_tokens} tokens | {args.groups} groups | batch {args.batch_size}\n")  # fmt: skip
    print("| K | candidates | naive cand/s | group-aware cand/s | speedup (wall) | speedup (CPU s) | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['k']} | {r['candidates']} | {r['naive_cand_per_s']:.1f} | {r['group_aware_cand_per_s']:.1f} "
              f"| {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | {r['max_abs_diff']:.1e} |")  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "prompt_tokens": prompt_tokens, "response_tokens": response_tokens, **vars(args),
    }  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"\n{out}")


if __name__ == "__main__":
    main()
