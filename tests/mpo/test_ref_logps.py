"""Precomputed reference log-probs equal TRL's on-the-fly reference forward; the cache key tracks data and model."""

import shutil

import pytest
import torch

from common.io import read_records, write_records
from common.processor import load_processor
from mpo.packing import PairCollator, pair_logps
from mpo.ref_logps import attach_ref_logps, ref_logps_key
from tests.mpo.test_packing import response_room, with_chosen


def test_precomputed_equal_on_the_fly(tiny_policy, tiny_vlm_path, toy_data, trl_pair_logps, tmp_path):
    """Against what TRL's DPOTrainer computes on the fly for the reference every step."""
    model, processor = tiny_policy
    ds = read_records(toy_data["pairs_train"])
    out, report = attach_ref_logps(ds, toy_data["pairs_train"], str(tiny_vlm_path), processor, None, torch.float32,
                                   tmp_path / "cache", batch_size=3)  # fmt: skip
    assert report["cached"] is False
    rows = [dict(out[i]) for i in range(len(out))]
    for start in range(0, len(rows), 8):
        chunk = rows[start : start + 8]
        (chosen, rejected), _ = trl_pair_logps(model, processor, chunk)
        assert (torch.tensor([r["ref_chosen_logps"] for r in chunk]) - chosen).abs().max() <= 1e-4
        assert (torch.tensor([r["ref_rejected_logps"] for r in chunk]) - rejected).abs().max() <= 1e-4
    again, report2 = attach_ref_logps(ds, toy_data["pairs_train"], str(tiny_vlm_path), processor, None, torch.float32,
                                      tmp_path / "cache")  # fmt: skip
    assert report2 == {**report, "cached": True}
    assert again["ref_chosen_logps"] == out["ref_chosen_logps"]


def test_key_changes_with_data_model_and_settings(tiny_vlm_path, toy_data, tmp_path):
    processor = load_processor(str(tiny_vlm_path))
    ds = read_records(toy_data["pairs_train"])
    args = (toy_data["pairs_train"], str(tiny_vlm_path), processor, 256, torch.float32)
    key = ref_logps_key(ds, *args)
    assert ref_logps_key(ds, *args) == key
    # Another reference model: one changed weight file.
    other = tmp_path / "model"
    shutil.copytree(tiny_vlm_path, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    assert ref_logps_key(ds, args[0], str(other), *args[2:]) != key
    # Other data: same records minus one, and a changed file on disk.
    assert ref_logps_key(ds.select(range(len(ds) - 1)), *args) != key
    data = tmp_path / "data"
    shutil.copytree(toy_data["pairs_train"], data)
    assert ref_logps_key(ds, str(data), *args[1:]) == key  # the same content elsewhere: same key
    arrow = next(data.glob("data-*.arrow"))  # the data itself (not a cache file `datasets` may have left)
    arrow.write_bytes(arrow.read_bytes() + b"\0")
    assert ref_logps_key(ds, str(data), *args[1:]) != key
    # Settings the numbers depend on.
    assert ref_logps_key(ds, *args[:3], 128, torch.float32) != key
    assert ref_logps_key(ds, *args[:4], torch.bfloat16) != key
    small = load_processor(str(tiny_vlm_path), max_pixels=28 * 28 * 16)
    assert ref_logps_key(ds, args[0], args[1], small, 256, torch.float32) != key


def test_reference_scores_the_same_cut_tokens_as_training(tiny_policy, tiny_vlm_path, toy_pairs, tmp_path):
    """A very long response: the reference pass cuts it as the training collator does, and counts it."""
    model, processor = tiny_policy
    pair = toy_pairs[0]
    room = response_room(processor, pair)
    max_length = int(PairCollator(processor)([pair])["prompt_attention_mask"].sum()) + room
    records = [dict(pair, id="as-is"), with_chosen(dict(pair, id="long"), "It is yellow." + " word" * 20_000),
               with_chosen(dict(pair, id="short"), "It is yellow." + " word" * 20)]  # fmt: skip
    path = write_records(records, tmp_path / "pairs.jsonl")
    out, report = attach_ref_logps(read_records(path), path, str(tiny_vlm_path), processor, max_length, torch.float32,
                                   tmp_path / "cache")  # fmt: skip
    assert report["truncated"] == {"chosen": 2, "rejected": 0}
    train_batch = PairCollator(processor, max_length)([dict(r) for r in out])  # what MPOTrainer collates
    with torch.no_grad():
        policy = pair_logps(model, train_batch, model.model.get_rope_index, torch.float32)
    assert (torch.tensor(out["ref_chosen_logps"]) - policy.chosen).abs().max() <= 1e-5
    assert (torch.tensor(out["ref_rejected_logps"]) - policy.rejected).abs().max() <= 1e-5
    assert out["ref_chosen_logps"][1] == pytest.approx(out["ref_chosen_logps"][2], abs=1e-6)  # same kept tokens
    _, again = attach_ref_logps(read_records(path), path, str(tiny_vlm_path), processor, max_length, torch.float32,
                                tmp_path / "cache")  # fmt: skip
    assert again["cached"] and again["truncated"] == report["truncated"]  # counted from the cache too
