"""Evaluate a reward model on a reward benchmark from local files (docs/evaluation.md).

    # tiny CPU run on the shipped fixtures
    python recipes/eval_reward.py --config recipes/configs/eval_reward_tiny.yaml \
        --model outputs/tiny-vlm --benchmark vl_rewardbench \
        --data tests/reward/fixtures/vl_rewardbench.jsonl --output_dir outputs/eval-tiny

    # the paper's table with the released checkpoint on one GPU (bf16)
    python recipes/eval_reward.py --model Skywork-VL-Reward-7B --dtype bfloat16 --device cuda \
        --benchmark vl_rewardbench --data data/VL-RewardBench/data --output_dir outputs/eval-skywork-vlrb
    python recipes/eval_reward.py --model Skywork-VL-Reward-7B --dtype bfloat16 --device cuda \
        --benchmark rewardbench --data data/reward-bench/filtered.parquet --output_dir outputs/eval-skywork-rb

Writes predictions.jsonl, metrics.json, results.md (beside the published rows), categories.png, run_meta.json.
"""

from common.cli import run_recipe
from reward.evaluate import EvalConfig, evaluate_reward_model
from reward.scorer import ScorerConfig


def main(cfg: EvalConfig, scorer_cfg: ScorerConfig) -> None:
    cfg.validate()  # fail before loading the model
    out_dir = evaluate_reward_model(cfg, scorer_cfg)
    print((out_dir / "results.md").read_text())
    print(out_dir)


if __name__ == "__main__":
    run_recipe(main, [EvalConfig, ScorerConfig])
