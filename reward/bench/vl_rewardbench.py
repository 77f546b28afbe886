"""VL-RewardBench (Li et al. 2024, MMInstruction/VL-RewardBench): its rows and its official metric.

Rows: `id`, `query`, `response` (two strings), `image`, `human_ranking` (0 = preferred), optional `query_source`.
Metric: the source comes from the id prefix (or `query_source`), sources fall into three groups, accuracy per
group and overall, and the groups' macro mean. A tie is wrong, as in the official scripts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from common.schema import RecordError, get_field
from common.scoring import ScoringGroup
from reward.bench.base import BenchmarkExample, accuracy, pair_scores, row_images, user_turn

GROUPS = {
    "general": ("vlfeedback", "wildvision-battle"),
    "hallucination": ("povid", "rlhf-v", "rlaif-v"),
    "reasoning": ("reasoning_tasks",),
}
_SOURCE_TO_GROUP = {source: group for group, sources in GROUPS.items() for source in sources}

# Published Skywork-VL-Reward-7B figures (arXiv:2505.07263, DESIGN.md), as fractions, for the report's reference row.
REFERENCE_ROWS = {
    "Skywork-VL-Reward-7B (paper)": {
        "overall": 0.731, "macro": 0.690, "general": 0.660, "hallucination": 0.800, "reasoning": 0.610,
    },
}  # fmt: skip


def read_row(row: Mapping, ref: str, base_dir: str | None) -> BenchmarkExample:
    responses = get_field(row, "response", ref, list)
    ranking = get_field(row, "human_ranking", ref, list)
    if len(responses) != 2 or not all(isinstance(r, str) for r in responses):
        raise RecordError(ref, "response", f"expected two strings, got {len(responses)} item(s)")
    if len(ranking) != 2:
        raise RecordError(ref, "human_ranking", f"expected two ranks, got {ranking!r}")
    images = row_images(row.get("image"), ref, "image", base_dir)
    out = {"id": str(get_field(row, "id", ref, (str, int))), "human_ranking": list(ranking)}
    if row.get("query_source"):
        out["query_source"] = row["query_source"]
    query = get_field(row, "query", ref)
    return BenchmarkExample(ScoringGroup(user_turn(query, len(images)), images, list(responses)), out)


def scored_row(example: BenchmarkExample, scores: list[float]) -> dict[str, Any]:
    return {**example.row, "scores": list(scores)}


def source(name: str) -> str:
    """The VL-RewardBench source of an example id (or of a `query_source` value).

    The official scripts take the id's prefix up to the first `_` or `-`: `RLAIF` -> rlaif-v, `RLHF` -> rlhf-v,
    `mathverse` / `mmmu` -> reasoning_tasks, `wildvision` -> wildvision-battle, `hallucination` / `povid` -> povid,
    anything else -> vlfeedback. A name that already is a source name is returned as is. Matching ignores case.
    """
    lowered = str(name).lower()
    if lowered in _SOURCE_TO_GROUP:
        return lowered
    prefix = re.split(r"[_-]", lowered, maxsplit=1)[0]
    if prefix == "rlaif":
        return "rlaif-v"
    if prefix == "rlhf":
        return "rlhf-v"
    if prefix in ("mathverse", "mmmu"):
        return "reasoning_tasks"
    if prefix == "wildvision":
        return "wildvision-battle"
    if prefix in ("hallucination", "povid"):
        return "povid"
    return "vlfeedback"


def correct(row: Mapping[str, Any]) -> bool:
    """Whether the response ranked 0 in `human_ranking` scores strictly higher than the other one."""
    ref = repr(row.get("id"))
    s0, s1 = pair_scores(row, ref)
    ranking = row.get("human_ranking")
    if not isinstance(ranking, Sequence) or len(ranking) != 2 or ranking[0] == ranking[1]:
        raise ValueError(f"row {ref}, field 'human_ranking': expected two different ranks, got {ranking!r}")
    return s0 > s1 if ranking[0] < ranking[1] else s1 > s0


def metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """VL-RewardBench overall accuracy, the three group accuracies and their macro mean.

    Args:
        rows: dicts with `id`, `scores` (two floats, in the order of `response`), `human_ranking` (0 = preferred) and
            optionally `query_source` (otherwise the source comes from the id prefix).

    Returns:
        `{"overall", "macro", "general", "hallucination", "reasoning"}`; a group with no example is None and the macro
        mean is taken over the groups that have examples.
    """
    flags: dict[str, list[bool]] = defaultdict(list)
    overall = []
    for row in rows:
        group = _SOURCE_TO_GROUP[source(row.get("query_source") or row["id"])]
        ok = correct(row)
        flags[group].append(ok)
        overall.append(ok)
    out: dict[str, float | None] = {"overall": accuracy(overall)}
    groups = {group: accuracy(flags[group]) for group in GROUPS}
    present = [acc for acc in groups.values() if acc is not None]
    out["macro"] = sum(present) / len(present) if present else None
    out.update(groups)
    return out
