"""Reward-data job throughput and peak memory: synthetic RLAIF-V-style sets of N pairs with small images.

    python benchmarks/bench_reward_data.py                                   # 10k and 100k pairs, filter off and on
    python benchmarks/bench_reward_data.py --sizes 1000 --filter off on      # quick (a suite runner)
    python benchmarks/bench_reward_data.py --sizes 10000 30000 --filter off --output outputs/bench_reward_data.json

Each set is a Parquet file of N rows (a 32x32 PNG of random rectangles each, a question, chosen and rejected; 5% exact
copies, 5% the same picture re-encoded as JPEG). Each measurement runs in a fresh process and reports:

* pairs/s (wall, and per CPU-second of the process: steadier on a shared machine) through the whole job (read, validate, hash, decontaminate against the reward fixtures, dedup, [score with
  a tiny random reward model], write chunks, mix, write the stage, report), and its ratio to the **baseline**: the same
  process only reading and converting the rows (the floor any pipeline pays);
* peak RSS above the process's RSS after imports (it counts the pages of memory-mapped Arrow files the job touched,
  which the kernel can drop), the peak of anonymous memory (heap) above its start, sampled every 20 ms, and the dedup
  index's serialised size and its heap (the index alone rebuilt from the run's keys files in another fresh process;
  Python objects take ~2x the serialised bytes). Chunks stream from disk and the report statistics and mixing state
  are bounded, so (heap peak - index heap) should stay flat as N grows: what grows is the index (and 11 bytes per pair
  of mixing arrays, plus 16 per pair a stage takes).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a red blue green circle square triangle left right top bottom is are two three shape image shows".split()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


class AnonPeak(threading.Thread):
    """Peak anonymous RSS (heap, not the memory-mapped Arrow files the kernel can drop), sampled every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = status_mb("RssAnon"), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, status_mb("RssAnon"))


def make_set(path: Path, n: int, seed: int = 0) -> None:
    """Write N synthetic RLAIF-V rows to Parquet in batches of 1000 (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    rnd = random.Random(seed)
    schema = pa.schema([("idx", pa.int64()), ("question", pa.string()), ("chosen", pa.string()),
                        ("rejected", pa.string()), ("ds_name", pa.string()),
                        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))])  # fmt: skip
    recent: list[dict] = []  # rows to copy from (bounded)
    batch: list[dict] = []
    with pq.ParquetWriter(str(path), schema) as writer:
        for i in range(n):
            kind = rnd.random()
            if kind < 0.10 and recent:  # a copy of an earlier row: the same PNG (5%) or re-encoded as JPEG (5%)
                row = dict(rnd.choice(recent))
                if kind < 0.05:
                    buf = io.BytesIO()
                    Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB").save(buf, format="JPEG", quality=90)
                    row["image"] = {"bytes": buf.getvalue(), "path": f"{i}.jpg"}
            else:
                im = Image.new("RGB", (32, 32), "white")
                d = ImageDraw.Draw(im)
                for _ in range(3):
                    x, y = rnd.randrange(24), rnd.randrange(24)
                    d.rectangle((x, y, x + rnd.randrange(4, 12), y + rnd.randrange(4, 12)),
                                fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))  # fmt: skip
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                row = {"question": " ".join(rnd.choice(WORDS) for _ in range(12)) + f" ({i})?",
                       "chosen": " ".join(rnd.choice(WORDS) for _ in range(20)) + ".",
                       "rejected": " ".join(rnd.choice(WORDS) for _ in range(20)) + ".", "ds_name": "synthetic",
                       "image": {"bytes": buf.getvalue(), "path": f"{i}.png"}}  # fmt: skip
                recent = [*recent[-999:], row]
            batch.append({**row, "idx": i})
            if len(batch) == 1000 or i == n - 1:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    from common.cli import parse_configs
    from data_builders.reward_data.config import RewardDataConfig
    from data_builders.reward_data.job import build_reward_data, iter_rows

    sources = [{"name": "synth", "format": "rlaif_v", "path": args.data}]
    bench = REPO / "tests" / "reward" / "fixtures"
    cfg_args = ["--sources", json.dumps(sources), "--stages", json.dumps([{"name": "all", "sources": ["synth"]}]),
                "--benchmarks", json.dumps([{"name": "vl_rewardbench", "path": str(bench / "vl_rewardbench.jsonl")}]),
                "--output_dir", args.out, "--chunk_size", "1000", "--progress", "false", "--num_proc",
                str(args.num_proc), "--score_batch_size", "16"]  # fmt: skip
    if args.reward_model:
        cfg_args += ["--reward_model_name_or_path", args.reward_model, "--filter_action", "flag"]  # score all, keep all
    (cfg,) = parse_configs([RewardDataConfig], cfg_args)
    base_rss, base_anon, sampler = status_mb("VmRSS"), status_mb("RssAnon"), AnonPeak()
    sampler.start()
    start, start_cpu = time.perf_counter(), time.process_time()
    if args.mode == "index":  # the dedup index alone, rebuilt from the job's keys files as a resumed run does
        import gc

        from data_builders.reward_data.dedup import DedupIndex

        index = DedupIndex(cfg.exact_dedup, cfg.near_dedup, cfg.near_text_threshold, cfg.image_hash_distance,
                           cfg.num_perm)  # fmt: skip
        for path in sorted((Path(args.job_out) / "chunks").glob("*.keys.npz")):
            index.load_chunk(path)
        gc.collect()
        print(json.dumps({"index_heap_mb": status_mb("RssAnon") - base_anon, "pairs": len(index)}))
        return
    if args.mode == "read":
        n = 0
        for spec, index, row, convert in iter_rows(cfg.specs()[0]):
            n += len(convert(row, str(index), spec.options))
        result = {"pairs_in": n}
    else:
        build_reward_data(cfg)
        report = json.loads((Path(args.out) / "report.json").read_text())
        result = {"pairs_in": report["rows"], "kept": report["cleaned_pairs"],
                  "index_mb": report["dedup_index"]["bytes"] / 2**20,
                  "index_bytes_per_pair": report["dedup_index"]["bytes_per_pair"]}  # fmt: skip
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    sampler.stop.set()
    sampler.join()
    print(json.dumps({**result, "seconds": seconds, "rows_per_s": result["pairs_in"] / seconds,
                      "rows_per_cpu_s": result["pairs_in"] / cpu,
                      "peak_mb": peak_rss_mb(), "base_mb": base_rss,
                      "anon_peak_above_base_mb": max(sampler.peak, status_mb("RssAnon")) - base_anon}))  # fmt: skip


def run_child(**kw) -> dict:
    cmd = [sys.executable, __file__, "--_child"] + [f"--{k}={v}" for k, v in kw.items() if v is not None]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--filter", nargs="+", choices=["off", "on"], default=["off", "on"])
    p.add_argument("--num_proc", type=int, default=1)
    p.add_argument("--output", default="outputs/bench_reward_data.json")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="job", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--reward_model", help=argparse.SUPPRESS)
    p.add_argument("--job_out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        return child(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reward = None
        if "on" in args.filter:  # a random tiny reward model, made as the server benchmark makes its own
            sys.path.insert(0, str(REPO))
            from benchmarks.bench_server import make_model

            reward = make_model("tiny", tmp)
        for n in args.sizes:
            data = tmp / f"synth_{n}.parquet"
            make_set(data, n)
            base = run_child(mode="read", data=data, out=tmp / "unused", num_proc=args.num_proc)
            for flt in args.filter:
                res = run_child(mode="job", data=data, out=tmp / f"out_{n}_{flt}", num_proc=args.num_proc,
                                reward_model=reward if flt == "on" else None)  # fmt: skip
                index = run_child(mode="index", data=data, out=tmp / "unused", job_out=tmp / f"out_{n}_{flt}")
                rows.append({"pairs": n, "filter": flt, **res, "baseline_rows_per_s": base["rows_per_s"],
                             "baseline_rows_per_cpu_s": base["rows_per_cpu_s"],
                             "ratio_to_read_only": res["rows_per_cpu_s"] / base["rows_per_cpu_s"],
                             "peak_above_base_mb": res["peak_mb"] - res["base_mb"],
                             "anon_peak_minus_index_mb": res["anon_peak_above_base_mb"] - res["index_mb"],
                             "index_heap_mb": index["index_heap_mb"],
                             "anon_peak_minus_index_heap_mb": res["anon_peak_above_base_mb"] - index["index_heap_mb"],
                             "read_only_peak_above_base_mb": base["peak_mb"] - base["base_mb"]})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    print("\n| pairs | filter | pairs/s (wall) | pairs/CPU-s | read-only pairs/CPU-s | ratio (CPU) | peak above base "
          "(MB) | heap peak above base (MB) | dedup index (MB) | heap peak - index (MB) | index B/pair | index heap "
          "(MB) | heap peak - index heap (MB) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['pairs']} | {r['filter']} | {r['rows_per_s']:.0f} | {r['rows_per_cpu_s']:.0f} | "
              f"{r['baseline_rows_per_cpu_s']:.0f} | "
              f"{r['ratio_to_read_only']:.3f} | {r['peak_above_base_mb']:.0f} | {r['anon_peak_above_base_mb']:.0f} | "
              f"{r['index_mb']:.1f} | {r['anon_peak_minus_index_mb']:.0f} | {r['index_bytes_per_pair']:.0f} | "
              f"{r['index_heap_mb']:.0f} | {r['anon_peak_minus_index_heap_mb']:.0f} |")  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(), "machine": platform.platform(),
            "cpus": os.cpu_count(), "num_proc": args.num_proc}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
