"""Train a vision-language reward model (Skywork-VL Reward recipe) in stages, with DeepSpeed.

    # the paper's two-stage 7B recipe (GPUs):
    deepspeed recipes/train_reward.py --config recipes/configs/reward_qwen2_5_vl_7b.yaml \
        --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct
    # tiny CPU run on the toy task (2 processes, ZeRO-3):
    python recipes/make_tiny_model.py --output_dir outputs/tiny-vlm
    python recipes/make_toy_data.py --output_dir outputs/toy
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 recipes/train_reward.py --config recipes/configs/reward_tiny.yaml \
        --model_name_or_path outputs/tiny-vlm --deepspeed recipes/deepspeed/zero3.json
    # without DeepSpeed, one process:
    python recipes/train_reward.py --config recipes/configs/reward_tiny.yaml --model_name_or_path outputs/tiny-vlm

Rerun the same command after a kill: finished stages are skipped, the current one resumes from its last checkpoint.
Any field of `reward.config.RewardConfig` (and of `transformers.TrainingArguments`) can be overridden as `--field`.
"""

from common.cli import parse_configs, run_recipe
from common.distributed import init_distributed_early, print0, shutdown
from reward.config import RewardConfig
from reward.train import train_reward_model


def main() -> None:
    init_distributed_early()  # before any from_pretrained, or ZeRO-3 sizes its batch for one rank
    (cfg,) = parse_configs([RewardConfig])
    path = train_reward_model(cfg)
    print0(f"reward model: {path}")
    shutdown()


if __name__ == "__main__":
    run_recipe(main)
