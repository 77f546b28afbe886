"""Packed pairs (images and prompt encoded once) give the same log-probs as TRL's [chosen; rejected] batch."""

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from mpo.packing import BlankImage, PairCollator, pack_pairs, pair_logps


@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [3], [0], [1, 3, 5, 7]])  # mixed, text only, image only, mixed
def test_packed_logps_equal_trl_unpacked(tiny_policy, toy_pairs, trl_pair_logps, rows):
    model, processor = tiny_policy
    examples = [toy_pairs[i] for i in rows]
    batch = PairCollator(processor)(examples)
    with torch.no_grad():
        ours = pair_logps(model, batch, model.model.get_rope_index, torch.float32)
    (trl_c, trl_r), (len_c, len_r) = trl_pair_logps(model, processor, examples)
    assert torch.equal(ours.chosen_lengths, len_c) and torch.equal(ours.rejected_lengths, len_r)
    assert (ours.chosen - trl_c).abs().max() <= 1e-4
    assert (ours.rejected - trl_r).abs().max() <= 1e-4
    assert not torch.allclose(ours.chosen, ours.rejected)  # the two branches really differ


def test_images_are_processed_once_per_pair(tiny_policy, toy_pairs):
    model, processor = tiny_policy
    examples = toy_pairs[:3]  # three images
    ours = PairCollator(processor)(examples)
    trl = DataCollatorForVisionPreference(processor)([dict(e) for e in examples])
    assert ours["image_grid_thw"].size(0) == 3 and trl["image_grid_thw"].size(0) == 6
    assert ours["pixel_values"].size(0) * 2 == trl["pixel_values"].size(0)


def test_branches_do_not_see_each_other(tiny_policy, toy_pairs):
    model, processor = tiny_policy
    batch = PairCollator(processor)(toy_pairs[:2])
    packed = pack_pairs(batch, model.model.get_rope_index, torch.float32)
    mask = packed.model_inputs["attention_mask"][:, 0] == 0  # [B, q, k] allowed
    chosen, rejected = packed.chosen_positions, packed.rejected_positions
    for b in range(2):
        assert not mask[b][rejected[b]][:, chosen[b]].any()
        assert not mask[b][chosen[b]][:, rejected[b]].any()
    # Positions: the first token of each response sits one after the prompt's last position (text RoPE).
    pos = packed.model_inputs["position_ids"]
    first_c = chosen[0].nonzero()[0].item()
    first_r = rejected[0].nonzero()[0].item()
    assert torch.equal(pos[:, 0, first_c], pos[:, 0, first_r])


def test_truncation_cuts_responses_never_the_prompt(tiny_policy, toy_pairs):
    _, processor = tiny_policy
    full = PairCollator(processor)(toy_pairs[:1])
    prompt_len = int(full["prompt_attention_mask"].sum())
    cut = PairCollator(processor, max_length=prompt_len + 2)(toy_pairs[:1])
    assert torch.equal(cut["prompt_input_ids"], full["prompt_input_ids"])
    assert int(cut["chosen_attention_mask"].sum()) == 2 and int(cut["rejected_attention_mask"].sum()) == 2
    with pytest.raises(ValueError, match=r"record 'toy-train-color-000000', field 'prompt'.*16 of them image tokens"):
        PairCollator(processor, max_length=prompt_len)(toy_pairs[:1])


def test_blank_image_on_text_only_batches_changes_nothing(tiny_policy, toy_pairs):
    model, processor = tiny_policy
    batch = PairCollator(processor)([toy_pairs[3], toy_pairs[7]])  # two text-only pairs
    assert "pixel_values" not in batch
    blank = BlankImage.for_model(model.config)
    packed = pack_pairs(batch, model.model.get_rope_index, torch.float32, blank)
    assert packed.model_inputs["pixel_values"].shape == (4, blank.patch_dim)
    assert (packed.model_inputs["input_ids"] == model.config.image_token_id).sum() == 1
    with torch.no_grad():
        plain = pair_logps(model, batch, model.model.get_rope_index, torch.float32)
        blanked = pair_logps(model, batch, model.model.get_rope_index, torch.float32, blank)
    assert torch.allclose(plain.chosen, blanked.chosen, atol=1e-5)
    assert torch.allclose(plain.rejected, blanked.rejected, atol=1e-5)


def with_chosen(example: dict, text: str) -> dict:
    return {**example, "chosen": [{"role": "assistant", "content": [{"type": "text", "text": text}]}]}


def response_room(processor, example) -> int:
    """Response tokens that fit both of the example's own responses, plus 4."""
    batch = PairCollator(processor)([example])
    return int(max(batch["chosen_attention_mask"].sum(), batch["rejected_attention_mask"].sum())) + 4


def test_a_very_long_response_is_cut_so_memory_is_bounded(tiny_policy, toy_pairs):
    model, processor = tiny_policy
    rope = model.model.get_rope_index
    pair = toy_pairs[0]  # with an image; "It is yellow." / "It is green."
    long = with_chosen(pair, "It is yellow." + " word" * 20_000)  # 80,000 tokens with the tiny tokenizer
    short = with_chosen(pair, "It is yellow." + " word" * 20)  # longer than the room too, far shorter than `long`
    room = response_room(processor, pair)
    prompt_len = int(PairCollator(processor)([pair])["prompt_attention_mask"].sum())
    collate = PairCollator(processor, max_length=prompt_len + room)
    batch = collate([long, pair])
    assert batch["chosen_input_ids"].shape == (2, room)  # the ids are cut, not only masked (was (2, 80_006))
    assert batch["chosen_truncated"].tolist() == [True, False] and not batch["rejected_truncated"].any()
    packed = pack_pairs(batch, rope, torch.float32)
    n = packed.model_inputs["input_ids"].size(1)
    assert n <= 2 * collate.max_length and packed.model_inputs["attention_mask"].shape == (2, 1, n, n)
    assert torch.equal(batch["prompt_input_ids"], PairCollator(processor)([long, pair])["prompt_input_ids"])

    # The kept tokens score exactly as the same tokens of the short response, computed without any cut.
    cut = collate([long])
    assert torch.equal(cut["chosen_input_ids"], collate([short])["chosen_input_ids"])
    full = PairCollator(processor)([short])
    whole = pack_pairs(full, rope, torch.float32)
    with torch.no_grad():
        ours = pair_logps(model, cut, rope, torch.float32)
        out = model(**whole.model_inputs, shift_labels=whole.shift_labels, fused_lm_head=True, use_cache=False)
    per_token = out.log_probs[0, -whole.shift_labels.size(1) :][whole.chosen_positions[0]]
    assert per_token.numel() > room and int(ours.chosen_lengths) == room
    assert abs(ours.chosen.item() - per_token[:room].sum().item()) <= 1e-5
