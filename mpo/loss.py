"""The MPO loss (Mixed Preference Optimization, InternVL) as pure functions, nothing else.

    L = w_p * L_dpo + w_q * L_bco + w_g * L_sft            (defaults 0.8 / 0.2 / 1.0, beta 0.1)

with the per-pair log-ratios ``s_c = log pi(y_c|x) - log pi_ref(y_c|x)`` and ``s_r`` likewise (sums over the
completion tokens):

* ``L_dpo = -log sigmoid(beta * (s_c - s_r))``, the mean over pairs;
* ``L_bco = -log sigmoid(beta * s_c - delta) - log sigmoid(-(beta * s_r - delta))``, the mean over pairs, where
  ``delta`` is the running mean of the per-step batch means of the rewards ``beta * s`` (chosen and rejected
  together). Each training step first folds its own batch mean into ``delta`` (`update_running_mean`), then uses
  the updated value. TRL v0.28's ``bco_pair`` did this; TRL >= 0.29 dropped ``delta`` (it uses 0): we keep it;
* ``L_sft = -sum(log pi(y_c|x)) / (number of chosen tokens)``, the token-mean NLL of the chosen responses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MPOLoss:
    """The weighted total and its parts (scalars), plus the per-pair rewards ``beta * s`` (detached)."""

    loss: torch.Tensor
    dpo: torch.Tensor
    bco: torch.Tensor
    sft: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def update_running_mean(mean: float, count: int, value: float) -> tuple[float, int]:
    """Fold one more value into a running mean of `count` values: returns the new mean and count."""
    count += 1
    return mean + (value - mean) / count, count


def mpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    delta: float,
    beta: float = 0.1,
    weights: tuple[float, float, float] = (0.8, 0.2, 1.0),
) -> MPOLoss:
    """The MPO loss of a batch of pairs.

    Args:
        chosen_logps, rejected_logps: `[B]` policy log-probabilities of the responses (sums over their tokens).
        ref_chosen_logps, ref_rejected_logps: `[B]` the same under the reference model.
        chosen_lengths: `[B]` number of tokens of each chosen response (for the token-mean SFT term).
        delta: the BCO reward shift, already updated with this step's batch mean (see module docstring).
        beta: the KL coefficient.
        weights: (w_p, w_q, w_g) for the DPO, BCO and SFT terms.

    Returns:
        `MPOLoss` with the weighted total, the three unweighted terms and the rewards `beta * s`.
    """
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    dpo = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    bco = (-F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))).mean()
    sft = -chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)
    w_p, w_q, w_g = weights
    return MPOLoss(
        loss=w_p * dpo + w_q * bco + w_g * sft,
        dpo=dpo,
        bco=bco,
        sft=sft,
        chosen_rewards=chosen_rewards.detach(),
        rejected_rewards=rejected_rewards.detach(),
    )
