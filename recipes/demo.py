"""The whole pipeline on the embedded tiny default, offline on a CPU, with the commands a user would type.

    python recipes/demo.py                 # what `make demo` runs; everything goes under outputs/demo
    python recipes/demo.py --root outputs/demo2 --n_train 256 --warm_start_steps 20 --rounds 2 --mpo_epochs 3
    python recipes/demo.py --root outputs/demo3 --reuse_models_from outputs/demo --mpo_epochs 3   # only data + loop

The paper's loop on the toy task (coloured shapes; "What color is the shape?"):

1. a random-weight tiny Qwen2.5-VL (the policy, and the reward model's backbone);
2. the toy task: image pairs, text-only pairs, held-out splits, prompts with ground truth;
3. the reward model, two stages as in the paper (image pairs; then text-only pairs added at a lower lr), DeepSpeed;
4. MPO round 0 on ground-truth pairs (a warm start, as MMPR-style correctness data gives a real policy);
5. the iterative loop (`recipes/mpo_rounds.py`, `recipes/configs/mpo_rounds_tiny.yaml`): per round, K answers to
   fresh training prompts sampled from the current policy, scored by the reward model, hybrid pairs (a correct
   chosen, a wrong rejected, the reward model breaking ties), MPO from the current policy, then the held-out
   evaluation and the guards (reward-hacking alarm, length bias, MPO health).

Each stage's command is printed before it runs. A summary of the measured figures closes the run. Every process runs
with one CPU thread and deterministic kernels, so the figures do not depend on the machine's load (README).
"""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import field
from pathlib import Path

import yaml

from common.cli import run_recipe
from common.distributed import free_port
from common.errors import ExpectedError, UsageError

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class DemoConfig:
    root: str = field(default="outputs/demo", metadata={"help": "Folder for every stage's output (must be new)."})
    n_train: int = field(default=1024, metadata={"help": "Toy training examples (colour questions; as many sums)."})
    n_eval: int = field(
        default=256,
        metadata={"help": "Toy held-out examples per question kind (256: a 95% interval of about +/-0.06 on a rate)."},
    )
    warm_start_steps: int = field(default=40, metadata={"help": "MPO steps on ground-truth pairs (round 0)."})
    rounds: int = field(default=3, metadata={"help": "Rounds of the iterative loop (recipes/mpo_rounds.py)."})
    prompts_per_round: int = field(default=128, metadata={"help": "Fresh training prompts sampled per round."})
    mpo_epochs: float = field(
        default=5.0, metadata={"help": "MPO epochs over each round's pairs (steps follow the round's pair count)."}
    )
    selection: str = field(default="hybrid", metadata={"help": "Pair selection of the loop: 'hybrid' or 'reward'."})
    reuse_models_from: str | None = field(
        default=None,
        metadata={"help": "An earlier demo's root with the same seed, n_train and warm_start_steps: its tiny policy, "
                  "reward model and warm start are linked, not trained again (to rerun only the toy data and the loop)."},
    )  # fmt: skip
    seed: int = field(
        default=0, metadata={"help": "Seed of every stage: the random policy, toy data, training, sampling."}
    )


# One thread per process and deterministic kernels: the same figures whatever else runs on the machine.
DETERMINISM = ["--full_determinism", "true"]


def _deepspeed(script: str, *args: str) -> list[str]:
    launcher = str(Path(sys.executable).parent / "deepspeed")
    return [launcher, "--num_gpus", "1", "--master_port", str(free_port()), script, *args]


def _run(name: str, cmd: list[str]) -> float:
    print(f"\n=== {name}\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if subprocess.run(cmd, cwd=REPO, env=env).returncode:
        raise ExpectedError(f"stage {name!r} failed: its message is above")
    return time.perf_counter() - start


def _rounds_config(root: Path, cfg: DemoConfig) -> Path:
    """recipes/configs/mpo_rounds_tiny.yaml with the demo's sizes (list-valued flags do not pass on a command line)."""
    rounds = yaml.safe_load((REPO / "recipes/configs/mpo_rounds_tiny.yaml").read_text())
    epochs = rounds["mpo_args"].index("--num_train_epochs") + 1
    rounds["mpo_args"][epochs] = str(cfg.mpo_epochs)
    rounds.update(
        num_rounds=cfg.rounds, prompts_per_round=cfg.prompts_per_round, selection=cfg.selection, seed=cfg.seed
    )
    path = root / "mpo_rounds.yaml"
    path.write_text(yaml.safe_dump(rounds, sort_keys=False))
    return path


def _gain(root: Path, result: dict) -> str:
    """Held-out correctness of round 0 and of the kept round, each with its Wilson 95% interval, and whether the
    kept round's is beyond round 0's interval (the claim the demo makes)."""
    first = json.loads((root / "rounds" / "round-00" / "round.json").read_text())["eval"]
    kept = result["eval"]
    (lo0, hi0), (lo, hi) = first["accuracy_interval"], kept["accuracy_interval"]
    beyond = kept["accuracy"] > hi0 and first["accuracy"] < lo
    return (
        f"held-out correct, round 0 -> kept round: {first['accuracy']:.3f} [{lo0:.3f}, {hi0:.3f}] -> "
        f"{kept['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] (95% intervals, {kept['judged']} prompts): "
        + ("a gain beyond both intervals" if beyond else "no gain beyond the intervals")
    )


def _summary(root: Path, reward_model: Path) -> str:
    stage = json.loads((reward_model / "stage_summary.json").read_text())["metrics"]
    result = json.loads((root / "rounds" / "result.json").read_text())
    report = (root / "rounds" / "report.md").read_text()
    table = "\n".join(line for line in report.splitlines() if line.startswith("|"))
    lines = [f"reward model, held-out pairwise accuracy: {stage['eval_accuracy']:.3f} (chance 0.5)",
             "", "iterative MPO (rounds/report.md; round 0 = the warm-started policy):", table, "",
             f"kept: round {result['best_round']}" + (f" (stopped: {result['stopped']['reason']})"
                                                     if result["stopped"] else ""), _gain(root, result)]  # fmt: skip
    for line in report.splitlines():
        if re.match(r"- round \d+: ", line):
            lines.append(line)
    return "\n".join(lines)


def _reuse(cfg: DemoConfig, root: Path) -> list[str]:
    """Link the earlier demo's stages 1, 3 and 4 into `root` after checking they are what this run would make;
    return the names of the stages that are not run."""
    src = Path(cfg.reuse_models_from).resolve()
    toy = json.loads((src / "toy" / "run_meta.json").read_text())["MakeToyDataConfig"]
    warm = json.loads((src / "mpo-round0" / "run_meta.json").read_text())["MPOConfig"]
    found = {"seed": toy["seed"], "n_train": toy["n_train"], "warm_start_steps": warm["max_steps"]}
    wanted = {"seed": cfg.seed, "n_train": cfg.n_train, "warm_start_steps": cfg.warm_start_steps}
    if found != wanted:
        raise SystemExit(f"--reuse_models_from {src}: made with {found}, this run has {wanted}")
    for name in ("tiny-vlm", "reward", "mpo-round0"):
        (root / name).symlink_to(src / name, target_is_directory=True)
    return ["1.", "3.", "4."]


def main(cfg: DemoConfig) -> None:
    root, py, seed = Path(cfg.root), sys.executable, str(cfg.seed)
    if root.exists():
        raise UsageError(f"{root} exists: the demo writes a fresh run; remove it or pass another --root")
    root.mkdir(parents=True)
    policy, toy, toy_text = root / "tiny-vlm", root / "toy", root / "toy-text"
    reward_dir = root / "reward"
    reward_model = reward_dir / "with_text" / "model"  # the export of the last stage
    stages = json.dumps([
        {"name": "multimodal", "datasets": {str(toy / "pairs_train"): 1.0}, "num_train_epochs": 6},
        {"name": "with_text", "datasets": {str(toy / "pairs_train"): 0.5, str(toy_text / "pairs_train"): 1.0},
         "learning_rate": 1e-4, "num_train_epochs": 1},
    ])  # fmt: skip
    steps = [
        ("1. tiny policy model (hidden 128)", [py, "recipes/make_tiny_model.py", "--output_dir", str(policy),
                                               "--hidden_size", "128", "--seed", seed]),
        ("2a. toy task: colour questions", [py, "recipes/make_toy_data.py", "--output_dir", str(toy), "--kinds",
                                            "color", "--n_train", str(cfg.n_train), "--n_eval", str(cfg.n_eval), "--seed", seed]),
        ("2b. toy task: text-only sums", [py, "recipes/make_toy_data.py", "--output_dir", str(toy_text), "--kinds",
                                          "sum", "--n_train", str(cfg.n_train), "--n_eval", str(cfg.n_eval), "--seed", seed]),
        ("3. reward model, 2 stages (DeepSpeed ZeRO-2)", _deepspeed(
            "recipes/train_reward.py", "--config", "recipes/configs/reward_tiny.yaml", "--model_name_or_path",
            str(policy), "--output_dir", str(reward_dir), "--deepspeed", "recipes/deepspeed/zero2.json",
            "--stages", stages, "--eval_datasets", str(toy / "pairs_eval"), str(toy_text / "pairs_eval"),
            "--seed", seed, *DETERMINISM)),
        ("4. MPO round 0 on ground-truth pairs (DeepSpeed ZeRO-2)", _deepspeed(
            "recipes/mpo_qwen.py", "--config", "recipes/configs/mpo_tiny_toy_cpu.yaml", "--model_name_or_path",
            str(policy), "--train_data", str(toy / "pairs_train"), "--output_dir", str(root / "mpo-round0"),
            "--max_steps", str(cfg.warm_start_steps), "--seed", seed, *DETERMINISM)),
        (f"5. iterative MPO, {cfg.rounds} rounds (recipes/mpo_rounds.py)", [
            py, "recipes/mpo_rounds.py", "--config", str(_rounds_config(root, cfg)), "--policy_name_or_path",
            str(root / "mpo-round0"), "--reward_model_name_or_path", str(reward_model), "--prompts",
            str(toy / "prompts_train"), "--eval_prompts", str(toy / "prompts_eval"), "--output_dir",
            str(root / "rounds")]),
    ]  # fmt: skip
    reused = _reuse(cfg, root) if cfg.reuse_models_from else []
    if reused:
        print(f"stages {', '.join(reused)} reused from {cfg.reuse_models_from}")
    timings = {name: _run(name, cmd) for name, cmd in steps if name.split()[0] not in reused}
    print("\n=== demo finished\n")
    for name, seconds in timings.items():
        print(f"{seconds:7.1f} s  {name}")
    print("\n" + _summary(root, reward_model))


if __name__ == "__main__":
    run_recipe(main, [DemoConfig])
