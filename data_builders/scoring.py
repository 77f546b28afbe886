"""The one thing the build job asks of a reward model: scores for groups of K responses to one prompt.

`Scorer` is a structural protocol with a single method, so any object with `score_groups` plugs in: the local
`reward.scorer.RewardScorer` (group-aware: each prompt's images and text are encoded once) today, a remote HTTP
reward service later. A group is `reward.scorer.ScoringGroup(prompt, images, responses)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from reward.scorer import RewardScorer, ScoringGroup


class Scorer(Protocol):
    def score_groups(self, groups: Sequence[ScoringGroup]) -> list[list[float]]:
        """`[[reward of group.responses[k] for k] for group in groups]`."""
        ...


def make_scorer(path: str, dtype: str, device: str, batch_size: int, min_pixels: int | None,
                max_pixels: int | None) -> Scorer:  # fmt: skip
    """The local reward model at `path` as a `Scorer` (no progress bar of its own: the build job has one)."""
    return RewardScorer.from_pretrained(path, dtype=dtype, device=device, batch_size=batch_size,
                                        min_pixels=min_pixels, max_pixels=max_pixels, progress=False)  # fmt: skip
