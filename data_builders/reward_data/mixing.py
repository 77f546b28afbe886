"""Mixing the cleaned pairs into training stages (the paper: stage 1 multimodal pairs, stage 2 adds text-only pairs).

First, once for all stages, each source's cleaned pairs are weighed by their repeat group's `repeat_time` (MMPR's
meta.json entries; `apply_repeats`): repeats are a sampling weight, applied after cleaning so that dedup sees every
distinct pair once. Then per stage and source: `round(weight * n)` of its `n` pairs (a seeded permutation; weights above 1 repeat
whole passes), at most `max_pairs`. With `text_only_share` the text-only pairs (no image) are then cut, or the
multimodal ones, until text-only pairs make that share of the stage (never by adding pairs), each source keeping its
proportion. The stage's order is a seeded shuffle. Everything depends only on the counts and `seed`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from data_builders.reward_data.config import SourceSpec, StageSpec


class RepeatGroup(NamedTuple):
    """Pairs that share one `repeat_time`: an MMPR meta.json entry, or (entry None) the rest of a source (1.0)."""

    source: str
    entry: str | None
    repeat_time: float


def repeat_plan(n_rows: int, repeat_time: float, seed: int, name: str) -> tuple[int, list[int]]:
    """(full passes, rows of the extra partial pass) for a group of `n_rows` cleaned pairs and its `repeat_time`: the
    integer part takes every row that many times, the fractional part adds a pass over `round(frac * n_rows)` rows
    drawn by `random.Random(f"{seed}/{name}")` (the same for a seed and group), in row order. `0.25` keeps a seeded
    quarter of the rows; `2.5` every row twice and a seeded half a third time. (InternVL's fine-tuning dataset,
    `LazySupervisedDataset` in `internvl_chat_finetune.py`, keeps the first `int(n * repeat_time)` rows below 1 and
    asserts an integer above 1; a seeded sample does not favour the file's head, and fractions above 1 are read.)"""
    whole = int(repeat_time)
    k = round((repeat_time - whole) * n_rows)
    return whole, sorted(random.Random(f"{seed}/{name}").sample(range(n_rows), k)) if k else []


def apply_repeats(groups: Sequence[RepeatGroup], group_of_row: np.ndarray, seed: int) -> tuple[dict, dict]:
    """Per source, the rows of the cleaned dataset after each group's `repeat_time` (ascending, a row listed once
    per time it is taken), and per source and entry `{repeat_time, cleaned, pairs}` (pairs before and after).

    Args:
        groups: the repeat groups; `group_of_row[i]` is the index in `groups` of cleaned row `i`'s group.
    """
    parts: dict[str, list[np.ndarray]] = {}
    report: dict[str, dict] = {}
    for code, group in enumerate(groups):
        rows = np.flatnonzero(group_of_row == code)
        whole, sampled = repeat_plan(len(rows), group.repeat_time, seed, f"{group.source}/{group.entry}")
        taken = np.concatenate([np.tile(rows, whole), rows[sampled]])
        parts.setdefault(group.source, []).append(taken)
        if group.entry is not None:
            report.setdefault(group.source, {})[group.entry] = {
                "repeat_time": group.repeat_time, "cleaned": len(rows), "pairs": len(taken)}  # fmt: skip
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}, report


def _take(n: int, weight: float, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    count = round(weight * n) if cap is None else min(round(weight * n), cap)
    if n == 0 or count == 0:
        return np.zeros(0, dtype=np.int64)
    perm = rng.permutation(n)
    return np.tile(perm, count // n + 1)[:count]


def _proportional(counts: Sequence[int], target: int) -> list[int]:
    """Scale `counts` to sum to `target` (<= their sum): floors, then the largest remainders (ties: first)."""
    total = sum(counts)
    exact = [c * target / total for c in counts]
    out = [int(np.floor(x)) for x in exact]
    for k in sorted(range(len(counts)), key=lambda k: (-(exact[k] - out[k]), k))[: target - sum(out)]:
        out[k] += 1
    return out


def plan_stage(stage: StageSpec, stage_index: int, sources: Sequence[SourceSpec], positions: Mapping[str, np.ndarray],
               text_only: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Rows of the cleaned dataset that make up the stage, in training order, and per-source counts.

    Args:
        positions: per source, the rows of the cleaned dataset that hold its pairs (`apply_repeats`).
        text_only: per row of the cleaned dataset, whether the pair has no image.
    """
    order = {s.name: k for k, s in enumerate(sources)}
    specs = {s.name: s for s in sources}
    picks = {}
    for name in stage.sources:
        rng = np.random.default_rng([seed, stage_index, order[name]])
        pos = positions.get(name, np.zeros(0, dtype=np.int64))
        picks[name] = pos[_take(len(pos), specs[name].weight, specs[name].max_pairs, rng)]
    if stage.text_only_share is not None:
        kinds = {name: (p[text_only[p]], p[~text_only[p]]) for name, p in picks.items()}
        n_text, n_mm = (sum(len(k[i]) for k in kinds.values()) for i in (0, 1))
        share = stage.text_only_share
        if n_text and n_mm:
            want_text = round(share * n_mm / (1 - share))
            kind, target = (0, want_text) if n_text > want_text else (1, round((1 - share) * n_text / share))
            names = list(kinds)
            cut = _proportional([len(kinds[n][kind]) for n in names], target)
            for name, keep in zip(names, cut):
                parts = list(kinds[name])
                parts[kind] = parts[kind][:keep]
                picks[name] = np.concatenate(parts)
    rows = np.concatenate([picks[n] for n in stage.sources]) if picks else np.zeros(0, dtype=np.int64)
    rows = rows[np.random.default_rng([seed, stage_index]).permutation(len(rows))]
    counts = {name: {"available": int(len(positions.get(name, []))), "taken": int(len(p)),
                     "text_only": int(text_only[p].sum())} for name, p in picks.items()}  # fmt: skip
    return rows.astype(np.int64), counts
