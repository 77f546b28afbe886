"""Fixtures for the reward tests: toy records of every kind, mixed and dirty datasets, and an export check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.io import read_records, write_records
from common.toy_task import make_example, preference_record
from reward.model import load_reward_model
from reward.pair_eval import pair_metrics
from reward.train import SUMMARY_FILE


@pytest.fixture(scope="session")
def toy_records():
    """Eight preference records: two of each kind (color, shape, count need the image; sum is text-only)."""
    return [
        preference_record(make_example(0, "train", i, k)) for i in range(2) for k in ("color", "sum", "count", "shape")
    ]


@pytest.fixture(scope="session")
def mixed_pair_data(tmp_path_factory):
    """One text-only and one image pair: with 2 ranks and batch 1, every step has a text-only rank and an image rank."""
    records = [
        preference_record(make_example(0, "train", 0, "sum")),
        preference_record(make_example(0, "train", 0, "color")),
    ]
    return write_records(records, tmp_path_factory.mktemp("mixed") / "pairs")


@pytest.fixture(scope="session")
def dirty_pair_data(tmp_path_factory, toy_records):
    """Eight good pairs plus one with an empty response and one far longer than 256 tokens (JSONL)."""
    empty = dict(toy_records[1], id="empty-chosen", chosen=[{"role": "assistant", "content": " "}])
    long = dict(toy_records[3], id="too-long", rejected=[{"role": "assistant", "content": "one two " * 300}])
    return write_records(toy_records + [empty, long], tmp_path_factory.mktemp("dirty") / "pairs.jsonl")


def check_export(export, eval_path, summary_key="metrics"):
    """The exported model, reloaded, scores the eval pairs as the training run's final evaluation did; returns the
    stage summary."""
    summary = json.loads((Path(export) / SUMMARY_FILE).read_text())
    model, processor = load_reward_model(export)
    metrics = pair_metrics(model, processor, read_records(eval_path))
    for name in ("loss", "accuracy", "chosen_reward", "rejected_reward"):
        assert metrics[name] == pytest.approx(summary[summary_key][f"eval_{name}"], abs=1e-5), name
    return summary
