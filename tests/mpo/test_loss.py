"""The MPO loss against a computation by hand (plain `math`, no torch), and the running shift delta."""

import math

import pytest
import torch

from mpo.loss import mpo_loss, update_running_mean


def _logsig(x):
    return -math.log1p(math.exp(-x))


def test_mpo_loss_matches_hand_computation():
    # Two pairs. Log-ratios s_c = (-3) - (-4) = 1, (-10) - (-8) = -2; s_r = (-6) - (-5) = -1, (-9) - (-9) = 0.
    pc, pr = torch.tensor([-3.0, -10.0]), torch.tensor([-6.0, -9.0])
    rc, rr = torch.tensor([-4.0, -8.0]), torch.tensor([-5.0, -9.0])
    lengths = torch.tensor([3, 5])
    beta, delta = 0.1, 0.05
    out = mpo_loss(pc, pr, rc, rr, lengths, delta=delta, beta=beta, weights=(0.8, 0.2, 1.0))

    sc, sr = [1.0, -2.0], [-1.0, 0.0]
    dpo = sum(-_logsig(beta * (c - r)) for c, r in zip(sc, sr)) / 2
    bco = sum(-_logsig(beta * c - delta) - _logsig(-(beta * r - delta)) for c, r in zip(sc, sr)) / 2
    sft = (3.0 + 10.0) / (3 + 5)  # token-mean NLL of the chosen responses
    assert out.dpo.item() == pytest.approx(dpo, abs=1e-6)
    assert out.bco.item() == pytest.approx(bco, abs=1e-6)
    assert out.sft.item() == pytest.approx(sft, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.8 * dpo + 0.2 * bco + 1.0 * sft, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, -0.2])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.0])


def test_mpo_loss_at_the_reference_is_the_known_constant():
    # Policy == reference, delta 0: DPO = ln 2, BCO = 2 ln 2, so L = 0.8 ln2 + 0.2 * 2 ln2 + SFT.
    logps = torch.tensor([-2.0, -4.0])
    out = mpo_loss(logps, logps - 1, logps, logps - 1, torch.tensor([2, 2]), delta=0.0)
    assert out.loss.item() == pytest.approx(0.8 * math.log(2) + 0.4 * math.log(2) + 6.0 / 4, abs=1e-6)


def test_mpo_loss_gradient_flows_to_the_policy_only_through_logps():
    pc = torch.tensor([-3.0, -1.0], requires_grad=True)
    pr = torch.tensor([-2.0, -2.5], requires_grad=True)
    out = mpo_loss(pc, pr, torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -2.5]), torch.tensor([1, 1]), delta=0.0)
    out.loss.backward()
    # At the reference each sigmoid is 1/2; pair means divide by 2, the SFT token mean by 2 tokens:
    # d/dpc = -(0.8 + 0.2) * beta * 0.5 / 2 - 1/2;  d/dpr = +(0.8 + 0.2) * beta * 0.5 / 2.
    assert pc.grad.tolist() == pytest.approx([-0.025 - 0.5] * 2, abs=1e-6)
    assert pr.grad.tolist() == pytest.approx([0.025] * 2, abs=1e-6)


def test_running_mean_of_per_step_batch_means():
    delta, n = 0.0, 0
    for value in (0.3, -0.1, 0.4):
        delta, n = update_running_mean(delta, n, value)
    assert n == 3 and delta == pytest.approx((0.3 - 0.1 + 0.4) / 3)
