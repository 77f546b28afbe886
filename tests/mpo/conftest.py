"""Fixtures for the MPO tests: the tiny policy with TRL's fused LM head, toy pairs, TRL's own log-prob path."""

import pytest
import torch
from transformers import AutoModelForImageTextToText
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

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


@pytest.fixture(scope="session")
def trl_pair_logps():
    """TRL's path for a batch of pairs: `DataCollatorForVisionPreference` ([chosen; rejected] rows, images twice) and
    the forward `DPOTrainer` runs for the policy and, every step, for the reference (`compute_ref_log_probs`).
    Returns ((chosen, rejected) log-probs, (chosen, rejected) lengths)."""

    def compute(model, processor, examples):
        batch = DataCollatorForVisionPreference(processor)([dict(e) for e in examples])
        completion_mask = batch.pop("completion_mask")
        labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
        with torch.no_grad():
            out = model(**batch, labels=labels, fused_lm_head=True, use_cache=False)
        return out.log_probs.sum(1).chunk(2), completion_mask.sum(1).chunk(2)

    return compute
