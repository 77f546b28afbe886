"""MPO (Mixed Preference Optimization) of a Qwen2.5-VL policy on preference pairs, with DeepSpeed.

Launch (each YAML's first line repeats its command):

    # 8 GPUs, Qwen2.5-VL-7B-Instruct, ZeRO-3 (set --deepspeed recipes/deepspeed/zero2.json for ZeRO-2)
    deepspeed recipes/mpo_qwen.py --config recipes/configs/mpo_qwen2_5_vl_7b.yaml
    # several nodes: DeepSpeed's hostfile
    deepspeed --hostfile hostfile recipes/mpo_qwen.py --config recipes/configs/mpo_qwen2_5_vl_7b.yaml
    # or accelerate
    accelerate launch --use_deepspeed --num_processes 8 recipes/mpo_qwen.py --config recipes/configs/mpo_qwen2_5_vl_7b.yaml
    # tiny CPU run (2 processes) on a model made by common.tiny_vlm.save_tiny_vlm and the toy task
    deepspeed --num_gpus 2 recipes/mpo_qwen.py --config recipes/configs/mpo_tiny_cpu.yaml \
        --model_name_or_path outputs/tiny-vlm --train_data outputs/toy/pairs_train --output_dir outputs/mpo-tiny

Any config field can be overridden on the command line (`--beta 0.2`, `--use_lora true`, `--resume_from_checkpoint
true`). `--eval_reward_model PATH` adds the mean reward of the policy's greedy answers to the evaluation hook
(`--eval_prompts`), scored by that reward model on every rank (it is loaded once per rank, beside the policy).
"""

import dataclasses
from dataclasses import field

from common.cli import parse_configs, run_recipe
from common.distributed import init_distributed_early, print0
from mpo.config import MPOConfig
from mpo.train import train_mpo
from reward.model import check_value_head
from reward.scorer import RewardScorer


@dataclasses.dataclass
class EvalRewardArgs:
    eval_reward_model: str | None = field(
        default=None, metadata={"help": "Reward model that scores the greedy answers to --eval_prompts (mean_reward)."}
    )


def reward_scorer(path: str, cfg: MPOConfig) -> RewardScorer:
    """The evaluation hook's reward model on this rank's device."""
    device = "cpu" if cfg.use_cpu else "auto"
    return RewardScorer.from_pretrained(
        path, device=device, dtype="bfloat16" if cfg.bf16 else "float32", progress=False
    )


def main() -> None:
    init_distributed_early()  # before any from_pretrained: ZeRO-3's zero.Init must see every rank
    cfg, args = parse_configs([MPOConfig, EvalRewardArgs])
    path = args.eval_reward_model
    check_value_head(path, "eval_reward_model")
    out = train_mpo(cfg, load_scorer=(lambda: reward_scorer(path, cfg)) if path else None)  # loaded after the checks
    print0(f"MPO model saved to {out}")


if __name__ == "__main__":
    run_recipe(main)
