"""Fixtures for the MPO tests: the tiny policy with TRL's fused LM head, toy pairs as plain dicts."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from common.io import read_records
from common.processor import load_processor
from mpo.packing import ensure_fused_lm_head


@pytest.fixture(scope="session")
def tiny_policy(tiny_vlm_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path, dtype=torch.float32).eval()
    ensure_fused_lm_head(model)
    return model, load_processor(str(tiny_vlm_path))


@pytest.fixture(scope="session")
def toy_pairs(toy_data):
    """The first 8 training pairs: color, shape, count (with an image) and sum (text only), interleaved."""
    ds = read_records(toy_data["pairs_train"])
    return [dict(ds[i]) for i in range(8)]
