"""The offline tiny Qwen2.5-VL: built, saved, reloaded through the real loaders, and used like the real model."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from common.processor import Qwen2_5_VLImageOnlyProcessor, load_processor
from common.tiny_vlm import QWEN2_5_VL_ADDED_TOKENS, TinyVLMSpec, build_config, build_qwen2_tokenizer, build_tiny_vlm
from common.toy_task import make_example


@pytest.fixture(scope="module")
def loaded(tiny_vlm_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path).eval()
    return model, load_processor(tiny_vlm_path)


def _inputs(processor, n_images, seed=0):
    examples = [make_example(seed, "t", i, "color") for i in range(n_images)]
    content = [{"type": "image"} for _ in examples] + [{"type": "text", "text": "Describe the pictures."}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    images = [e.image for e in examples] or None
    return processor(text=[text], images=images, return_tensors="pt")


def test_tiny_is_tiny():
    model, _ = build_tiny_vlm(TinyVLMSpec.preset("tiny"))
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_reload_is_exact(tiny_vlm_path, loaded):
    model, processor = loaded
    original, _ = build_tiny_vlm(TinyVLMSpec.preset("tiny"))  # same seed: the weights that were saved
    inputs = _inputs(processor, 1)
    with torch.no_grad():
        assert torch.equal(original.eval()(**inputs).logits, model(**inputs).logits)


def test_processor_really_is_a_processor(tiny_vlm_path, loaded):
    _, processor = loaded
    assert isinstance(processor, ProcessorMixin) and isinstance(processor, Qwen2_5_VLImageOnlyProcessor)
    assert isinstance(AutoProcessor.from_pretrained(tiny_vlm_path), Qwen2_5_VLImageOnlyProcessor)
    tok = processor.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "What color is the square?"
    assert tok.decode(tok(text)["input_ids"]) == text  # round trip
    inputs = _inputs(processor, 1)
    # a 112x112 image -> 8x8 patches -> 16 merged tokens, each one <|image_pad|>
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == 16
    assert torch.equal(inputs["mm_token_type_ids"].bool(), inputs["input_ids"] == image_pad)


def test_min_max_pixels_bound_images(tiny_vlm_path):
    processor = load_processor(tiny_vlm_path, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 4)
    inputs = _inputs(processor, 1)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]  # 112x112 squeezed to 56x56: 4 tokens


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_forward_with_any_number_of_images(loaded, n_images):
    model, processor = loaded
    inputs = _inputs(processor, n_images)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(out.logits).all()


def test_images_change_the_output(loaded):
    model, processor = loaded
    a, b = _inputs(processor, 1, seed=0), _inputs(processor, 1, seed=1)
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.no_grad():
        assert not torch.allclose(model(**a).logits, model(**b).logits)


def test_generate_with_sampling_is_seeded(loaded):
    model, processor = loaded
    inputs = _inputs(processor, 1)

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(**inputs, do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=8,
                              num_return_sequences=3)  # fmt: skip

    first = sample(0)
    assert first.shape[0] == 3 and first.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(first, sample(0))


def test_real_qwen2_vocabulary_ids():
    tok = build_qwen2_tokenizer()
    assert tok("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    expected = {t: 151643 + i for i, t in enumerate(QWEN2_5_VL_ADDED_TOKENS)}
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 151655


def test_7b_shape_config():
    spec = TinyVLMSpec.preset("7b")
    config = build_config(spec, build_qwen2_tokenizer())
    assert config.text_config.hidden_size == 3584 and config.text_config.num_hidden_layers == 28
    assert config.vision_config.depth == 32 and config.vision_config.out_hidden_size == 3584
    assert config.text_config.vocab_size == 152064 and config.image_token_id == 151655
    with torch.device("meta"):  # build the real architecture without allocating it
        model = AutoModelForImageTextToText.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert 8.0e9 < n < 8.6e9  # Qwen2.5-VL-7B has 8.29 B parameters


def test_wider_preset_keeps_the_rotary_split_valid():
    spec = TinyVLMSpec.preset("tiny", hidden_size=128)
    assert spec.mrope_section == (4, 6, 6)  # head_dim 32: 1/4 time, 3/8 height, 3/8 width of the half
    assert TinyVLMSpec.preset("7b").mrope_section == (16, 24, 24)
    model, processor = build_tiny_vlm(spec)
    with torch.no_grad():
        assert torch.isfinite(model(**_inputs(processor, 1)).logits).all()
