"""Reward server under load on loopback: dynamic batching on vs off, GRPO-shaped group merging on vs off, peak
memory under the worst request the limits allow, and normal requests' latency while slow URL fetches are in flight.

    python benchmarks/bench_server.py                                   # preset "small", 16 clients, 20 s a scenario
    python benchmarks/bench_server.py --seconds 5 --clients 8           # quick (a suite runner)
    python benchmarks/bench_server.py --model outputs/reward-tiny --device cuda --dtype bfloat16   # a real model
    python benchmarks/bench_server.py --only guards --baseline_repo /tmp/old   # guard rows, this code vs another

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

Guard rows (`--only guards` runs just these), for this code and, with `--baseline_repo DIR`, for another checkout
(e.g. the code before the guards, `git archive COMMIT | tar -x -C DIR`):

* `memory`: the server's peak RSS (`VmHWM`) grows by how much under the worst request `--max_items_per_request 2
  --max_images_per_item 8` allow: 16 distinct 1-bit 4096 x 4096 PNGs (~2 KiB each on the wire, 16.7 M pixels each).
* `url`: p50 / p99 of normal one-item requests (`--clients` in flight) alone, then while `--slow_fetches` requests
  wait on a loopback host that sends 1 byte every 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from PIL import Image

from common.scoring import ScoringGroup
from reward.scorer import RewardScorer
from reward.serving.images import ImagePolicy, load_request_image, to_data_uri
from reward.serving.process import image_host, peak_rss, server_process

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


def bomb_uri(i: int, side: int = 4096) -> str:
    """A 1-bit `side` x `side` PNG data URI (~2 KiB at 4096, decoded 16.7 M pixels), distinct for each `i`."""
    im = Image.new("1", (side, side))
    im.putpixel((i % side, i // side), 1)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _images_item(images: list[str]) -> dict:
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": "What color?"}]
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "red"}]
    return {"messages": messages, "images": images}


def memory_row(model: str, repo: str | None, args, items: int = 2, images: int = 8) -> dict:
    """Peak RSS growth of the server (checkout `repo`) under `items` x `images` distinct 4096 x 4096 1-bit PNGs."""
    flags = ["--device", args.device, "--dtype", args.dtype, "--max_items_per_request", str(items),
             "--max_images_per_item", str(images), "--max_wait_ms", "0"]  # fmt: skip
    small = bomb_uri(0, side=224)
    worst = {"items": [_images_item([bomb_uri(i * images + j) for j in range(images)]) for i in range(items)]}
    with server_process(model, *flags, **({"repo": repo} if repo else {})) as (proc, url):
        warm = httpx.post(url + "/v1/score", json={"items": [_images_item([small] * images)] * items}, timeout=600)
        before = peak_rss(proc.pid)
        start = time.perf_counter()
        r = httpx.post(url + "/v1/score", json=worst, timeout=600)
        seconds = time.perf_counter() - start
        after = peak_rss(proc.pid)
    return {"status": r.status_code, "warm_status": warm.status_code, "request_kib": len(json.dumps(worst)) / 1024,
            "peak_rss_mib": after / 2**20, "growth_mib": (after - before) / 2**20, "seconds": seconds}  # fmt: skip


def url_row(model: str, repo: str | None, flags: list[str], bodies: list[list[bytes]], args) -> dict:
    """Normal requests' latency alone, then with `args.slow_fetches` slow-URL requests in flight."""
    slow_body = json.dumps({"items": [_images_item(["SLOW"])]})
    drip_bytes = int(2 * (args.seconds + 10))  # the host drips for longer than the loaded run lasts
    with image_host({}, drip_s=0.5, drip_bytes=drip_bytes) as (_, host):
        body = slow_body.replace("SLOW", f"{host}/drip").encode()
        with server_process(model, "--device", args.device, "--dtype", args.dtype, *flags,
                            **({"repo": repo} if repo else {})) as (_, url):  # fmt: skip
            asyncio.run(run_load(url, bodies, args.clients, min(2.0, args.seconds)))  # warm-up
            alone = asyncio.run(run_load(url, bodies, args.clients, args.seconds))
            loaded = asyncio.run(_with_slow_fetches(url, body, bodies, args))
    return {"alone": alone, "with_slow_fetches": loaded, "p99_ratio": loaded["p99_ms"] / alone["p99_ms"]}


async def _with_slow_fetches(url: str, slow_body: bytes, bodies: list[list[bytes]], args) -> dict:
    limits = httpx.Limits(max_connections=args.slow_fetches + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        headers = {"Content-Type": "application/json"}
        slow = [asyncio.create_task(client.post(url + "/v1/score", content=slow_body, headers=headers))
                for _ in range(args.slow_fetches)]  # fmt: skip
        await asyncio.sleep(1.0)  # they are all inside the server, waiting on the slow host
        result = await run_load(url, bodies, args.clients, args.seconds)
        slow_status = [r.status_code for r in await asyncio.gather(*slow)]
    return {**result, "slow_statuses": sorted(set(slow_status))}


def guard_rows(model: str, single: list[list[bytes]], args) -> dict:
    """The memory and URL rows for this code and, if given, the baseline checkout."""
    out = {}
    for name, repo in (("this code", None), ("baseline", args.baseline_repo)):
        if name == "baseline" and not repo:
            continue
        allow = ["--allow_urls"] + (["--url_allowlist", "127.0.0.1/32", "--url_timeout_s", "5"] if not repo else [])
        out[name] = {"memory": memory_row(model, repo, args), "url": url_row(model, repo, allow, single, args)}
    return out


def guard_table(guards: dict, args) -> str:
    rows = [
        "| code | worst request | status | peak RSS growth MiB | normal p50 / p99 ms alone | with "
        f"{args.slow_fetches} slow fetches | p99 ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, g in guards.items():
        m, u = g["memory"], g["url"]
        rows.append(f"| {name} | 2 x 8 PNGs of 4096 x 4096, {m['request_kib']:.0f} KiB | {m['status']} | "
                    f"{m['growth_mib']:.0f} | {u['alone']['p50_ms']:.0f} / {u['alone']['p99_ms']:.0f} | "
                    f"{u['with_slow_fetches']['p50_ms']:.0f} / {u['with_slow_fetches']['p99_ms']:.0f} | "
                    f"{u['p99_ratio']:.2f} |")  # fmt: skip
    return "\n".join(rows)


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
    p.add_argument("--slow_fetches", type=int, default=48, help="Slow-URL requests in flight in the URL row.")
    p.add_argument("--baseline_repo", default=None, help="Also run the guard rows on this source checkout.")
    p.add_argument("--only", choices=["all", "load", "guards"], default="all", help="Which rows to run.")
    p.add_argument("--output", default="outputs/bench_server.json", help="Where the JSON results go.")
    args = p.parse_args()

    prompts = make_prompts(args.prompts, args.k, args.image_size)
    single = [[item_body(pr, im, rs[0])] for pr, im, rs in prompts]
    grpo = [[item_body(pr, im, r) for r in rs] for pr, im, rs in prompts]
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
              "processor": platform.processor(), "args": vars(args)}  # fmt: skip
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(args.preset, Path(tmp))
        if args.only in ("all", "load"):
            report.update(load_rows(model, prompts, single, grpo, args))
            tables.append(report["table"])
        if args.only in ("all", "guards"):
            report["guards"] = guard_rows(model, single, args)
            tables.append(guard_table(report["guards"], args))
    print("\n\n".join(tables))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(out)


def load_rows(model: str, prompts: list, single: list, grpo: list, args) -> dict:
    """Batching off vs on, merging off vs on, and the model alone."""
    on = ["--max_batch_items", str(args.max_batch_items), "--max_wait_ms", str(args.max_wait_ms)]
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
    return {"results": results, "ratios": ratios, "model_alone": alone, "table": "\n".join(rows)}


if __name__ == "__main__":
    main()
