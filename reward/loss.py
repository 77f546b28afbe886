"""The pairwise Bradley-Terry reward loss, as a pure function.

    L = mean_i[ -log sigmoid(r+_i - r-_i - m_i) ] + c * mean_i[ (r+_i + r-_i)^2 ]

`m` is an optional per-pair margin (0 when absent) and `c` the reward-centering coefficient (off when 0), as in
TRL's `RewardTrainer` (`margin` column, `center_rewards_coefficient`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairwiseLossOutput:
    """The loss (scalar, differentiable) and the per-step metrics (scalars, detached)."""

    loss: torch.Tensor
    accuracy: torch.Tensor  # fraction of pairs with r+ > r- (a tie counts as wrong)
    margin: torch.Tensor  # mean of r+ - r-
    chosen_reward: torch.Tensor  # mean r+
    rejected_reward: torch.Tensor  # mean r-

    def metrics(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy.item(),
            "margin": self.margin.item(),
            "chosen_reward": self.chosen_reward.item(),
            "rejected_reward": self.rejected_reward.item(),
        }


def pairwise_reward_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float = 0.0,
) -> PairwiseLossOutput:
    """Bradley-Terry loss over pairs.

    Args:
        chosen / rejected: rewards (B,) of the preferred and the dispreferred responses.
        margin: optional (B,) required gap: the loss is `-log sigmoid(r+ - r- - margin)`.
        center_rewards_coefficient: weight of `mean((r+ + r-)^2)`, which pulls rewards towards zero mean.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(
            f"chosen and rejected must both be (B,), got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    diff = chosen - rejected
    loss = -F.logsigmoid(diff if margin is None else diff - margin.to(diff)).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    with torch.no_grad():
        return PairwiseLossOutput(
            loss=loss,
            accuracy=(diff > 0).float().mean(),
            margin=diff.mean(),
            chosen_reward=chosen.mean(),
            rejected_reward=rejected.mean(),
        )
