"""Held-out evaluation of one round's policy: greedy answers to held-out prompts, judged and scored.

Metrics (`evaluate_round`): `accuracy` with its Wilson 95% `accuracy_interval` (where prompts carry `answer`, judged by `common.correctness`, as pair
selection and the MPO evaluation hook judge), the reward of the answers under the training reward model
(`reward_mean`, `reward_std`) and, when given, a second held-out reward model (`heldout_reward_mean`), the answer
length in tokens (`length_mean`), and the rate of degenerate answers (`degenerate_rate`, with the share of each kind:
`empty`, `cut_off` at the token limit, `repeated` word n-grams).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence

import torch
from transformers import AutoModelForImageTextToText

from common.correctness import correctness, judge_for
from common.processor import load_processor
from common.scoring import Scorer, ScoringGroup
from mpo.evaluate import generate_answers
from rounds.guards import wilson_interval


def degenerate_kind(text: str, num_tokens: int, max_new_tokens: int, ngram: int = 3) -> str | None:
    """Why an answer is degenerate ('empty', 'cut_off', 'repeated'), or None for a normal answer.

    `cut_off`: it used every allowed token (it was still talking when generation stopped). `repeated`: some word
    n-gram (n = `ngram`) occurs more than once.
    """
    if not text.strip():
        return "empty"
    if num_tokens >= max_new_tokens:
        return "cut_off"
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    if len(grams) != len(set(grams)):
        return "repeated"
    return None


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return (statistics.fmean(values), statistics.pstdev(values)) if values else (float("nan"), float("nan"))


def answer_metrics(prompts: Sequence[dict], answers: Sequence[str], num_tokens: Sequence[int], max_new_tokens: int,
                   rewards: Sequence[float] | None = None, heldout_rewards: Sequence[float] | None = None,
                   ngram: int = 3) -> dict:  # fmt: skip
    """The round's metrics from the held-out answers (pure: testable on hand-made answers)."""
    verdicts = [
        correctness([a], p.get("answer"), p.get("choices"), judge=judge_for(p)) for p, a in zip(prompts, answers)
    ]
    ok = [v[0] for v in verdicts if v is not None]
    kinds = [degenerate_kind(a, n, max_new_tokens, ngram) for a, n in zip(answers, num_tokens)]
    out = {"prompts": len(answers), "length_mean": statistics.fmean(num_tokens) if num_tokens else float("nan"),
           "degenerate_rate": sum(k is not None for k in kinds) / max(len(kinds), 1),
           "degenerate": {k: kinds.count(k) for k in ("empty", "cut_off", "repeated")}}  # fmt: skip
    if ok:
        out.update(
            accuracy=sum(ok) / len(ok), judged=len(ok), accuracy_interval=list(wilson_interval(sum(ok), len(ok)))
        )
    if rewards is not None:
        out["reward_mean"], out["reward_std"] = _mean_std(rewards)
        out["rewards"] = list(rewards)
    if heldout_rewards is not None:
        out["heldout_reward_mean"], out["heldout_reward_std"] = _mean_std(heldout_rewards)
    return out


def _score(scorer: Scorer, prompts: Sequence[dict], answers: Sequence[str], batch_size: int) -> list[float]:
    scores = []
    for start in range(0, len(prompts), batch_size):
        groups = [ScoringGroup(list(p["prompt"]), list(p.get("images") or []), [a])
                  for p, a in zip(prompts[start : start + batch_size], answers[start : start + batch_size])]  # fmt: skip
        scores += [s for (s,) in scorer.score_groups(groups)]
    return scores


@torch.no_grad()
def evaluate_round(policy_path: str, prompts: Sequence[dict], scorer: Scorer, heldout_scorer: Scorer | None = None,
                   max_new_tokens: int = 64, batch_size: int = 8, device: str = "cpu", ngram: int = 3) -> dict:  # fmt: skip
    """Greedy answers of the policy at `policy_path` to `prompts`, judged and scored (see module docstring)."""
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(policy_path, dtype=dtype).to(device).eval()
    processor = load_processor(policy_path)
    answers = []
    for start in range(0, len(prompts), batch_size):
        answers += generate_answers(model, processor, list(prompts[start : start + batch_size]), max_new_tokens)
    del model
    tokenizer = processor.tokenizer
    num_tokens = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    rewards = _score(scorer, prompts, answers, batch_size)
    heldout = _score(heldout_scorer, prompts, answers, batch_size) if heldout_scorer is not None else None
    metrics = answer_metrics(prompts, answers, num_tokens, max_new_tokens, rewards, heldout, ngram)
    metrics["examples"] = [{"id": p["id"], "answer": a} for p, a in zip(prompts[:8], answers[:8])]
    return metrics
