"""Reward training in one process (no launcher): config checks, data handling, freezing, LoRA, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from common.io import SkipLog, read_records, write_records
from common.schema import RecordError
from reward.collator import RewardCollator
from reward.config import RewardConfig
from reward.data import _weighted, filter_long_pairs, pair_lengths, read_pairs
from reward.model import load_reward_model
from reward.pair_eval import pair_metrics
from reward.train import SUMMARY_FILE, train_reward_model
from tests.resume import KillAtStep, LossLog, max_weight_diff


def _config(tmp_path, model, stages, **kw) -> RewardConfig:
    defaults = dict(use_cpu=True, report_to="none", learning_rate=1e-3, logging_steps=1, max_length=512,
                    per_device_train_batch_size=2, save_steps=2, seed=0)  # fmt: skip
    return RewardConfig(output_dir=str(tmp_path / "run"), model_name_or_path=str(model), stages=stages,
                        **{**defaults, **kw})  # fmt: skip


def test_validate_lists_every_problem(tmp_path):
    cfg = RewardConfig(output_dir=str(tmp_path), use_cpu=True, stages=json.dumps([
        {"name": "a", "datasets": {str(tmp_path / "nope"): 1.0}, "lr": 1},
        {"name": "a", "datasets": {str(tmp_path): -1}},
    ]))  # fmt: skip
    with pytest.raises(ValueError) as err:
        cfg.validate()
    msg = str(err.value)
    for needle in ("model_name_or_path: required", "unknown key 'lr'", "weight must be a positive number", "nope"):
        assert needle in msg, needle


def test_stages_given_as_bad_json_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="stages: not a JSON list"):
        RewardConfig(output_dir=str(tmp_path), use_cpu=True, stages="[{name: s1}")


def test_mixing_weights_scale_the_dataset(toy_data):
    ds = read_records(toy_data["pairs_eval"])  # 16 records
    assert len(_weighted(ds, 0.5, seed=0)) == 8 and len(set(_weighted(ds, 0.5, seed=0)["id"])) == 8
    doubled = _weighted(ds, 2.0, seed=0)["id"]
    assert len(doubled) == 32 and all(doubled.count(i) == 2 for i in set(doubled))


def test_long_pairs_skip_or_truncate_response_never_image_tokens(tiny_vlm_path, toy_records):
    processor = load_reward_model(tiny_vlm_path, new_head_ok=True)[1]
    image_pair = toy_records[0]
    assert image_pair["images"]
    lengths = pair_lengths(processor, image_pair)
    assert lengths.prompt < lengths.chosen
    ds = read_records.__globals__["records_to_dataset"]([image_pair])
    cut = lengths.chosen - 2  # fits the prompt and its image tokens, not the whole response
    for policy, kept, reason in [
        ("skip", 0, "length: pair longer than max_length"),
        ("truncate_response", 1, None),
        ("truncate_response", 0, "length: prompt with image tokens longer than max_length"),
    ]:
        max_length = lengths.prompt - 1 if reason and "prompt" in reason else cut
        skipped = SkipLog()
        assert len(filter_long_pairs(ds, processor, max_length, policy, skipped)) == kept
        assert dict(skipped.counts) == ({reason: 1} if reason else {})
    batch = RewardCollator(processor, cut)([image_pair])
    full = RewardCollator(processor, 4096)([image_pair])
    assert batch["input_ids"].shape[1] == cut  # the response tail was cut ...
    assert torch.equal(batch["input_ids"], full["input_ids"][:, :cut])
    assert torch.equal(batch["pixel_values"], full["pixel_values"])  # ... and every image token kept
    with pytest.raises(ValueError, match="would cut image tokens"):
        RewardCollator(processor, lengths.prompt - 20)([image_pair])


def test_bad_records_raise_naming_the_record_or_are_counted(tiny_vlm_path, toy_records, tmp_path):
    bad = [dict(toy_records[1], id="empty", chosen=[{"role": "assistant", "content": "  "}]),
           {k: v for k, v in toy_records[3].items() if k != "rejected"} | {"id": "norej"}]  # fmt: skip
    path = write_records(toy_records[:2] + bad, tmp_path / "pairs.jsonl")
    unreadable = dict(toy_records[0], id="no-image", images=["missing.png"])
    with open(path, "a") as f:
        f.write(json.dumps(unreadable) + "\n")
    processor = load_reward_model(tiny_vlm_path, new_head_ok=True)[1]
    with pytest.raises(RecordError, match="'empty'.*'chosen'.*empty"):
        read_pairs(str(path), _config(tmp_path, tiny_vlm_path, [], on_bad_record="raise"), processor, SkipLog())
    skipped = SkipLog()
    ds = read_pairs(str(path), _config(tmp_path, tiny_vlm_path, [], on_bad_record="skip"), processor, skipped)
    assert len(ds) == 2 and dict(skipped.counts) == {"chosen: the response is empty": 1, "rejected: missing": 1,
                                                     "images: image file not found": 1}  # fmt: skip


def test_pixel_bounds_limit_image_tokens(tiny_vlm_path, toy_records):
    image_pair = toy_records[0]  # a 112x112 image: 16 tokens within the tiny processor's default bounds
    for max_pixels, tokens in ((None, 16), (28 * 28 * 4, 4)):
        processor = load_reward_model(tiny_vlm_path, max_pixels=max_pixels, new_head_ok=True)[1]
        batch = RewardCollator(processor, 512)([image_pair])
        n = (batch["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum().item()
        assert n == tokens and pair_lengths(processor, image_pair).chosen == batch["attention_mask"][0].sum().item()


def test_margin_reaches_the_batch(tiny_vlm_path, toy_records):
    processor = load_reward_model(tiny_vlm_path, new_head_ok=True)[1]
    batch = RewardCollator(processor, 512)([dict(toy_records[0], margin=0.5), dict(toy_records[1], margin=None)])
    assert batch["margin"].tolist() == [0.5, 0.0] and batch["input_ids"].shape[0] == 4  # [chosen; rejected]


class _Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated kill")


def test_two_stages_freezing_resume_and_export(tiny_vlm_path, toy_data, tmp_path):
    stages = [
        {"name": "s1", "datasets": {str(toy_data["pairs_train"]): 0.25}, "max_steps": 4},
        {"name": "s2", "datasets": {str(toy_data["pairs_train"]): 0.25}, "max_steps": 1, "learning_rate": 1e-4},
    ]
    cfg = _config(tmp_path, tiny_vlm_path, stages, eval_datasets=[str(toy_data["pairs_eval"])])
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg, callbacks=[_Crash()])
    changed = _config(tmp_path, tiny_vlm_path, stages, eval_datasets=[str(toy_data["pairs_eval"])], seed=1)
    with pytest.raises(ValueError, match=r"config field seed: 0 -> 1"):
        train_reward_model(changed)  # another configuration may not reuse this run's checkpoints
    export = train_reward_model(cfg)  # the same command again: resumes stage s1 from checkpoint-2
    s1 = json.loads((tmp_path / "run/s1/model" / SUMMARY_FILE).read_text())
    s2 = json.loads((export / SUMMARY_FILE).read_text())
    assert s1["resumed_from"].endswith("checkpoint-2") and s1["metrics"]["global_step"] == 4
    assert s2["init_from"] == str(tmp_path / "run/s1/model") and s2["resumed_from"] is None
    assert s1["trainable_params"]["vision_tower"] == 0 and s1["trainable_params"]["head"] == 65
    base, trained = load_file(tiny_vlm_path / "model.safetensors"), load_file(export / "model.safetensors")
    for key, value in base.items():
        if key == "lm_head.weight":
            continue
        is_frozen = key.startswith("visual.") and not key.startswith("visual.merger.")
        assert torch.equal(trained[key], value) == is_frozen, key  # ViT frozen; merger and LM trained
    model, processor = load_reward_model(export)
    metrics = pair_metrics(model, processor, read_records(toy_data["pairs_eval"]))
    for name in ("loss", "accuracy", "chosen_reward", "rejected_reward"):  # the export scores what training evaluated
        assert metrics[name] == pytest.approx(s2["metrics"][f"eval_{name}"], abs=1e-5), name


def test_lora_trains_adapters_and_head_and_exports_merged(tiny_vlm_path, toy_data, tmp_path):
    stages = [{"name": "lora", "datasets": {str(toy_data["pairs_train"]): 0.25}, "max_steps": 2}]
    cfg = _config(tmp_path, tiny_vlm_path, stages, use_lora=True, lora_r=4, eval_datasets=[str(toy_data["pairs_eval"])])
    export = train_reward_model(cfg)
    summary = json.loads((export / SUMMARY_FILE).read_text())
    counts = summary["trainable_params"]
    assert counts["lora"] > 0 and counts["head"] == 65 and counts["merger"] > 0
    assert counts["language_model"] == 0 and counts["vision_tower"] == 0  # the LM itself only through adapters
    base, merged = load_file(tiny_vlm_path / "model.safetensors"), load_file(export / "model.safetensors")
    assert not any("lora" in k for k in merged) and set(merged) == set(base) - {"lm_head.weight"}
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # not adapted
    assert torch.equal(merged["visual.blocks.0.mlp.gate_proj.weight"], base["visual.blocks.0.mlp.gate_proj.weight"])
    model, processor = load_reward_model(export)
    fresh, _ = load_reward_model(tiny_vlm_path, head_seed=0, new_head_ok=True)
    assert not torch.equal(model.v_head.summary.weight, fresh.v_head.summary.weight)  # the head trained in full
    metrics = pair_metrics(model, processor, read_records(toy_data["pairs_eval"]))
    assert metrics["loss"] == pytest.approx(summary["metrics"]["eval_loss"], abs=1e-5)


def test_merge_lora_state_dict_by_hand():
    from reward.train import merge_lora_state_dict

    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [4.0]])  # rank 1: B @ A = [[3, 6], [4, 8]]
    peft = {
        "base_model.model.q.base_layer.weight": torch.ones(2, 2),
        "base_model.model.q.base_layer.bias": torch.zeros(2),
        "base_model.model.q.lora_A.default.weight": a,
        "base_model.model.q.lora_B.default.weight": b,
        "base_model.model.v_head.original_module.summary.weight": torch.zeros(1, 2),
        "base_model.model.v_head.modules_to_save.default.summary.weight": torch.full((1, 2), 7.0),
        "base_model.model.norm.weight": torch.ones(2),
    }
    merged = merge_lora_state_dict(peft, scaling=0.5)
    assert sorted(merged) == ["norm.weight", "q.bias", "q.weight", "v_head.summary.weight"]
    assert torch.equal(merged["q.weight"], torch.tensor([[2.5, 4.0], [3.0, 5.0]]))  # 1 + 0.5 * B @ A
    assert torch.equal(merged["v_head.summary.weight"], torch.full((1, 2), 7.0))  # the trained copy, not the original


@pytest.mark.parametrize("lora", [False, True])
def test_resume_without_deepspeed_equals_uninterrupted(lora, tiny_vlm_path, toy_data, tmp_path):
    """Killed after step 3 (checkpoint-2 on disk) and rerun: step 3 and 4 give the uninterrupted run's losses and the
    export its weights, backbone included (a resume that loads only the head and optimizer drifts at step 3)."""
    stages = [{"name": "s1", "datasets": {str(toy_data["pairs_train"]): 0.25}, "max_steps": 4}]
    kw = dict(use_lora=lora, lora_r=4)
    full, resumed = LossLog(), LossLog()
    train_reward_model(_config(tmp_path / "full", tiny_vlm_path, stages, **kw), callbacks=[full])
    cfg = _config(tmp_path / "killed", tiny_vlm_path, stages, **kw)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg, callbacks=[KillAtStep(3)])
    export = train_reward_model(cfg, callbacks=[resumed])
    assert json.loads((export / SUMMARY_FILE).read_text())["resumed_from"].endswith("checkpoint-2")
    assert sorted(resumed.losses) == [3, 4]
    for step in (3, 4):
        assert resumed.losses[step] == pytest.approx(full.losses[step], abs=1e-6), step
    assert max_weight_diff(export, tmp_path / "full/run/s1/model") <= 1e-6


def test_margins_bounded_and_suspicious_pairs_counted_in_the_summary(tiny_vlm_path, toy_records, tmp_path):
    same = dict(toy_records[1], id="same", rejected=[{"role": "assistant", "content": " It is 7. "}],
                chosen=[{"role": "assistant", "content": "It is 7."}])  # fmt: skip
    records = [dict(r, margin=1.0) for r in toy_records[:4]] + [dict(toy_records[0], margin=1.0), same]
    records.append(dict(toy_records[2], id="huge", margin=-1e308))
    path = write_records(records, tmp_path / "pairs.jsonl")
    with open(path, "a") as f:  # JSON's NaN parses: a non-finite margin is refused on read, naming the record
        f.write(json.dumps(dict(toy_records[1], id="nan", margin=float("nan"))) + "\n")
    processor = load_reward_model(tiny_vlm_path, new_head_ok=True)[1]
    skipped, flagged = SkipLog(), SkipLog()
    cfg = _config(tmp_path, tiny_vlm_path, [], on_bad_record="skip")
    ds = read_pairs(str(path), cfg, processor, skipped, flagged)
    assert len(ds) == 6 and dict(skipped.counts) == {"margin: expected a finite number, got nan": 1,
                                                     "margin: |margin| must be <= 1000": 1}  # fmt: skip
    assert dict(flagged.counts) == {"id: duplicate record id": 1, "rejected: the same text as chosen": 1}
    stages = [{"name": "s1", "datasets": {str(path): 1.0}, "max_steps": 1}]
    export = train_reward_model(_config(tmp_path, tiny_vlm_path, stages, on_bad_record="skip"))
    summary = json.loads((export / SUMMARY_FILE).read_text())
    assert summary["flagged"]["by_reason"] == dict(flagged.counts) and summary["skipped"]["total"] == 2
    assert (
        f"record 'same' (#5), field 'rejected': the same text as chosen (in {path})" in summary["flagged"]["examples"]
    )


def test_a_finished_run_is_a_no_op_and_a_longer_stage_continues_it(tiny_vlm_path, toy_data, tmp_path):
    """Two stages. Rerun unchanged: nothing trains. Stage s1 grown from 2 to 4 steps: s1 continues from its final
    checkpoint (steps 3 and 4 logged) and s2 trains again from the new s1; both equal the uninterrupted run's losses
    and exports. Shrinking s1 back is refused."""

    def stages(s1_steps):
        data = {str(toy_data["pairs_train"]): 0.25}
        return [{"name": "s1", "datasets": data, "max_steps": s1_steps},
                {"name": "s2", "datasets": data, "max_steps": 1, "learning_rate": 1e-4}]  # fmt: skip

    kw = dict(lr_scheduler_type="constant")
    full, again, grown = LossLog(), LossLog(), LossLog()
    train_reward_model(_config(tmp_path / "full", tiny_vlm_path, stages(4), **kw), callbacks=[full])
    short = _config(tmp_path / "grown", tiny_vlm_path, stages(2), **kw)
    export = train_reward_model(short)
    before = load_file(export / "model.safetensors")
    train_reward_model(short, callbacks=[again])
    assert again.losses == {}  # finished: no step
    assert all(torch.equal(v, load_file(export / "model.safetensors")[k]) for k, v in before.items())
    train_reward_model(_config(tmp_path / "grown", tiny_vlm_path, stages(4), **kw), callbacks=[grown])
    s1 = json.loads((tmp_path / "grown/run/s1/model" / SUMMARY_FILE).read_text())
    assert s1["resumed_from"].endswith("checkpoint-2") and s1["metrics"]["global_step"] == 4
    assert sorted(grown.losses) == [1, 3, 4]  # s1's steps 3 and 4, then s2's step 1
    for step in (1, 3, 4):
        assert grown.losses[step] == pytest.approx(full.losses[step], abs=1e-6), step
    for stage in ("s1", "s2"):
        assert max_weight_diff(tmp_path / f"grown/run/{stage}/model", tmp_path / f"full/run/{stage}/model") <= 1e-6
    with pytest.raises(ValueError, match=r"the training length may grow, never shrink"):
        train_reward_model(short)
