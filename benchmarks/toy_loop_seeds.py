"""Is the demo's gain robust? `recipes/demo.py` (what `make demo` runs) once per seed, and a table of what it claims.

    nice -n 5 python benchmarks/toy_loop_seeds.py --output_dir outputs/toy-loop-seeds --seeds 0 1 2

The seed reaches every stage (the random policy, the toy data, the reward model's and MPO's training, sampling), so
each seed is another run of the whole pipeline. Per seed: the reward model's held-out pairwise accuracy, held-out
correctness per round with its Wilson 95% interval, the round the loop kept, the health warnings and alarms, and the
stages' CPU time. The verdict per seed: the kept round's correctness is above round 0's interval (and round 0's below
the kept round's), and no round tripped the MPO health guard. Writes `results.json` in `output_dir`; extra flags after
`--` go to every demo run (e.g. `-- --n_eval 64`). With `--reuse_models_from` an earlier run's stages 1, 3 and 4 (the
tiny policy, the reward model, the warm start) are reused per seed and only the toy data and the loop run again.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rounds.guards import wilson_interval  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def seed_summary(root: Path) -> dict:
    """What one demo run under `root` measured (from its files, not its printout)."""
    reward = json.loads((root / "reward" / "with_text" / "model" / "stage_summary.json").read_text())["metrics"]
    result = json.loads((root / "rounds" / "result.json").read_text())
    rounds = []
    for path in sorted((root / "rounds").glob("round-*/round.json")):
        rec = json.loads(path.read_text())
        ev = rec["eval"]
        correct = round(ev["accuracy"] * ev["judged"])
        rounds.append({"round": rec["round"], "pairs": (rec.get("stats") or {}).get("pairs"), "correct": correct,
                       "judged": ev["judged"], "accuracy": ev["accuracy"],
                       "interval": list(wilson_interval(correct, ev["judged"])),
                       "degenerate_rate": ev.get("degenerate_rate"), "health": rec.get("health") or [],
                       "alarm": rec.get("alarm"), "unhealthy": rec.get("unhealthy")})  # fmt: skip
    kept = rounds[result["best_round"]]
    first = rounds[0]
    beats = kept["accuracy"] > first["interval"][1] and first["accuracy"] < kept["interval"][0]
    healthy = not any(r["health"] for r in rounds)
    return {"reward_accuracy": reward["eval_accuracy"], "rounds": rounds, "kept_round": result["best_round"],
            "stopped": result.get("stopped"), "kept_beats_round0": beats, "healthy": healthy}  # fmt: skip


def _cell(r: dict) -> str:
    lo, hi = r["interval"]
    return f"{r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


def table(results: dict[int, dict]) -> str:
    n = max(len(s["rounds"]) for s in results.values())
    lines = ["| seed | reward acc. | " + " | ".join(f"round {r} held-out correct [95% CI]" for r in range(n))
             + " | kept | kept > round 0 beyond CI | health warnings | CPU s |",
             "|---" * (n + 6) + "|"]  # fmt: skip
    for seed, s in results.items():
        cells = [_cell(r) for r in s["rounds"]] + ["-"] * (n - len(s["rounds"]))
        warnings = "; ".join(f"round {r['round']}: {w}" for r in s["rounds"] for w in r["health"]) or "none"
        lines.append(f"| {seed} | {s['reward_accuracy']:.3f} | " + " | ".join(cells)
                     + f" | {s['kept_round']} | {'yes' if s['kept_beats_round0'] else 'no'} | {warnings} | "
                     f"{s['cpu_seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="One demo root per seed (seed-N) and results.json.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds (at least 3 for the claim).")
    parser.add_argument("--reuse_models_from", help="A folder of an earlier run of this benchmark (seed-N inside): each "
                        "seed's demo reuses that seed's tiny policy, reward model and warm start (demo.py's flag).")  # fmt: skip
    args, demo_args = parser.parse_known_args()
    demo_args = [a for a in demo_args if a != "--"]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for seed in args.seeds:  # a finished seed is read back: seeds can run as parallel invocations into one folder
        root, timing = out / f"seed-{seed}", out / f"seed-{seed}.timing.json"
        if not timing.exists():
            cpu, wall = _children_cpu(), time.perf_counter()
            cmd = [sys.executable, "recipes/demo.py", "--root", str(root), "--seed", str(seed), *demo_args]
            if args.reuse_models_from:
                cmd += ["--reuse_models_from", str(Path(args.reuse_models_from) / f"seed-{seed}")]
            print(f"$ {' '.join(cmd)}", flush=True)
            with (out / f"seed-{seed}.log").open("w") as log:
                subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
            spent = {"cpu_seconds": _children_cpu() - cpu, "wall_seconds": time.perf_counter() - wall}
            timing.write_text(json.dumps(spent))
        results[seed] = {**seed_summary(root), **json.loads(timing.read_text())}
        print(table({seed: results[seed]}).splitlines()[-1], flush=True)
    report = table(results)
    print("\n" + report)
    ok = all(s["kept_beats_round0"] and s["healthy"] for s in results.values())
    print(
        f"\ntarget (every seed: kept round beyond round 0's interval, no health warning): {'met' if ok else 'NOT met'}"
    )
    stage_cpu = {seed: re.findall(r"^\s*([\d.]+) s  (.+)$", (out / f"seed-{seed}.log").read_text(), re.M)
                 for seed in results if (out / f"seed-{seed}.log").exists()}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"seeds": results, "demo_args": demo_args, "target_met": ok,
                                                  "stage_seconds": stage_cpu, "table": report}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
