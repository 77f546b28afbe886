"""The Bradley-Terry loss against numbers worked by hand."""

import math

import pytest
import torch

from reward.loss import pairwise_reward_loss


def _nls(x: float) -> float:  # -log sigmoid(x) = log(1 + e^-x)
    return math.log1p(math.exp(-x))


def test_plain_loss_and_metrics_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 0.5, 1.0])
    out = pairwise_reward_loss(chosen, rejected)
    # diffs 1, 0, -2 -> log(1+e^-1)=0.31326, log 2=0.69315, log(1+e^2)=2.12693
    assert out.loss.item() == pytest.approx((0.3132617 + 0.6931472 + 2.1269280) / 3, abs=1e-6)
    assert out.accuracy.item() == pytest.approx(1 / 3)  # the tie (0.5 vs 0.5) counts as wrong
    assert out.margin.item() == pytest.approx(-1 / 3)
    assert out.chosen_reward.item() == pytest.approx(0.5) and out.rejected_reward.item() == pytest.approx(2.5 / 3)


def test_margin_and_centering_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, -1.0])
    out = pairwise_reward_loss(chosen, rejected, margin=torch.tensor([0.5, 1.0]), center_rewards_coefficient=0.01)
    # diffs minus margins: 0.5, 0.0; centering: ((3)^2 + (-1)^2) / 2 = 5
    expected = (_nls(0.5) + _nls(0.0)) / 2 + 0.01 * 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.accuracy.item() == 1.0  # accuracy ignores the margin


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    pairwise_reward_loss(chosen, rejected).loss.backward()
    # d/dr+ of mean(-log sigmoid(r+ - r-)) at 0 = -(1 - 0.5) / B = -0.25
    assert torch.allclose(chosen.grad, torch.full((2,), -0.25)) and torch.allclose(
        rejected.grad, torch.full((2,), 0.25)
    )


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="chosen and rejected"):
        pairwise_reward_loss(torch.zeros(2), torch.zeros(3))
