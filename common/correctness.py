"""Whether a response gives the ground-truth answer: the one rule for pair selection and policy evaluation.

Case-insensitive, whole words: the answer (and each choice) must appear with no letter or digit on either side, so
"12" is not found in "112", "b" not in "below", "red" not in "reddish". With `choices` (the answer set) a response is
correct when it names the answer and no other choice; without, when it names the answer. Answers may be words,
numbers ("12", or 12 stored as a number), letters ("B") or phrases.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def _normalize(text) -> str:
    return str(text).strip().lower()


def _names(text: str) -> re.Pattern:
    return re.compile(r"(?<![a-z0-9])" + re.escape(text) + r"(?![a-z0-9])")


def correctness(responses: Sequence[str], answer, choices: Sequence | None = None) -> list[bool] | None:
    """Per-response correctness against `answer`; None when there is no answer (missing or blank): nothing to judge."""
    if answer is None or not _normalize(answer):
        return None
    answer = _normalize(answer)
    others = [_names(c) for c in dict.fromkeys(map(_normalize, choices or ())) if c and c != answer]
    right = _names(answer)
    texts = [r.lower() for r in responses]
    return [bool(right.search(t)) and not any(o.search(t) for o in others) for t in texts]
