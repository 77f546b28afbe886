"""The pair builder's local reward model: `reward.scorer.RewardScorer` as a `common.scoring.Scorer`."""

from __future__ import annotations

from common.scoring import Scorer
from reward.scorer import RewardScorer


def make_scorer(path: str, dtype: str, device: str, batch_size: int, min_pixels: int | None,
                max_pixels: int | None) -> Scorer:  # fmt: skip
    """The local reward model at `path` as a `Scorer` (no progress bar of its own: the build job has one)."""
    return RewardScorer.from_pretrained(path, dtype=dtype, device=device, batch_size=batch_size,
                                        min_pixels=min_pixels, max_pixels=max_pixels, progress=False)  # fmt: skip
