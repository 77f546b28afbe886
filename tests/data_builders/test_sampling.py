"""Shared-prefill sampling on the tiny policy: same samples as generate(num_return_sequences=K), deterministic."""

import pytest
import torch

from common.rope import prompt_rope_positions
from data_builders.sampling import HFSampler, PromptTooLong, SamplingParams, prompt_seed
from data_builders.sources import read_prompts

PARAMS = SamplingParams(num_samples=4, temperature=0.9, top_p=0.95, top_k=40, max_new_tokens=10)


@pytest.fixture(scope="module")
def prompts(toy_data):
    ds = read_prompts(toy_data["prompts_eval"])
    return {row["source"]: row for row in ds}  # one prompt per kind: toy/color, toy/shape, toy/count, toy/sum


@pytest.fixture(scope="module")
def samplers(tiny_vlm_path):
    return HFSampler(str(tiny_vlm_path), device="cpu"), HFSampler(
        str(tiny_vlm_path), device="cpu", shared_prefill=False
    )


@pytest.mark.parametrize("kind", ["toy/color", "toy/count", "toy/sum"])
def test_shared_prefill_equals_generate_num_return_sequences(samplers, prompts, kind):
    shared, baseline = samplers
    a = shared.sample(prompts[kind], PARAMS, seed=7)
    b = baseline.sample(prompts[kind], PARAMS, seed=7)
    assert a.texts == b.texts and a.num_tokens == b.num_tokens
    assert len(set(a.texts)) > 1  # the K samples differ from each other


def test_image_prompt_uses_3d_positions(samplers, prompts):
    inputs = samplers[0].encode(prompts["toy/color"])
    position_ids, next_pos = prompt_rope_positions(samplers[0].model.model, inputs)
    length = inputs["input_ids"].shape[1]
    delta = int(next_pos[0]) - length
    # image tokens share positions along the temporal axis, so text resumes below the sequence length
    assert delta < 0 and int(position_ids.max()) + 1 == length + delta
    assert "mm_token_type_ids" in inputs and int(inputs["mm_token_type_ids"].sum()) > 0


def test_deterministic_for_a_seed(samplers, prompts):
    shared = samplers[0]
    first = shared.sample(prompts["toy/shape"], PARAMS, seed=3)
    torch.manual_seed(1234)  # the global RNG state must not matter
    assert shared.sample(prompts["toy/shape"], PARAMS, seed=3).texts == first.texts
    assert shared.sample(prompts["toy/shape"], PARAMS, seed=4).texts != first.texts


def test_prompt_seed_depends_on_seed_and_id_only():
    assert prompt_seed(0, "a") == prompt_seed(0, "a")
    assert len({prompt_seed(0, "a"), prompt_seed(1, "a"), prompt_seed(0, "b")}) == 3
    assert 0 <= prompt_seed(5, "x") < 2**63


def test_sampling_params_validation_lists_every_problem():
    with pytest.raises(ValueError, match=r"num_samples=1.*temperature=0.*top_p=1.5"):
        SamplingParams(num_samples=1, temperature=0.0, top_p=1.5)


def test_prompt_longer_than_max_prompt_tokens_raises_before_any_forward(tiny_vlm_path, prompts):
    sampler = HFSampler(str(tiny_vlm_path), device="cpu", max_prompt_tokens=10)
    with pytest.raises(PromptTooLong, match=r"prompt 'toy-eval-color-\d+': \d+ tokens > max_prompt_tokens=10"):
        sampler.sample(prompts["toy/color"], PARAMS, seed=0)


def test_early_stop_at_end_of_turn_matches_generate(tiny_vlm_path, prompts):
    # A fifth of the vocabulary counts as end-of-turn, so samples stop after different numbers of tokens.
    shared, baseline = HFSampler(str(tiny_vlm_path), device="cpu"), HFSampler(str(tiny_vlm_path), device="cpu",
                                                                                 shared_prefill=False)  # fmt: skip
    eos = list(range(0, 500, 5))
    for sampler in (shared, baseline):
        sampler.model.generation_config.eos_token_id = eos
        sampler.eos_ids = torch.tensor(eos)
    params = SamplingParams(num_samples=8, max_new_tokens=12)
    a = shared.sample(prompts["toy/color"], params, seed=11)
    b = baseline.sample(prompts["toy/color"], params, seed=11)
    assert a.texts == b.texts and a.num_tokens == b.num_tokens
    assert len(set(a.num_tokens)) > 1 and min(a.num_tokens) < 12


def test_greedy_answer_equals_generate_without_sampling(tiny_vlm_path, prompts):
    """`greedy` (one shared-prefill row, argmax) gives generate(do_sample=False)'s tokens, stops included."""
    sampler = HFSampler(str(tiny_vlm_path), device="cpu")
    eos = list(range(0, 500, 7))  # so that some answers stop before the limit
    sampler.model.generation_config.eos_token_id = eos
    sampler.eos_ids = torch.tensor(eos)
    lengths = set()
    for prompt in list(prompts.values())[:3]:
        inputs = sampler.encode(prompt)
        out = sampler.model.generate(**inputs, do_sample=False, max_new_tokens=10, pad_token_id=sampler.pad_id,
                                     repetition_penalty=1.0)  # fmt: skip
        expected = sampler._decode(out[:, inputs["input_ids"].shape[1] :])
        (got,) = sampler.greedy([prompt], max_new_tokens=10)
        assert got.texts == expected.texts and got.num_tokens == expected.num_tokens
        lengths.add(got.num_tokens[0])
    assert len(got.texts) == 1 and len(lengths) > 1 and min(lengths) < 10
