"""The evaluation hook: pair accuracy and ground-truth accuracy agree with direct computations; scorer is used."""

import pytest
import torch

from common.correctness import correctness
from common.io import read_records
from mpo.evaluate import evaluate_policy, generate_answers
from mpo.packing import PairCollator, pair_logps


def test_evaluate_policy_against_direct_computation(tiny_policy, toy_data):
    model, processor = tiny_policy
    pairs = read_records(toy_data["pairs_eval"])
    prompts = read_records(toy_data["prompts_eval"], "prompt").select(range(8))
    seen = []

    class LengthScorer:  # a common.scoring.Scorer: the reward is the response's length
        def score_groups(self, groups):
            seen.extend(groups)
            return [[float(len(r)) for r in g.responses] for g in groups]

    scorer = LengthScorer()

    m = evaluate_policy(model, processor, pairs, prompts, scorer, max_new_tokens=6, batch_size=3)

    rows = [dict(pairs[i]) for i in range(len(pairs))]
    with torch.no_grad():
        lp = pair_logps(model, PairCollator(processor)(rows), model.model.get_rope_index, torch.float32)
    assert m["pairs"] == len(pairs)
    assert m["pair_accuracy"] == pytest.approx((lp.chosen > lp.rejected).float().mean().item())

    records = [dict(prompts[i]) for i in range(len(prompts))]
    answers = generate_answers(model, processor, records, max_new_tokens=6)
    right = [correctness([a], r["answer"], r["choices"])[0] for a, r in zip(answers, records)]
    assert m["judged"] == 8 and m["accuracy"] == pytest.approx(sum(right) / 8)
    assert set(m["accuracy_by_source"]) == {r["source"] for r in records}
    assert [g.responses for g in seen] == [[a] for a in answers]  # the scorer saw every greedy answer
    assert [g.prompt for g in seen] == [r["prompt"] for r in records]  # ... with its own prompt and images
    assert [len(g.images) for g in seen] == [len(r["images"]) for r in records]
    assert m["mean_reward"] == pytest.approx(sum(len(a) for a in answers) / 8)
