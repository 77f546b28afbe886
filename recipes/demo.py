"""The whole pipeline on the embedded tiny default, offline on a CPU, with the commands a user would type.

    python recipes/demo.py                 # what `make demo` runs; everything goes under outputs/demo
    python recipes/demo.py --root outputs/demo2 --n_train 256 --warm_start_steps 20 --mpo_steps 60

The paper's loop on the toy task (coloured shapes; "What color is the shape?"):

1. a random-weight tiny Qwen2.5-VL (the policy, and the reward model's backbone);
2. the toy task: image pairs, text-only pairs, held-out splits, prompts with ground truth;
3. the reward model, two stages as in the paper (image pairs; then text-only pairs added at a lower lr), DeepSpeed;
4. MPO round 0 on ground-truth pairs (a warm start, as MMPR-style correctness data gives a real policy);
5. reward-ranked pairs: K answers per training prompt sampled from that policy (temperature 0.5), scored by the
   reward model, best vs worst kept;
6. MPO round 1 on the reward-ranked pairs, with the held-out evaluation (correctness, pair accuracy, mean reward)
   before and after.

Each stage's command is printed before it runs. A summary of the measured figures closes the run.
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import field
from pathlib import Path

from common.cli import parse_configs
from common.distributed import free_port

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class DemoConfig:
    root: str = field(default="outputs/demo", metadata={"help": "Folder for every stage's output (must be new)."})
    n_train: int = field(default=1024, metadata={"help": "Toy training examples (colour questions; as many sums)."})
    n_eval: int = field(default=64, metadata={"help": "Toy held-out examples per question kind."})
    n_pair_prompts: int = field(default=128, metadata={"help": "Training prompts the pair builder samples for."})
    warm_start_steps: int = field(default=40, metadata={"help": "MPO steps on ground-truth pairs (round 0)."})
    mpo_steps: int = field(default=120, metadata={"help": "MPO steps on the reward-ranked pairs (round 1)."})


def _deepspeed(script: str, *args: str) -> list[str]:
    launcher = str(Path(sys.executable).parent / "deepspeed")
    return [launcher, "--num_gpus", "1", "--master_port", str(free_port()), script, *args]


def _run(name: str, cmd: list[str]) -> float:
    print(f"\n=== {name}\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def _mpo(policy: Path, pairs: Path, out: Path, toy: Path, reward_model: Path, steps: int) -> list[str]:
    return _deepspeed(
        "recipes/mpo_qwen.py", "--config", "recipes/configs/mpo_tiny_toy_cpu.yaml", "--model_name_or_path",
        str(policy), "--train_data", str(pairs), "--output_dir", str(out), "--max_steps", str(steps),
        "--eval_every_n_steps", str(steps), "--eval_pairs", str(toy / "pairs_eval"), "--eval_prompts",
        str(toy / "prompts_eval"), "--eval_reward_model", str(reward_model))  # fmt: skip


def _summary(root: Path, reward_model: Path) -> str:
    stage = json.loads((reward_model / "stage_summary.json").read_text())["metrics"]
    report = json.loads((root / "pairs" / "report.json").read_text())
    lines = [f"reward model, held-out pairwise accuracy: {stage['eval_accuracy']:.3f} (chance 0.5)",
             f"reward-ranked pairs: {report['pairs']} from {report['prompts']['processed']} prompts, "
             f"{report['candidates']['generated']} candidates", "",
             "| MPO round | step | held-out correct | pair accuracy | mean reward |", "|---|---|---|---|---|"]  # fmt: skip
    for name in ("mpo-round0", "mpo-round1"):
        for e in json.loads((root / name / "mpo_history.json").read_text())["eval"]:
            lines.append(f"| {name} | {e['step']} | {e.get('accuracy', float('nan')):.3f} | "
                         f"{e.get('pair_accuracy', float('nan')):.3f} | {e.get('mean_reward', float('nan')):.3f} |")  # fmt: skip
    return "\n".join(lines)


def main(cfg: DemoConfig) -> None:
    root, py = Path(cfg.root), sys.executable
    if root.exists():
        raise SystemExit(f"{root} exists: the demo writes a fresh run; remove it or pass another --root")
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
                                               "--hidden_size", "128"]),
        ("2a. toy task: colour questions", [py, "recipes/make_toy_data.py", "--output_dir", str(toy), "--kinds",
                                            "color", "--n_train", str(cfg.n_train), "--n_eval", str(cfg.n_eval)]),
        ("2b. toy task: text-only sums", [py, "recipes/make_toy_data.py", "--output_dir", str(toy_text), "--kinds",
                                          "sum", "--n_train", str(cfg.n_train), "--n_eval", str(cfg.n_eval)]),
        ("3. reward model, 2 stages (DeepSpeed ZeRO-2)", _deepspeed(
            "recipes/train_reward.py", "--config", "recipes/configs/reward_tiny.yaml", "--model_name_or_path",
            str(policy), "--output_dir", str(reward_dir), "--deepspeed", "recipes/deepspeed/zero2.json",
            "--stages", stages, "--eval_datasets", str(toy / "pairs_eval"), str(toy_text / "pairs_eval"))),
        ("4. MPO round 0 on ground-truth pairs (DeepSpeed ZeRO-2)",
         _mpo(policy, toy / "pairs_train", root / "mpo-round0", toy, reward_model, cfg.warm_start_steps)),
        ("5. reward-ranked pairs from the round-0 policy", [
            py, "recipes/build_pairs.py", "--config", "recipes/configs/build_pairs_tiny.yaml", "--prompts",
            str(toy / "prompts_train"), "--max_prompts", str(cfg.n_pair_prompts), "--policy_name_or_path",
            str(root / "mpo-round0"), "--reward_model_name_or_path", str(reward_model), "--output_dir",
            str(root / "pairs"),
            # At temperature 1 a weak policy writes broken text that the tiny reward model, trained on clean
            # sentences only, scores highly: round 1 then learns the broken text (docs/LOG.md).
            "--temperature", "0.5", "--top_p", "0.9", "--max_new_tokens", "12"]),
        ("6. MPO round 1 on the reward-ranked pairs (DeepSpeed ZeRO-2)",
         _mpo(root / "mpo-round0", root / "pairs" / "pairs", root / "mpo-round1", toy, reward_model, cfg.mpo_steps)),
    ]  # fmt: skip
    timings = {name: _run(name, cmd) for name, cmd in steps}
    print("\n=== demo finished\n")
    for name, seconds in timings.items():
        print(f"{seconds:7.1f} s  {name}")
    print("\n" + _summary(root, reward_model))


if __name__ == "__main__":
    main(*parse_configs([DemoConfig]))
