"""The one scoring contract: groups of K responses to one prompt in, one reward per response out.

`Scorer` is a structural protocol with a single method, so anything with `score_groups` plugs in wherever rewards are
needed (pair building, the MPO evaluation hook, the reward-data filter): the local group-aware
`reward.scorer.RewardScorer` (each prompt's images and text are encoded once), or a client of the reward server.
It lives in `common` because `mpo` takes a scorer but may not import `reward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass
class ScoringGroup:
    """K responses to one prompt: what best-of-K ranking and chosen/rejected pairs look like.

    Args:
        prompt: the conversation before the answer (TRL conversational messages, `{"type": "image"}` placeholders).
        images: one image (PIL, path or `{"bytes", "path"}`) per placeholder, in order.
        responses: the K assistant responses (plain text) to score.
    """

    prompt: list[dict]
    images: list
    responses: list[str]


class Scorer(Protocol):
    def score_groups(self, groups: Sequence[ScoringGroup]) -> list[list[float]]:
        """`[[reward of group.responses[k] for k] for group in groups]`."""
        ...
