"""The evaluation hook: how good is the policy on held-out data.

* `pairs`: the fraction of held-out preference pairs where the policy gives the chosen response a higher
  log-probability than the rejected one (`pair_accuracy`), from one packed forward per batch.
* `prompts`: greedy answers to held-out prompts; where a prompt record has `answer` (and `choices`), `accuracy` is
  the fraction judged correct by `common.correctness` (the rule pair selection uses too); with a `scorer` (a
  `common.scoring.Scorer`, e.g. `reward.scorer.RewardScorer` or a reward-server client, passed in by the recipe:
  `mpo` does not import `reward`), `mean_reward` is the mean of its scores.

Every rank scores its share (every `world_size`-th record) and the sums are all-reduced. Under ZeRO-3 the weights are
gathered on each rank for the duration (generation runs a different number of steps per rank).
"""

from __future__ import annotations

import collections

import torch
from datasets import Dataset
from transformers import ProcessorMixin

from common.correctness import correctness, judge_for
from common.distributed import all_gather_objects, all_reduce_sum, shard, zero3_gathered
from common.scoring import Scorer, ScoringGroup
from mpo.packing import PairCollator, base_vlm, ensure_fused_lm_head, pair_logps


def _by_source(counts: dict) -> dict[str, float]:
    """Accuracy per record `source`, merged across ranks."""
    parts = all_gather_objects(dict(counts))
    merged = collections.defaultdict(lambda: [0, 0])
    for part in parts:
        for source, (ok, n) in part.items():
            merged[source][0] += ok
            merged[source][1] += n
    return {source: ok / n for source, (ok, n) in sorted(merged.items())}


@torch.no_grad()
def pair_accuracy(model, processor: ProcessorMixin, pairs: Dataset, batch_size: int = 8, max_length=None) -> dict:
    """`{"pair_accuracy", "pairs"}`: how often log p(chosen) > log p(rejected) under `model`."""
    ensure_fused_lm_head(model)
    collator, device = PairCollator(processor, max_length), model.device
    idx = list(shard(len(pairs)))
    wins = 0
    for start in range(0, len(idx), batch_size):
        batch = {k: v.to(device) for k, v in collator([pairs[i] for i in idx[start : start + batch_size]]).items()}
        logps = pair_logps(model, batch, base_vlm(model).model.get_rope_index, base_vlm(model).dtype)
        wins += int((logps.chosen > logps.rejected).sum())
    wins, n = all_reduce_sum([wins, len(idx)], device)
    return {"pair_accuracy": wins / max(n, 1), "pairs": int(n)}


@torch.no_grad()
def generate_answers(model, processor: ProcessorMixin, records: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy responses to prompt records (left-padded batch)."""
    texts = [processor.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in records]
    images = [r.get("images") or [] for r in records]
    inputs = processor(
        text=texts, images=images if any(images) else None, padding=True, padding_side="left", return_tensors="pt"
    ).to(model.device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].size(1) :], skip_special_tokens=True)


def prompt_metrics(
    model,
    processor: ProcessorMixin,
    prompts: Dataset,
    scorer: Scorer | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 8,
) -> dict:
    """`{"accuracy", "judged", "mean_reward", "prompts"}` from greedy answers (keys present when computable)."""
    idx = list(shard(len(prompts)))
    correct = judged = reward_sum = 0.0
    by_source = collections.defaultdict(lambda: [0, 0])  # source -> [correct, judged]
    for start in range(0, len(idx), batch_size):
        records = [prompts[i] for i in idx[start : start + batch_size]]
        responses = generate_answers(model, processor, records, max_new_tokens)
        for rec, resp in zip(records, responses):
            verdict = correctness([resp], rec.get("answer"), rec.get("choices"), judge=judge_for(rec))
            if verdict is not None:
                judged += 1
                correct += verdict[0]
                by_source[rec.get("source") or "-"][0] += verdict[0]
                by_source[rec.get("source") or "-"][1] += 1
        if scorer is not None:
            groups = [ScoringGroup(list(r["prompt"]), list(r["images"] or []), [s]) for r, s in zip(records, responses)]
            reward_sum += float(sum(score for (score,) in scorer.score_groups(groups)))
    correct, judged, reward_sum, n = all_reduce_sum([correct, judged, reward_sum, len(idx)], model.device)
    out = {"prompts": int(n)}
    if judged:
        out.update(accuracy=correct / judged, judged=int(judged), accuracy_by_source=_by_source(by_source))
    if scorer is not None:
        out["mean_reward"] = reward_sum / max(n, 1)
    return out


def evaluate_policy(
    model,
    processor: ProcessorMixin,
    pairs: Dataset | None = None,
    prompts: Dataset | None = None,
    scorer: Scorer | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    max_length: int | None = None,
) -> dict:
    """Run the evaluation hook on the (unwrapped) VLM; every rank must call it. Returns the metrics."""
    was_training = model.training
    model.eval()
    metrics = {}
    with zero3_gathered(model.parameters()):  # read-only: every rank sees the full weights
        if pairs is not None:
            metrics.update(pair_accuracy(model, processor, pairs, batch_size, max_length))
        if prompts is not None:
            metrics.update(prompt_metrics(model, processor, prompts, scorer, max_new_tokens, batch_size))
    model.train(was_training)
    return metrics
