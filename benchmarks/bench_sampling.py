"""Candidates sampled per second: shared prefill (`HFSampler`) vs `generate(num_return_sequences=K)`.

The baseline copies the prompt and image K times before the prefill; the shared path encodes them once and repeats
the KV cache. Both run on the same random-weight Qwen2.5-VL, same prompt, same seeds; the table also says whether
they drew the same samples (they should: same warpers, same random stream).

    python benchmarks/bench_sampling.py                               # CPU: preset "small", 448px image, K = 4, 8, 1 thread
    python benchmarks/bench_sampling.py --preset 7b --device cuda --dtype bfloat16 --max_new_tokens 64   # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common.tiny_vlm import TinyVLMSpec, save_tiny_vlm
from common.toy_task import render_image
from data_builders.sampling import HFSampler, SamplingParams


def make_prompt(image_size: int, n_words: int) -> dict:
    import random

    rng = random.Random(0)
    image = render_image(rng, image_size, [("circle", "red"), ("square", "blue"), ("triangle", "green")])
    words = "describe the picture shapes colors count left right top bottom which one is larger".split()
    question = " ".join(rng.choice(words) for _ in range(n_words)) + "?"
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return {"id": "bench", "prompt": prompt, "images": [image]}


def _timed(sampler: HFSampler, prompt: dict, params: SamplingParams, seed: int) -> tuple[float, list[str]]:
    """Seconds for one call: CPU time of this process on CPU (robust to other jobs on a shared box), wall on GPU."""
    cuda = sampler.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
    start = clock()
    out = sampler.sample(prompt, params, seed=seed)
    if cuda:
        torch.cuda.synchronize()
    return clock() - start, out.texts


def compare(baseline: HFSampler, shared: HFSampler, prompt: dict, params: SamplingParams, repeats: int) -> dict:
    """Best (minimum) seconds per call of each path over `repeats` calls, the two timed alternately, same seeds.

    The minimum, not the mean: on a shared machine the noise only ever adds time.
    """
    _timed(baseline, prompt, params, 0), _timed(shared, prompt, params, 0)  # warm-up
    t_base, t_shared, same = [], [], True
    for r in range(repeats):
        tb, sb = _timed(baseline, prompt, params, 1000 + r)
        ts, ss = _timed(shared, prompt, params, 1000 + r)
        t_base.append(tb), t_shared.append(ts)
        same &= sb == ss
    k, tb, ts = params.num_samples, min(t_base), min(t_shared)
    return {"K": k, "baseline_cand_per_s": k / tb, "shared_cand_per_s": k / ts, "speedup": tb / ts,
            "same_samples": same}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="TinyVLMSpec preset of the random policy: tiny, small, 7b.")
    ap.add_argument("--model", default=None, help="Use this saved policy folder instead of building one.")
    ap.add_argument("--image_size", type=int, default=448, help="Image side in pixels (448: 256 image tokens).")
    ap.add_argument("--n_words", type=int, default=60, help="Words in the question.")
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 8], help="Candidates per prompt to compare.")
    ap.add_argument("--max_new_tokens", type=int, default=16, help="Tokens per candidate.")
    ap.add_argument("--repeats", type=int, default=5, help="Timed calls per path and K (the fastest is reported).")
    ap.add_argument("--device", default="cpu", help="cpu or cuda.")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16.")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: CPU time measures the work itself).")
    ap.add_argument("--out", default="benchmarks/results/bench_sampling.json", help="Where the JSON goes.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(save_tiny_vlm(Path(tmp) / "policy", TinyVLMSpec.preset(args.preset)))
        shared = HFSampler(model_dir, dtype=args.dtype, device=args.device)
        baseline = HFSampler(model_dir, dtype=args.dtype, device=args.device, shared_prefill=False)
        baseline.model = shared.model  # one copy of the weights for both paths
        prompt = make_prompt(args.image_size, args.n_words)
        prompt_tokens = shared.encode(prompt)["input_ids"].shape[1]
        rows = []
        for k in args.ks:
            # temperature 1, no top-k/top-p: every token can be drawn, so the samples test the whole distribution
            params = SamplingParams(num_samples=k, max_new_tokens=args.max_new_tokens)
            rows.append(compare(baseline, shared, prompt, params, args.repeats))
    result = {
        "benchmark": "bench_sampling", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "clock": "wall" if args.device.startswith("cuda") else "process_time", "prompt_tokens": prompt_tokens, **vars(args), "rows": rows,
    }  # fmt: skip
    clock = "wall time" if args.device.startswith("cuda") else f"CPU time, {args.threads} thread(s)"
    print(f"prompt: {prompt_tokens} tokens ({args.image_size}px image), {args.max_new_tokens} new tokens, "
          f"preset {args.preset}, {result['device']}, best of {args.repeats} by {clock}")  # fmt: skip
    print("| K | generate(num_return_sequences) cand/s | shared prefill cand/s | speedup | same samples |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['K']} | {r['baseline_cand_per_s']:.2f} | {r['shared_cand_per_s']:.2f} | {r['speedup']:.2f}x | "
              f"{r['same_samples']} |")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
