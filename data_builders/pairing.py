"""Pair selection: turn K scored candidates for one prompt into chosen/rejected pairs.

Pure functions on plain lists, so every rule is testable on hand-made scores. Rules (`rule=`):

* ``"best_vs_worst"``: one pair, the highest-scored candidate against the lowest, kept only when their gap is at
  least `min_gap` (Skywork R1V2's "MPO threshold").
* ``"all_pairs"``: every pair (i, j) with `score_i - score_j >= min_gap`, largest gaps first, at most
  `max_pairs_per_prompt` of them.
* ``"correctness"``: needs ground truth. Chosen must be correct and rejected wrong (InternVL MMPR-style); the reward
  model only breaks ties: the best-scored correct candidates are paired with the worst-scored wrong ones, largest gaps
  first, at most `max_pairs_per_prompt`. `min_gap` is not applied (the ground truth decides), so a pair may have a
  negative gap: the reward model preferred the wrong answer, which is exactly what the policy should unlearn.

Before any rule, candidates are cleaned: empty responses and non-finite scores are dropped, and duplicate responses
(same text after stripping whitespace) keep their first occurrence. Every dropped candidate and every prompt that
yields no pair gets a reason string, counted in the build report.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.record_checks import response_key

RULES = ("best_vs_worst", "all_pairs", "correctness")

# Reasons, as they appear in the report.
EMPTY_RESPONSE = "empty response"
NON_FINITE_SCORE = "non-finite score"
DUPLICATE_RESPONSE = "duplicate response"
TOO_FEW_CANDIDATES = "fewer than 2 distinct candidates"
ALL_SCORES_EQUAL = "all scores equal"
GAP_BELOW_MIN = "best-worst gap below min_gap"
NO_GROUND_TRUTH = "no ground truth for the correctness rule"
NO_CORRECT = "no correct candidate"
NO_WRONG = "no wrong candidate"


@dataclass(frozen=True)
class Pair:
    """Indices into the prompt's candidate list, with their scores."""

    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float

    @property
    def gap(self) -> float:
        return self.chosen_score - self.rejected_score


@dataclass
class Selection:
    """What selection made of one prompt: its pairs, or the reason it has none, and the dropped candidates."""

    pairs: list[Pair] = field(default_factory=list)
    skip_reason: str | None = None
    dropped: Counter = field(default_factory=Counter)  # candidate drop reason -> count


def clean_candidates(responses: Sequence[str], scores: Sequence[float]) -> tuple[list[int], Counter]:
    """Indices of the candidates that take part in selection, and drop counts per reason."""
    if len(responses) != len(scores):
        raise ValueError(f"{len(responses)} responses but {len(scores)} scores")
    kept, seen, dropped = [], set(), Counter()
    for i, (text, score) in enumerate(zip(responses, scores)):
        key = response_key(text)
        if not key:
            dropped[EMPTY_RESPONSE] += 1
        elif not math.isfinite(score):
            dropped[NON_FINITE_SCORE] += 1
        elif key in seen:
            dropped[DUPLICATE_RESPONSE] += 1
        else:
            seen.add(key)
            kept.append(i)
    return kept, dropped


def _pair(i: int, j: int, scores: Sequence[float]) -> Pair:
    return Pair(i, j, float(scores[i]), float(scores[j]))


def _by_gap(pairs: list[Pair]) -> list[Pair]:
    # Largest gap first; indices break exact ties so the order never depends on float noise elsewhere.
    return sorted(pairs, key=lambda p: (-p.gap, p.chosen, p.rejected))


def select_pairs(
    responses: Sequence[str],
    scores: Sequence[float],
    rule: str = "best_vs_worst",
    min_gap: float = 0.0,
    max_pairs_per_prompt: int = 1,
    correct: Sequence[bool] | None = None,
) -> Selection:
    """Choose chosen/rejected pairs among one prompt's candidates (see the module docstring for the rules).

    Args:
        responses: the K candidate texts.
        scores: their rewards (same order).
        rule: one of `RULES`.
        min_gap: smallest accepted `chosen_score - rejected_score` (`best_vs_worst`, `all_pairs`).
        max_pairs_per_prompt: cap on pairs per prompt (`all_pairs`, `correctness`).
        correct: per-candidate correctness against the ground truth (`correctness`); None when there is none.

    Returns:
        A `Selection`; `pairs` is empty exactly when `skip_reason` is set.
    """
    if rule not in RULES:
        raise ValueError(f"unknown pair selection rule {rule!r}; choose one of {RULES}")
    kept, dropped = clean_candidates(responses, scores)
    sel = Selection(dropped=dropped)
    if len(kept) < 2:
        sel.skip_reason = TOO_FEW_CANDIDATES
        return sel
    if rule == "correctness":
        if correct is None:
            sel.skip_reason = NO_GROUND_TRUTH
            return sel
        good = [i for i in kept if correct[i]]
        bad = [i for i in kept if not correct[i]]
        if not good:
            sel.skip_reason = NO_CORRECT
        elif not bad:
            sel.skip_reason = NO_WRONG
        else:
            sel.pairs = _by_gap([_pair(i, j, scores) for i in good for j in bad])[:max_pairs_per_prompt]
        return sel
    if all(scores[i] == scores[kept[0]] for i in kept):
        sel.skip_reason = ALL_SCORES_EQUAL
        return sel
    if rule == "best_vs_worst":
        # max/min return the first of equal scores: the earliest sample wins ties.
        best = max(kept, key=lambda i: scores[i])
        worst = min(kept, key=lambda i: scores[i])
        pairs = [_pair(best, worst, scores)]
    else:
        pairs = _by_gap([_pair(i, j, scores) for i, j in itertools.permutations(kept, 2) if scores[i] > scores[j]])
        pairs = pairs[:max_pairs_per_prompt]
    sel.pairs = [p for p in pairs if p.gap >= min_gap]
    if not sel.pairs:
        sel.skip_reason = GAP_BELOW_MIN
    return sel


def pair_record(
    prompt: Mapping[str, Any], responses: Sequence[str], pair: Pair, rank: int, provenance: Mapping
) -> dict:
    """A preference record (`common.schema`) for one selected pair of `prompt`'s candidates.

    `id` is `<prompt id>/<rank>` (rank = the pair's place in the prompt's selection). `meta` (a JSON string) keeps the
    prompt id, the candidate indices, the gap and `provenance` (policy, reward model, seed, rule...).
    """
    meta = {"prompt_id": prompt["id"], "chosen_index": pair.chosen, "rejected_index": pair.rejected,
            "gap": pair.gap, **provenance}  # fmt: skip
    return {
        "id": f"{prompt['id']}/{rank}",
        "prompt": prompt["prompt"],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": responses[pair.chosen]}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": responses[pair.rejected]}]}],
        "images": list(prompt.get("images") or []),
        "chosen_score": pair.chosen_score,
        "rejected_score": pair.rejected_score,
        "source": prompt.get("source") or "",
        "meta": json.dumps(meta, sort_keys=True),
    }
