"""Checks over a whole set of records, not one record alone: ids seen before, responses that are the same text.

`build_pairs` drops what they find (a duplicate prompt id, a duplicate candidate response). The reward and MPO jobs
train on their data as given and count what they find, per reason, in the run's summary (`flag_pairs`).
"""

from __future__ import annotations

from collections.abc import Iterable

from datasets import Dataset

from common.io import SkipLog
from common.schema import RecordError, message_text, record_ref


def response_key(text: str) -> str:
    """Two responses are the same when their texts are equal after stripping surrounding whitespace."""
    return text.strip()


def repeated_ids(ids: Iterable[str]) -> list[int]:
    """Positions whose id already appeared at an earlier position (the first occurrence is not counted)."""
    seen, repeated = set(), []
    for i, rid in enumerate(ids):
        if rid in seen:
            repeated.append(i)
        seen.add(rid)
    return repeated


def flag_pairs(ds: Dataset, source: str, flagged: SkipLog) -> None:
    """Count in `flagged` the preference records whose id repeats an earlier one and those whose rejected response
    is the same text as the chosen one. The records stay in the data; the counts go to the run's summary."""
    if not len(ds):
        return
    ids = ds["id"]
    problems = [(i, "id", "duplicate record id") for i in repeated_ids(ids)]
    problems += [(i, "rejected", "the same text as chosen")
                 for i, (chosen, rejected) in enumerate(zip(ds["chosen"], ds["rejected"]))
                 if response_key(message_text(chosen)) == response_key(message_text(rejected))]  # fmt: skip
    for i, field, problem in sorted(problems):
        error = RecordError(record_ref({"id": ids[i]}, i), field, problem, f"in {source}")
        flagged.add(error.reason, str(error))
