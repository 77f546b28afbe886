"""Pair filters: ambiguous pairs, and the surrogate reward model that drops (or flags) weak and mislabelled pairs.

The surrogate filter takes any `common.scoring.Scorer`: the local `reward.scorer.RewardScorer`
(`data_builders.scoring.make_scorer`, what the job builds from `reward_model_name_or_path`), or the reward server's
client, which implements the same `score_groups` protocol and is passed to `build_reward_data(cfg, scorer=...)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.schema import message_text
from common.scoring import Scorer, ScoringGroup
from data_builders.reward_data.dedup import normalize_text

EQUAL_RESPONSES = "ambiguous: chosen equals rejected (normalised)"
EQUAL_RATINGS = "ambiguous: equal ratings"
NEGATIVE_GAP = "surrogate: negative gap (likely mislabelled)"


def ambiguous_reason(record: Mapping) -> str | None:
    """Why a converted pair is ambiguous (equal responses after normalisation, equal ratings), or None."""
    chosen, rejected = (normalize_text(message_text(record[k])) for k in ("chosen", "rejected"))
    if chosen == rejected:
        return EQUAL_RESPONSES
    meta = record.get("meta") or {}
    if meta.get("chosen_rating") is not None and meta.get("chosen_rating") == meta.get("rejected_rating"):
        return EQUAL_RATINGS
    return None


@dataclass
class SurrogateFilter:
    """Score each pair's chosen and rejected responses; a pair is weak when the chosen score is below
    `min_chosen_score`, or the gap (chosen - rejected) is below `min_gap` (a negative gap is reported apart)."""

    scorer: Scorer
    min_chosen_score: float | None = None
    min_gap: float | None = 0.0
    batch_size: int = 8

    def scores(self, records: Sequence[Mapping]) -> list[tuple[float, float]]:
        """(chosen score, rejected score) per record, in batches of `batch_size` pairs."""
        out = []
        for start in range(0, len(records), self.batch_size):
            groups = [ScoringGroup(list(r["prompt"]), list(r["images"]), [message_text(r["chosen"]),
                                   message_text(r["rejected"])]) for r in records[start : start + self.batch_size]]  # fmt: skip
            for s in self.scorer.score_groups(groups):
                if len(s) != 2:
                    raise RuntimeError(f"the scorer returned {len(s)} scores for a pair")
                out.append((float(s[0]), float(s[1])))
        return out

    def reason(self, chosen: float, rejected: float) -> str | None:
        """Why a pair with these scores is weak, or None."""
        if not (math.isfinite(chosen) and math.isfinite(rejected)):
            return "surrogate: non-finite score"
        gap = chosen - rejected
        if self.min_chosen_score is not None and chosen < self.min_chosen_score:
            return f"surrogate: chosen score < {self.min_chosen_score}"
        if self.min_gap is not None and gap < self.min_gap:
            return NEGATIVE_GAP if gap < 0 else f"surrogate: gap < {self.min_gap}"
        return None
