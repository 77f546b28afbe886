"""The pair builder's reward model as a `common.scoring.Scorer`: local (`RewardScorer`) or a reward server's client."""

from __future__ import annotations

from common.scoring import Scorer
from reward.scorer import RewardScorer


def make_scorer(path: str, dtype: str, device: str, batch_size: int, min_pixels: int | None,
                max_pixels: int | None) -> Scorer:  # fmt: skip
    """The local reward model at `path` as a `Scorer` (no progress bar of its own: the build job has one)."""
    return RewardScorer.from_pretrained(path, dtype=dtype, device=device, batch_size=batch_size,
                                        min_pixels=min_pixels, max_pixels=max_pixels, progress=False)  # fmt: skip


def make_remote_scorer(urls: list[str], batch_size: int) -> Scorer:
    """Reward server replicas at `urls` (recipes/serve_reward.py) as a `Scorer`; `batch_size` responses a request."""
    from reward.client import RewardClient  # needs the `serve` extra (httpx)

    return RewardClient(urls, max_items_per_request=batch_size)
