"""The reward model: loading from a base VLM and from the released format, scores independent of batching/padding."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from reward.model import VALUE_HEAD_FILE, load_reward_model, save_reward_model

TOL = 1e-5


def _encode(processor, records, side="right"):
    processor.tokenizer.padding_side = side
    texts = [processor.apply_chat_template(r["prompt"] + r["chosen"], tokenize=False) for r in records]
    images = [r["images"] for r in records]
    kwargs = {"images": images} if any(images) else {}
    return processor(text=texts, return_tensors="pt", padding=True, **kwargs)


@pytest.fixture(scope="module")
def reward_model(tiny_vlm_path):
    return load_reward_model(tiny_vlm_path, head_seed=0, new_head_ok=True)


def test_backbone_equals_vlm_after_load_and_reload(tiny_vlm_path, reward_model, toy_records, tmp_path):
    """Guards the silent-random-weights trap: the backbone's hidden states equal the VLM's, before and after a save."""
    model, processor = reward_model
    vlm = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path, dtype=torch.float32).eval()
    batch = _encode(processor, toy_records[:4])
    with torch.no_grad():
        expected = vlm.model(**batch).last_hidden_state
        assert torch.equal(model.model(**batch).last_hidden_state, expected)
        reloaded, _ = load_reward_model(save_reward_model(model, processor, tmp_path / "rm"))
        assert torch.equal(reloaded.model(**batch).last_hidden_state, expected)
        assert torch.equal(reloaded(**batch).rewards, model(**batch).rewards)  # identical scores after reload
        assert "lm_head.weight" not in load_file(tmp_path / "rm" / "model.safetensors")


def test_scores_independent_of_batching_and_padding_side(reward_model, toy_records):
    model, processor = reward_model
    with torch.no_grad():
        single = torch.cat([model(**_encode(processor, [r])).rewards for r in toy_records])
        for side in ("left", "right"):
            batched = model(**_encode(processor, toy_records, side)).rewards  # text-only and image rows mixed
            assert batched.dtype == torch.float32 and batched.shape == (len(toy_records),)
            assert (batched - single).abs().max().item() <= TOL, side
    assert single.std() > 0  # not a constant: the check above could not pass trivially


def test_score_hidden_matches_forward(reward_model, toy_records):
    model, processor = reward_model
    batch = _encode(processor, toy_records, "left")
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state
        assert torch.equal(model.score_hidden(hidden, batch["attention_mask"]), model(**batch).rewards)
        # by hand: head at the last column (left padding puts every row's last token there)
        by_hand = hidden[:, -1] @ model.v_head.summary.weight[0] + model.v_head.summary.bias[0]
        assert torch.allclose(model(**batch).rewards, by_hand, atol=1e-6)


def test_head_init_is_seeded(tiny_vlm_path):
    a, _ = load_reward_model(tiny_vlm_path, head_seed=1, new_head_ok=True)
    b, _ = load_reward_model(tiny_vlm_path, head_seed=1, new_head_ok=True)
    c, _ = load_reward_model(tiny_vlm_path, head_seed=2, new_head_ok=True)
    assert torch.equal(a.v_head.summary.weight, b.v_head.summary.weight)
    assert not torch.equal(a.v_head.summary.weight, c.v_head.summary.weight)
    assert a.v_head.dropout.p == 0.1 and a.v_head.summary.bias is not None


def test_saved_format_is_the_released_one(reward_model, tmp_path):
    model, processor = reward_model
    path = save_reward_model(model, processor, tmp_path / "rm")
    head = load_file(path / VALUE_HEAD_FILE)
    hidden = model.config.text_config.hidden_size
    assert {k: tuple(v.shape) for k, v in head.items()} == {"v_head.summary.weight": (1, hidden),
                                                            "v_head.summary.bias": (1,)}  # fmt: skip
    weights = load_file(path / "model.safetensors")
    assert any(k.startswith("model.layers.") for k in weights) and any(k.startswith("visual.") for k in weights)
    assert not any(k.startswith("v_head") for k in weights)
    config = json.loads((path / "config.json").read_text())
    section = list(model.config.text_config.rope_parameters["mrope_section"])
    for block in (config, config["text_config"]):  # transformers 4.x reads these, 5 reads rope_parameters
        assert block["rope_scaling"] == {"type": "mrope", "mrope_section": section}
        assert block["rope_theta"] == model.config.text_config.rope_parameters["rope_theta"]
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]


def test_released_head_is_loaded_and_bad_head_named(reward_model, toy_records, tmp_path):
    model, processor = reward_model
    path = save_reward_model(model, processor, tmp_path / "rm")
    hidden = model.config.text_config.hidden_size
    save_file({"v_head.summary.weight": torch.full((1, hidden), 0.5), "v_head.summary.bias": torch.tensor([2.0])},
              str(path / VALUE_HEAD_FILE))  # fmt: skip
    loaded, _ = load_reward_model(path)
    assert torch.all(loaded.v_head.summary.weight == 0.5) and loaded.v_head.summary.bias.item() == 2.0
    save_file({"v_head.weight": torch.zeros(1, hidden)}, str(path / VALUE_HEAD_FILE))
    with pytest.raises(KeyError, match="v_head.summary.weight"):
        load_reward_model(path)
    save_file({"v_head.summary.weight": torch.zeros(1, hidden + 1), "v_head.summary.bias": torch.zeros(1)},
              str(path / VALUE_HEAD_FILE))  # fmt: skip
    with pytest.raises(ValueError, match="shape"):
        load_reward_model(path)


def test_qwen2_vl_backbone(tiny_vlm_path, tmp_path, toy_records):
    """Qwen2-VL checkpoints load with the same class and key conversion (inputs from the Qwen2.5-VL processor,
    whose token layout Qwen2-VL shares)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from reward.model import VLRewardModel

    reference, processor = load_reward_model(tiny_vlm_path, new_head_ok=True)
    c = reference.config
    text = {k: v for k, v in c.text_config.to_dict().items() if k != "model_type"}
    vision = dict(depth=2, embed_dim=32, hidden_size=text["hidden_size"], num_heads=2, mlp_ratio=2)
    ids = {
        k: getattr(c, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    }
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    torch.manual_seed(0)
    vlm = Qwen2VLForConditionalGeneration(config).eval()
    vlm.save_pretrained(tmp_path / "vlm")
    model = VLRewardModel.from_pretrained(tmp_path / "vlm").eval()
    model.reset_value_head(0)
    batch = _encode(processor, toy_records[:4])
    with torch.no_grad():
        assert torch.equal(model.model(**batch).last_hidden_state, vlm.model(**batch).last_hidden_state)
        path = save_reward_model(model, None, tmp_path / "rm")
        reloaded = VLRewardModel.from_pretrained(path).eval()
        reloaded.load_value_head(load_file(path / VALUE_HEAD_FILE))
        assert torch.equal(reloaded(**batch).rewards, model(**batch).rewards)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["Qwen2VLForConditionalGeneration"]

    # end to end through load_reward_model, with a Qwen2-VL processor saved beside the weights
    from common.processor import Qwen2VLImageOnlyProcessor

    Qwen2VLImageOnlyProcessor(processor.image_processor, processor.tokenizer, processor.chat_template).save_pretrained(
        tmp_path / "vlm"
    )
    loaded, loaded_processor = load_reward_model(tmp_path / "vlm", new_head_ok=True)
    assert isinstance(loaded_processor, Qwen2VLImageOnlyProcessor)
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch).last_hidden_state, vlm.model(**batch).last_hidden_state)


def test_missing_backbone_weights_are_refused(tiny_vlm_path, tmp_path):
    """A checkpoint without some backbone weights must not load them silently as random ones."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_vlm_path, broken)
    weights = load_file(broken / "model.safetensors")
    dropped = [k for k in weights if "layers.1.mlp" in k]
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped}, broken / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    with pytest.raises(ValueError, match=r"backbone weight\(s\) missing"):
        load_reward_model(broken)
