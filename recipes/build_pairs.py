"""Reward-ranked preference pairs: sample K responses per prompt from a policy VLM, score them with a reward model,
keep chosen/rejected pairs, write a `datasets` folder that `mpo/` trains on (docs/data_building.md).

    # one process (CPU or one GPU); rerun the same command after a kill to resume
    python recipes/build_pairs.py --config recipes/configs/build_pairs_tiny.yaml \
        --prompts outputs/toy/prompts_train --policy_name_or_path outputs/tiny-vlm \
        --reward_model_name_or_path outputs/reward-tiny --output_dir outputs/pairs-tiny

    # several processes: each rank takes a deterministic shard of the chunks, rank 0 merges
    torchrun --nproc_per_node 2 recipes/build_pairs.py --config recipes/configs/build_pairs_tiny.yaml ...
    deepspeed --num_gpus 8 recipes/build_pairs.py --config recipes/configs/build_pairs_qwen2_5_vl_7b.yaml ...
"""

from common.cli import run_recipe
from common.distributed import init_distributed_early, print0, shutdown
from data_builders.build import build_pairs
from data_builders.config import BuildPairsConfig


def main(cfg: BuildPairsConfig) -> None:
    cfg.validate()  # fail before any process group or model load
    init_distributed_early()
    pairs = build_pairs(cfg)
    print0(pairs)
    shutdown()


if __name__ == "__main__":
    run_recipe(main, [BuildPairsConfig])
