"""Reward server under load on loopback: dynamic batching on vs off, and GRPO-shaped group merging on vs off.

    python benchmarks/bench_server.py                                   # preset "small", 16 clients, 20 s a scenario
    python benchmarks/bench_server.py --seconds 5 --clients 8           # quick (a suite runner)
    python benchmarks/bench_server.py --model outputs/reward-tiny --device cuda --dtype bfloat16   # a real model

Each scenario starts `recipes/serve_reward.py` on a free port, warms it up, then keeps `--clients` requests in flight
for `--seconds` (then stops: no new requests, in-flight ones finish) and reports items scored per second, p50 / p99
request latency and errors. Loads:

* `single`: every request is one item (its own image prompt and response), as independent callers send them;
  server with batching off (`--max_batch_items 1`) vs on.
* `grpo`: K completions of one image prompt sent as K separate requests at once (a GRPO step); the clients work on
  `clients // K` prompts at a time; server with batching on and group merging off vs on.

A last line scores the same items with the scorer in the benchmark process (no server): one per call, 16 per call
and in groups of K, the ceiling that batching and merging can reach on this machine. Ratios are taken between
scenarios of the same run. On a shared machine the absolute figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from common.scoring import ScoringGroup
from reward.scorer import RewardScorer
from reward.serving.images import ImagePolicy, load_request_image, to_data_uri
from reward.serving.process import server_process

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_scoring import make_groups  # noqa: E402


def make_prompts(n: int, k: int, image_size: int, seed: int = 0) -> list[tuple[list[dict], str, list[str]]]:
    """`n` (prompt messages, image data URI, k responses): the scoring benchmark's groups, images as data URIs."""
    groups = make_groups(n, k, image_size, response_words=40, seed=seed)
    return [(g.prompt, to_data_uri(g.images[0]), g.responses) for g in groups]


def item_body(prompt: list[dict], image: str, response: str) -> bytes:
    messages = prompt + [{"role": "assistant", "content": [{"type": "text", "text": response}]}]
    return json.dumps({"items": [{"messages": messages, "images": [image]}]}).encode()


async def run_load(url: str, bodies: list[list[bytes]], clients: int, seconds: float) -> dict:
    """Keep `clients` requests in flight for `seconds`: `bodies` is a list of rounds (requests sent together)."""
    latencies, errors, items = [], 0, 0
    per_round = len(bodies[0])
    workers = max(1, clients // per_round)
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one(body: bytes) -> None:
            nonlocal errors, items
            start = time.perf_counter()
            r = await client.post(url + "/v1/score", content=body, headers={"Content-Type": "application/json"})
            latencies.append(time.perf_counter() - start)
            if r.status_code == 200:
                items += len(r.json()["scores"])
            else:
                errors += 1

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop_at:
                await asyncio.gather(*(one(b) for b in bodies[i % len(bodies)]))
                i += workers

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    pct = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"requests": len(latencies), "items": items, "errors": errors, "seconds": elapsed,
            "items_per_s": items / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}  # fmt: skip


def scenario(model: str, flags: list[str], bodies: list[list[bytes]], args) -> dict:
    with server_process(model, "--device", args.device, "--dtype", args.dtype, *flags) as (_, url):
        asyncio.run(run_load(url, bodies, args.clients, min(2.0, args.seconds)))  # warm-up
        result = asyncio.run(run_load(url, bodies, args.clients, args.seconds))
        metrics = httpx.get(url + "/metrics").text
    calls = next(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("reward_batch_items_count "))
    n = next(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("reward_batch_items_sum "))
    return {**result, "flags": " ".join(flags), "mean_items_per_call": n / max(calls, 1)}


def model_alone(model: str, prompts: list, batch: int, k: int, args) -> dict:
    """The scorer in this process, no server: items/s one at a time, `batch` per call, and K-groups (the ceiling
    batching and merging can reach on this machine)."""
    scorer = RewardScorer.from_pretrained(model, device=args.device, dtype=args.dtype, progress=False, batch_size=batch)
    singles = [ScoringGroup(pr, [load_request_image(im, ImagePolicy())], rs[:1]) for pr, im, rs in prompts[:batch]]
    grouped = [ScoringGroup(g.prompt, g.images, rs) for g, (_, _, rs) in zip(singles, prompts)][: max(1, batch // k)]
    scorer.score_groups(singles[:2])  # warm-up

    def rate(calls: list[list[ScoringGroup]]) -> float:
        start = time.perf_counter()
        for groups in calls:
            scorer.score_groups(groups)
        return sum(len(g.responses) for groups in calls for g in groups) / (time.perf_counter() - start)

    shapes = {"one_per_call": [[g] for g in singles], f"{batch}_per_call": [singles], f"groups_of_{k}": [grouped]}
    best = dict.fromkeys(shapes, 0.0)
    for _ in range(3):  # alternating, best of three: outside load hits every shape alike
        for name, calls in shapes.items():
            best[name] = max(best[name], rate(calls))
    return best


def make_model(preset: str, out: Path) -> str:
    from common.tiny_vlm import TinyVLMSpec, save_tiny_vlm
    from reward.model import load_reward_model, save_reward_model

    base = save_tiny_vlm(out / "vlm", TinyVLMSpec.preset(preset))
    return str(save_reward_model(*load_reward_model(base, new_head_ok=True), out / "reward"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="TinyVLMSpec preset of the random-weight reward model.")
    p.add_argument("--model", default=None, help="Serve this reward model folder instead of a random preset.")
    p.add_argument("--clients", type=int, default=16, help="Requests kept in flight.")
    p.add_argument("--seconds", type=float, default=20.0, help="Load duration of each scenario.")
    p.add_argument("--k", type=int, default=8, help="Completions per prompt in the GRPO-shaped load.")
    p.add_argument("--prompts", type=int, default=32, help="Distinct image prompts in the request pool.")
    p.add_argument("--image_size", type=int, default=224, help="Square image side in px (224 -> 64 image tokens).")
    p.add_argument("--max_batch_items", type=int, default=32, help="Server batch budget when batching is on.")
    p.add_argument("--max_wait_ms", type=float, default=5.0, help="Server wait window when batching is on.")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default="outputs/bench_server.json", help="Where the JSON results go.")
    args = p.parse_args()

    prompts = make_prompts(args.prompts, args.k, args.image_size)
    single = [[item_body(pr, im, rs[0])] for pr, im, rs in prompts]
    grpo = [[item_body(pr, im, r) for r in rs] for pr, im, rs in prompts]
    on = ["--max_batch_items", str(args.max_batch_items), "--max_wait_ms", str(args.max_wait_ms)]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(args.preset, Path(tmp))
        results = {
            "single, batching off": scenario(model, ["--max_batch_items", "1", "--max_wait_ms", "0"], single, args),
            "single, batching on": scenario(model, on, single, args),
            f"grpo K={args.k}, merging off": scenario(model, on + ["--group_merging", "false"], grpo, args),
            f"grpo K={args.k}, merging on": scenario(model, on, grpo, args),
        }
        alone = model_alone(model, prompts, args.max_batch_items // 2, args.k, args)
    names = list(results)
    ratios = {
        "batching": results[names[1]]["items_per_s"] / results[names[0]]["items_per_s"],
        "group_merging": results[names[3]]["items_per_s"] / results[names[2]]["items_per_s"],
    }
    rows = ["| load, server | items/s | p50 ms | p99 ms | requests | errors | items per model call |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in results.items():
        rows.append(f"| {name} | {r['items_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['requests']} "
                    f"| {r['errors']} | {r['mean_items_per_call']:.1f} |")  # fmt: skip
    rows.append(f"\nbatching speed-up {ratios['batching']:.2f}x (target >= 2x); group merging speed-up at "
                f"K={args.k} {ratios['group_merging']:.2f}x (target >= 3x)")  # fmt: skip
    rows.append("model alone, no server (items/s): " + ", ".join(f"{k} {v:.1f}" for k, v in alone.items()))
    table = "\n".join(rows)
    print(table)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
            "processor": platform.processor(), "args": vars(args)}  # fmt: skip
    out.write_text(
        json.dumps({**meta, "results": results, "ratios": ratios, "model_alone": alone, "table": table}, indent=2)
    )
    print(out)


if __name__ == "__main__":
    main()
