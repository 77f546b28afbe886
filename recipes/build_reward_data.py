"""The reward model's training set from public preference data: read, clean (ambiguous pairs, duplicates, benchmark
overlap, weak pairs by a surrogate reward model), and mix into one `datasets` folder per stage
(docs/reward_data.md).

    # the shipped fixtures, a few seconds on CPU:
    python recipes/build_reward_data.py --config recipes/configs/reward_data_tiny.yaml --output_dir outputs/reward-data-tiny
    # the paper's mixture (fill in the local paths first):
    python recipes/build_reward_data.py --config recipes/configs/reward_data_skywork.yaml --num_proc 16

Rerun the same command after a kill: finished chunks are kept and the output is the same as an uninterrupted run's.
Then train: `recipes/train_reward.py` with the `stages:` block the job writes to `<output_dir>/stages.yaml`.
"""

from common.cli import run_recipe
from data_builders.reward_data.config import RewardDataConfig
from data_builders.reward_data.job import build_reward_data


def main(cfg: RewardDataConfig) -> None:
    for name, path in build_reward_data(cfg).items():
        print(f"stage {name}: {path}")


if __name__ == "__main__":
    run_recipe(main, [RewardDataConfig])
