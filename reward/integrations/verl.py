"""verl custom reward function: score a rollout with the VL reward server, images included.

In verl's config (`custom_reward_function.path=reward/integrations/verl.py`, `custom_reward_function.name=
compute_score`), each sample's `extra_info` carries what the reward model needs besides the response:

    extra_info = {
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}],  # or a string
        "images": ["data:image/png;base64,...", ...],   # data URIs, or local paths (read here, sent as data URIs)
        "reward_url": "http://127.0.0.1:8000",           # optional: else $VLRM_REWARD_URL
    }

The API key comes from `extra_info["api_key"]` or `$VLRM_API_KEY`. The score is the reward model's raw reward.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from common.scoring import ScoringGroup
from reward.client import RewardClient

URL_ENV, KEY_ENV = "VLRM_REWARD_URL", "VLRM_API_KEY"


@functools.lru_cache(maxsize=8)
def _client(url: str, api_key: str | None) -> RewardClient:
    return RewardClient([u for u in url.split(",") if u], api_key=api_key)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs) -> float:  # fmt: skip
    """verl's reward-function signature; returns the reward of `solution_str` as the answer to the sample's prompt."""
    extra_info = extra_info or {}
    url = extra_info.get("reward_url") or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(f"no reward server: set extra_info['reward_url'] or ${URL_ENV}")
    prompt = extra_info.get("prompt")
    if prompt is None:
        raise ValueError(f"{data_source}: extra_info['prompt'] is missing (the messages the response answers)")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    images = list(extra_info.get("images") or [])
    client = _client(url, extra_info.get("api_key") or os.environ.get(KEY_ENV))
    return float(client.score_groups([ScoringGroup(list(prompt), images, [solution_str])])[0][0])
