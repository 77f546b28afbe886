"""Score preference pairs with a reward model outside the Trainer: held-out accuracy, per source, and the loss."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from reward.collator import RewardCollator
from reward.loss import pairwise_reward_loss


@torch.no_grad()
def score_pairs(model, processor, records: Sequence, batch_size: int = 8, max_length: int = 4096):
    """Rewards of every pair's chosen and rejected responses: two float tensors (N,), in record order."""
    collate = RewardCollator(processor, max_length)
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(records), batch_size):
        batch = collate([records[i] for i in range(start, min(start + batch_size, len(records)))])
        batch.pop("margin", None)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        c, r = model(**batch).rewards.chunk(2)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def pair_metrics(model, processor, records: Sequence, batch_size: int = 8, max_length: int = 4096) -> dict:
    """`loss`, `accuracy`, `margin`, `chosen_reward`, `rejected_reward` over all pairs, and `accuracy/<source>`."""
    chosen, rejected = score_pairs(model, processor, records, batch_size, max_length)
    out = pairwise_reward_loss(chosen, rejected)
    metrics = {"loss": out.loss.item(), **out.metrics(), "n": len(chosen)}
    by_source = defaultdict(list)
    for i in range(len(chosen)):
        by_source[records[i].get("source") or "unknown"].append(bool(chosen[i] > rejected[i]))
    metrics.update({f"accuracy/{s}": sum(v) / len(v) for s, v in sorted(by_source.items())})
    return metrics
