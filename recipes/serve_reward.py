"""Serve a reward model over HTTP with images and dynamic batching (docs/serving.md).

    python recipes/serve_reward.py --model outputs/reward-tiny --port 8000
    VLRM_API_KEY=secret python recipes/serve_reward.py --model Skywork-VL-Reward-7B --dtype bfloat16 \
        --device cuda --host 0.0.0.0 --image_root /data/images
"""

from common.cli import run_recipe
from reward.scorer import ScorerConfig
from reward.serving.app import ServeConfig, serve


def main(cfg: ServeConfig, scorer_cfg: ScorerConfig) -> None:
    cfg.validate()  # fail before loading the model
    serve(cfg, scorer_cfg)


if __name__ == "__main__":
    run_recipe(main, [ServeConfig, ScorerConfig])
