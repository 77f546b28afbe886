"""Run every benchmark, one after the other, and write one JSON and one markdown table of ratios.

    python benchmarks/run_all.py                                  # CPU, ~6 min on 2 cores: outputs/bench_all/
    python benchmarks/run_all.py --quick --output_dir /tmp/bench  # tiny shapes, ~1 min (the test runs this)

Each benchmark stays a script of its own: it runs here as a subprocess with a JSON output path, and its figures are
read back from that JSON. Each figure is a ratio of our path to its baseline measured in the same run (speed:
baseline time / ours; memory: ours / baseline), next to its ideal: the ratio that counting the work predicts for that
shape (`benchmarks/ideal.py`), and measured / ideal. A benchmark whose script is absent gets a 'not present' line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ideal import Shape, mpo_memory_ideal, mpo_step_flops, sampling_ideal, scoring_ideal  # noqa: E402
from common.tiny_vlm import TinyVLMSpec  # noqa: E402


@dataclasses.dataclass
class Figure:
    """One row of the table: ours against the baseline on one shape, and the ideal of that ratio."""

    benchmark: str
    figure: str
    shape: str
    baseline: str  # e.g. "12.3 cand/s"
    ours: str
    ratio: float
    ideal: float | None = None
    clock: str = ""

    @property
    def of_ideal(self) -> float | None:
        return self.ratio / self.ideal if self.ideal else None


def image_tokens(spec: TinyVLMSpec, image_size: int, max_pixels: int | None = None) -> int:
    """LM tokens of one square image after the processor's resize (28 px per token side)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    h, w = smart_resize(image_size, image_size, factor=28, min_pixels=spec.min_pixels,
                        max_pixels=max_pixels or spec.max_pixels)  # fmt: skip
    return h * w // 28**2


def _spec(result_preset: str, spec: dict | None = None) -> TinyVLMSpec:
    return TinyVLMSpec.preset(result_preset, **(spec or {}))


def scoring_figures(r: dict) -> list[Figure]:
    m = r["meta"]
    spec = _spec(m["preset"])
    shape = Shape.from_spec(spec)
    itok = image_tokens(spec, m["image_size"], max(28 * 28 * 256, m["image_size"] ** 2))
    cpu = m["device"] == "cpu"
    out = []
    for row in r["results"]:
        ideal = scoring_ideal(shape, row["k"], itok, m["prompt_tokens"], m["response_tokens"])["ideal_speedup"]
        ratio = row["cpu_speedup"] if cpu else row["speedup"]
        out.append(Figure("scoring", f"group-aware vs naive, K={row['k']} (candidates/s)",
                          f"{m['preset']}, {itok} img + {m['prompt_tokens'] - itok} text prompt tok, "
                          f"{m['response_tokens']} resp tok, {m['groups']} groups",
                          f"{row['naive_cand_per_s']:.1f} cand/s", f"{row['group_aware_cand_per_s']:.1f} cand/s",
                          ratio, ideal, "CPU time" if cpu else "wall"))  # fmt: skip
    return out


def sampling_figures(r: dict) -> list[Figure]:
    spec = _spec(r["preset"])
    shape = Shape.from_spec(spec)
    itok = image_tokens(spec, r["image_size"])
    out = []
    for row in r["rows"]:
        ideal = sampling_ideal(shape, row["K"], itok, r["prompt_tokens"], r["max_new_tokens"])
        out.append(Figure("sampling", f"shared prefill vs generate(num_return_sequences), K={row['K']}",
                          f"{r['preset']}, {r['prompt_tokens']} prompt tok ({itok} img), {r['max_new_tokens']} new tok, "
                          f"prefill {ideal['prefill_share']:.0%} of baseline FLOPs",
                          f"{row['baseline_cand_per_s']:.2f} cand/s", f"{row['shared_cand_per_s']:.2f} cand/s",
                          row["speedup"], ideal["ideal_speedup"],
                          "wall" if r["clock"] == "wall" else "CPU time"))  # fmt: skip
    return out


def mpo_figures(r: dict) -> list[Figure]:
    trl, ours = r["trl"], r["ours"]
    spec = _spec(r["preset"], r.get("spec"))
    shape = Shape.from_spec(spec)
    itok, ptok, rtok = ours["image_tokens_per_pair"] or 0, round(ours["prompt_tokens_per_pair"]), ours["response_tokens_per_pair"]  # fmt: skip
    ckpt, gpu = ours.get("gradient_checkpointing", False), ours["device"] == "cuda"
    desc = (f"{r['preset']}, {r.get('batch_size', '?')} pairs/step, {itok} img + {ptok - itok} text prompt tok, "
            f"{rtok:.0f} resp tok, {ours.get('mode', 'full fine-tune, vision tower trained')}{', checkpointing' if ckpt else ''}")  # fmt: skip
    mode = ours.get("mode", "full fine-tune, vision tower trained")
    step = mpo_step_flops(shape, itok, ptok, rtok, ckpt, "vision tower trained" in mode, mode.startswith("full"))
    mem = mpo_memory_ideal(shape, r.get("batch_size", 4), itok, ptok, rtok, 2 if gpu else 4, ckpt,
                           ours.get("trainable_params"), "vision tower trained" in mode, mode.startswith("full"))  # fmt: skip
    return [
        Figure("mpo", "step: ours vs TRL DPOTrainer, same losses (step time)", desc, f"{trl['step_s']:.3f} s",
               f"{ours['step_s']:.3f} s", trl["step_s"] / ours["step_s"], step["ideal_speedup"], "wall"),
        Figure("mpo", "peak memory, ours / TRL (lower is better)", desc, f"{trl['peak_mb']:.0f} MiB",
               f"{ours['peak_mb']:.0f} MiB", ours["peak_mb"] / trl["peak_mb"], mem["ideal_memory_ratio"],
               "GPU allocated" if gpu else "process peak RSS"),
    ]  # fmt: skip


def server_figures(r: dict) -> list[Figure]:
    """`bench_server.py`: batching on vs off (one item a request), group merging on vs off (K requests of a prompt).

    No ideal: the server's gain is fewer, fuller model calls, bounded by the `model_alone` ceiling it also reports.
    """
    a, names = r["args"], list(r["results"])
    shape = f"{a['preset']}, {a['clients']} clients, {a['seconds']:.0f} s a scenario, {a['image_size']} px images"
    pairs = (("batching", "batching on vs off (items/s)", names[0], names[1]),
             ("group_merging", f"group merging on vs off, K={a['k']} (items/s)", names[2], names[3]))  # fmt: skip
    return [Figure("server", figure, shape, f"{r['results'][base]['items_per_s']:.1f} items/s",
                   f"{r['results'][ours]['items_per_s']:.1f} items/s", r["ratios"][key], None, "wall")
            for key, figure, base, ours in pairs]  # fmt: skip


def reward_data_figures(r: dict) -> list[Figure]:
    """`bench_reward_data.py`: the whole job's pairs per CPU-second against reading the same rows (the floor).

    The ratio is below 1 by nature (the job does everything the read does and more); no FLOP ideal applies.
    """
    return [Figure("reward_data", f"job / read-only, filter {row['filter']} (pairs per CPU-s)",
                   f"{row['pairs']} synthetic pairs", f"{row['baseline_rows_per_cpu_s']:.0f} pairs/CPU-s",
                   f"{row['rows_per_cpu_s']:.0f} pairs/CPU-s", row["ratio_to_read_only"], None, "CPU time")
            for row in r["rows"]]  # fmt: skip


def correctness_figures(r: dict) -> list[Figure]:
    """`bench_correctness.py`: the answer verifier's judgments per CPU-second against the old rule (a regex search:
    the ratio is below 1 by nature, the verifier reads the final answer and checks math) and against math-verify
    alone (what every judgment would cost without the fast path). Agreement with the mix's labels in the shape."""
    shape = (f"{r['judgments']} judgments, K={r['k']}, {r['multiple_choice_share']:.0%} multiple choice, "
             f"{r['symbolic_share']:.1%} symbolic; agreement ours {r['ours_agreement']:.1%}, old "
             f"{r['old_agreement']:.1%}, math-verify {r['math_verify_agreement']:.1%}")  # fmt: skip
    return [Figure("correctness", "verifier / old rule (judgments per CPU-s)", shape, f"{r['old_per_cpu_s']:.0f} /CPU-s",
                   f"{r['ours_per_cpu_s']:.0f} /CPU-s", r["ratio_to_old"], None, "CPU time"),
            Figure("correctness", f"verifier / math-verify alone ({r['math_verify_judgments']} judgments)", shape,
                   f"{r['math_verify_per_cpu_s']:.0f} /CPU-s", f"{r['ours_per_cpu_s']:.0f} /CPU-s",
                   r["ratio_to_math_verify"], None, "CPU time")]  # fmt: skip


@dataclasses.dataclass
class Bench:
    """A registry entry: the script, its arguments (full run / --quick), the flag of its JSON path, its figures."""

    name: str
    script: str
    full: list[str]
    quick: list[str]
    output_flag: str
    figures: Callable[[dict], list[Figure]]


REGISTRY = [
    Bench("scoring", "benchmarks/bench_scoring.py",
          ["--ks", "4", "8", "--groups", "4", "--repeats", "3"],
          ["--preset", "tiny", "--ks", "4", "--groups", "2", "--repeats", "1", "--image_size", "224"],
          "--output", scoring_figures),
    Bench("sampling", "benchmarks/bench_sampling.py",
          ["--ks", "4", "8", "--repeats", "3"],
          ["--preset", "tiny", "--ks", "4", "--repeats", "1", "--max_new_tokens", "4", "--image_size", "224"],
          "--out", sampling_figures),
    Bench("mpo", "benchmarks/bench_mpo.py",
          ["--steps", "5", "--warmup", "2"],
          ["--preset", "tiny", "--steps", "1", "--warmup", "1", "--batch_size", "2", "--image_size", "224"],
          "--out", mpo_figures),
    Bench("server", "benchmarks/bench_server.py", ["--seconds", "10", "--clients", "16"],
          ["--seconds", "2", "--clients", "8"], "--output", server_figures),
    Bench("reward_data", "benchmarks/bench_reward_data.py", ["--sizes", "2000", "10000", "--filter", "off"],
          ["--sizes", "300", "--filter", "off"], "--output", reward_data_figures),
    Bench("correctness", "benchmarks/bench_correctness.py", ["--prompts", "1000"],
          ["--prompts", "60", "--math_verify_judgments", "48"], "--output", correctness_figures),
]  # fmt: skip


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False).stdout.strip()


def machine() -> dict:
    """CPU model, cores, memory, GPU, load average, package versions and the git commit."""
    import importlib.metadata as md

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())  # fmt: skip
    mem = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)  # fmt: skip
    versions = {}
    for pkg in ("torch", "transformers", "trl", "deepspeed", "peft", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    sha = _run(["git", "rev-parse", "--short", "HEAD"], REPO)
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], REPO))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1) if mem else None,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average": os.getloadavg(), "python": platform.python_version(), **versions,
            "git_sha": sha + ("-dirty" if dirty else "")}  # fmt: skip


def markdown(figures: list[Figure], meta: dict) -> str:
    m = meta["machine"]
    lines = [
        f"`{meta['command']}` — {meta['date']}, {meta['duration_s']:.0f} s, git {m['git_sha']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; load average "
        f"{' / '.join(f'{x:.2f}' for x in meta['load_start'])} (start), "
        f"{' / '.join(f'{x:.2f}' for x in meta['load_end'])} (end); threads per benchmark: "
        f"OMP_NUM_THREADS={meta['omp_num_threads']}. Versions: "
        + ", ".join(f"{k} {m[k]}" for k in ("torch", "transformers", "trl", "deepspeed", "peft")),
        "",
        "| benchmark | figure | shape | baseline | ours | measured ratio | ideal ratio | measured / ideal | clock |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        ideal = f"{f.ideal:.2f}" if f.ideal else "—"
        of_ideal = f"{f.of_ideal:.0%}" if f.of_ideal else "—"
        lines.append(f"| {f.benchmark} | {f.figure} | {f.shape} | {f.baseline} | {f.ours} | {f.ratio:.3g} | "
                     f"{ideal} | {of_ideal} | {f.clock} |")  # fmt: skip
    for name, status in meta["benchmarks"].items():
        if status["status"] != "ok":
            lines.append(f"\n{name}: {status['status']}" + (f" — {status['detail']}" if status.get("detail") else ""))
    return "\n".join(lines) + "\n"


def run_script(
    script: str, args: list[str], output_flag: str, out: Path, env: dict, timeout: float | None = None
) -> dict:
    """Run one benchmark script with its JSON going to `out`; its status, command and duration."""
    path = REPO / script
    if not path.exists():
        return {"status": "not present", "detail": f"{script} does not exist in this checkout"}
    cmd = [sys.executable, str(path), *args, output_flag, str(out)]
    start = time.perf_counter()
    status = {"command": shlex.join(cmd)}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**status, "status": "failed", "detail": f"timed out after {timeout:.0f} s", "duration_s": timeout}
    status["duration_s"] = round(time.perf_counter() - start, 1)
    if proc.returncode != 0 or not out.exists():
        return {**status, "status": "failed", "detail": (proc.stderr or proc.stdout)[-2000:]}
    return {**status, "status": "ok"}


def bench_env() -> dict:
    """The environment of each benchmark: this checkout first on the path, offline, one thread unless told."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/bench_all", help="Each benchmark's JSON, results.json, results.md.")
    p.add_argument("--quick", action="store_true", help="Tiny shapes and one repeat: checks the suite, not speed.")
    p.add_argument("--only", nargs="+", choices=[b.name for b in REGISTRY], help="Run these benchmarks only.")
    a = p.parse_args()

    out_dir = Path(a.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = bench_env()
    meta = {"command": shlex.join(["python", "benchmarks/run_all.py", *sys.argv[1:]]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": a.quick,
            "omp_num_threads": env["OMP_NUM_THREADS"], "load_start": os.getloadavg(), "benchmarks": {}}  # fmt: skip
    start = time.perf_counter()
    figures: list[Figure] = []
    for bench in REGISTRY:
        if a.only and bench.name not in a.only:
            continue
        json_path = out_dir / f"{bench.name}.json"
        json_path.unlink(missing_ok=True)
        status = run_script(bench.script, bench.quick if a.quick else bench.full, bench.output_flag, json_path, env)
        meta["benchmarks"][bench.name] = status
        print(f"{bench.name}: {status['status']}" + (f" ({status['duration_s']} s)" if "duration_s" in status else ""),
              flush=True)  # fmt: skip
        if status["status"] == "ok":
            result = json.loads(json_path.read_text())
            status["result"] = result
            figures += bench.figures(result)
    meta.update(duration_s=time.perf_counter() - start, load_end=os.getloadavg(), machine=machine())
    table = markdown(figures, meta)
    (out_dir / "results.json").write_text(
        json.dumps(
            {"meta": meta, "figures": [{**dataclasses.asdict(f), "of_ideal": f.of_ideal} for f in figures]}, indent=2
        )
        + "\n"  # fmt: skip
    )
    (out_dir / "results.md").write_text(table)
    print("\n" + table)
    failed = [n for n, s in meta["benchmarks"].items() if s["status"] == "failed"]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see {out_dir / 'results.json'})")


if __name__ == "__main__":
    main()
