"""RewardScorer: group-aware scores equal the naive path (fp32, <= 1e-4), batching does not change scores."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from common.scoring import ScoringGroup
from reward.scorer import RewardScorer, assistant_message

TOL = 1e-4


@pytest.fixture(scope="module")
def scorer(tiny_reward_path):
    return RewardScorer.from_pretrained(str(tiny_reward_path), device="cpu", progress=False)


def _images(n):
    # different sizes -> different grids, so each image's 3D positions differ
    return [Image.new("RGB", (56 + 24 * i, 40 + 30 * i), (60 * i, 200 - 50 * i, 90 + 20 * i)) for i in range(n)]


def _group(n_images, k, question="what is in the picture?"):
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    responses = [" ".join(["the shape is red"] * (1 + j % 3) + [str(j)]) for j in range(k)]
    return ScoringGroup([{"role": "user", "content": content}], _images(n_images), responses)


def _max_diff(a, b):
    assert [len(x) for x in a] == [len(x) for x in b]
    return max(abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga, gb))


def _both(scorer, groups, batch_size=8):
    scorer.config.batch_size = batch_size
    scorer.config.group_aware = False
    naive = scorer.score_groups(groups)
    scorer.config.group_aware = True
    shared = scorer.score_groups(groups)
    return naive, shared


@pytest.mark.parametrize("n_images", [1, 2, 3])
def test_group_aware_equals_naive(scorer, n_images):
    groups = [_group(n_images, k) for k in (1, 4, 8)]
    naive, shared = _both(scorer, groups)
    assert _max_diff(naive, shared) <= TOL
    # the scores are not all equal (the comparison would be vacuous otherwise)
    assert max(naive[2]) - min(naive[2]) > 10 * TOL


def test_group_aware_equals_naive_mixed_batch_text_only_and_odd_boundaries(scorer):
    # text-only and image groups share one prefix forward; responses that start with whitespace or a newline
    # may merge with the template's last token, so the split falls inside the prompt.
    odd = ScoringGroup(_group(1, 1).prompt, _images(1), ["\n\nnewline first", "  two spaces", "x", "7 + 1 = 8"])
    groups = [_group(0, 4), _group(2, 3), odd, _group(3, 1), _group(0, 2, "sum 3 plus 4?")]
    naive, shared = _both(scorer, groups, batch_size=16)
    assert _max_diff(naive, shared) <= TOL


def test_group_aware_needs_the_3d_image_positions(scorer, monkeypatch):
    """Resuming text positions at the prefix length (1D thinking) instead of max(3D positions) + 1 shifts scores."""
    groups = [_group(2, 4)]
    naive, _ = _both(scorer, groups)
    import reward.scorer

    real = reward.scorer.prompt_rope_positions

    def one_d(backbone, batch):
        positions, _ = real(backbone, batch)
        return positions, batch["attention_mask"].sum(-1)

    monkeypatch.setattr(reward.scorer, "prompt_rope_positions", one_d)
    assert _max_diff(naive, scorer.score_groups(groups)) > TOL


def test_batching_and_order_do_not_change_scores(scorer):
    groups = [_group(n, 2) for n in (0, 1, 2, 3, 1)]
    convs = [{"messages": g.prompt + [assistant_message(r)], "images": g.images} for g in groups for r in g.responses]
    scorer.config.batch_size = 1
    one = scorer.score(convs)
    scorer.config.batch_size = 4
    four = scorer.score(convs)
    assert max(abs(a - b) for a, b in zip(one, four)) <= TOL
    # direct model call on a single conversation agrees with the scorer
    text = scorer.processor.apply_chat_template(convs[3]["messages"], tokenize=False)
    enc = scorer.processor(text=[text], images=convs[3]["images"], return_tensors="pt")
    with torch.no_grad():
        direct = scorer.model(**enc).rewards.item()
    assert abs(direct - one[3]) <= TOL


def test_bad_groups_raise_clear_errors(scorer):
    with pytest.raises(ValueError, match="group #1: no responses"):
        scorer.score_groups([_group(1, 2), ScoringGroup(_group(1, 1).prompt, _images(1), [])])
    scorer.config.max_length = 20
    try:
        with pytest.raises(ValueError, match=r"group #0.*more than max_length=20"):
            scorer.score_groups([_group(1, 2)])
    finally:
        scorer.config.max_length = None


def test_bfloat16_scores_are_finite_and_close(tiny_reward_path, scorer):
    groups = [_group(1, 4)]
    scorer.config.group_aware = True
    ref = scorer.score_groups(groups)
    bf16 = RewardScorer.from_pretrained(str(tiny_reward_path), device="cpu", dtype="bfloat16", progress=False)
    got = bf16.score_groups(groups)
    assert all(math.isfinite(x) for x in got[0])
    assert _max_diff(ref, got) < 0.1


def test_split_inside_the_prompt_with_the_real_qwen_vocabulary():
    """With Qwen's vocabulary a response starting with newlines merges with the template's "assistant\\n" token:
    the shared prefix must then stop before it, and the scores still equal the naive ones."""
    from common.tiny_vlm import TinyVLMSpec, build_config, build_processor
    from reward.model import VLRewardModel
    from reward.scorer import ScorerConfig

    spec = TinyVLMSpec(vocab="qwen2")
    processor = build_processor(spec)
    torch.manual_seed(0)
    model = VLRewardModel(build_config(spec, processor.tokenizer)).eval()
    scorer = RewardScorer(model, processor, ScorerConfig(model_name_or_path="in-memory", progress=False))
    group = ScoringGroup(_group(1, 1).prompt, _images(1), ["\n\nnewline first", "plain", "  two spaces"])
    prompt_text = processor.apply_chat_template(group.prompt, tokenize=False, add_generation_prompt=True)
    split = scorer._split_group(group, "g")
    n_image_tokens = int((split["prefix"]["input_ids"] == scorer.image_token_id).sum())
    assert len(split["prefix"]["input_ids"]) < len(processor.tokenizer(prompt_text)["input_ids"]) + n_image_tokens - 1
    naive, shared = _both(scorer, [group])
    assert _max_diff(naive, shared) <= TOL


def test_scorer_loads_a_saved_reward_checkpoint(tmp_path, scorer):
    """A checkpoint in the released format (value_head.safetensors beside the backbone) scores like the model saved."""
    from reward.model import save_reward_model

    with torch.no_grad():
        scorer.model.v_head.summary.weight.mul_(-3.0)
        scorer.model.v_head.summary.bias.fill_(0.25)
    try:
        groups = [_group(1, 3), _group(0, 2)]
        scorer.config.group_aware = True
        before = scorer.score_groups(groups)
        path = save_reward_model(scorer.model, scorer.processor, tmp_path / "rm")
        loaded = RewardScorer.from_pretrained(str(path), device="cpu", progress=False)
        assert _max_diff(before, loaded.score_groups(groups)) <= TOL
    finally:
        scorer.model.reset_value_head(0)
