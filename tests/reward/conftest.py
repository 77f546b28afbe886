"""Fixtures for the reward tests: a few toy records of every kind, text-only and with images."""

from __future__ import annotations

import pytest

from common.toy_task import make_example, preference_record


@pytest.fixture(scope="session")
def toy_records():
    """Eight preference records: two of each kind (color, shape, count need the image; sum is text-only)."""
    return [
        preference_record(make_example(0, "train", i, k)) for i in range(2) for k in ("color", "sum", "count", "shape")
    ]
