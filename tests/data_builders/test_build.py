"""The build job in-process: end to end on the toy task with the tiny policy and reward model, rules, bad input."""

import json
from pathlib import Path

import datasets
import pytest
import yaml

from common.cli import parse_configs
from common.io import read_records
from data_builders.build import build_pairs
from data_builders.config import BuildPairsConfig
from reward.scorer import RewardScorer, assistant_message

from .conftest import ChoiceSampler, HashScorer


def make_cfg(prompts, out, policy=None, reward=None, **kw):
    """With the fakes (`ChoiceSampler`, `HashScorer`) no model loads: the model paths default to an empty folder."""
    stand_in = Path(out).parent / "no-model"
    stand_in.mkdir(parents=True, exist_ok=True)
    policy, reward = policy or stand_in, reward or stand_in
    base = dict(prompts=str(prompts), policy_name_or_path=str(policy), reward_model_name_or_path=str(reward),
                output_dir=str(out), num_samples=4, max_new_tokens=6, chunk_size=4, device="cpu", progress=False)  # fmt: skip
    return BuildPairsConfig(**{**base, **kw})


def rows(path):
    ds = datasets.load_from_disk(str(path))
    return [dict(r) for r in ds.cast_column("images", datasets.List(datasets.Image(decode=False)))]


@pytest.fixture(scope="module")
def tiny_run(toy_data, tiny_vlm_path, tiny_reward_path, tmp_path_factory):
    cfg = make_cfg(toy_data["prompts_eval"], tmp_path_factory.mktemp("build") / "out", tiny_vlm_path, tiny_reward_path)
    return cfg, build_pairs(cfg)


def test_end_to_end_on_the_toy_task(tiny_run, tiny_reward_path):
    cfg, pairs = tiny_run
    out = pairs.parent
    records = read_records(pairs, kind="preference")  # every record validates against the common schema
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"]["processed"] == 16 and report["candidates"]["generated"] == 64
    assert report["pairs"] == len(records) > 0
    assert report["prompts"]["with_pairs"] + sum(report["prompts"]["without_pairs"].values()) == 16
    assert 0 <= report["candidates"]["correct_rate"] <= 1  # toy prompts carry ground truth
    for name in ("reward", "gap", "length"):
        assert (out / f"hist_{name}.png").stat().st_size > 1000
    assert "| pairs |" in (out / "report.md").read_text()
    scorer = RewardScorer.from_pretrained(str(tiny_reward_path), device="cpu", progress=False)
    for rec in records:
        meta = json.loads(rec["meta"])
        assert rec["id"] == f"{meta['prompt_id']}/0" and meta["rule"] == "best_vs_worst"
        assert meta["policy"] == cfg.policy_name_or_path and meta["reward_model"] == cfg.reward_model_name_or_path
        assert isinstance(meta["seed"], int) and meta["gap"] == pytest.approx(
            rec["chosen_score"] - rec["rejected_score"]
        )
        assert rec["chosen_score"] > rec["rejected_score"]
        assert len(rec["images"]) == (0 if rec["source"] == "toy/sum" else 1)  # images kept
        # the stored scores are the reward model's scores of these very conversations (naive full forwards)
        convs = [{"messages": rec["prompt"] + [assistant_message(rec[k][0]["content"][0]["text"])],
                  "images": rec["images"]} for k in ("chosen", "rejected")]  # fmt: skip
        assert scorer.score(convs) == pytest.approx([rec["chosen_score"], rec["rejected_score"]], abs=1e-4)


def test_same_seed_same_dataset_and_rerun_is_a_no_op(tiny_run, tmp_path):
    cfg, pairs = tiny_run
    again = build_pairs(make_cfg(cfg.prompts, tmp_path / "again", cfg.policy_name_or_path,
                                 cfg.reward_model_name_or_path))  # fmt: skip
    assert rows(again) == rows(pairs)
    sampler, scorer = ChoiceSampler(), HashScorer()
    assert build_pairs(cfg, sampler=sampler, scorer=scorer) == pairs  # all chunks finished: nothing redone
    assert sampler.calls == [] and scorer.groups == 0


def test_correctness_rule_with_ground_truth(toy_data, tmp_path):
    cfg = make_cfg(toy_data["prompts_eval"], tmp_path / "out", rule="correctness", max_pairs_per_prompt=2)
    pairs = build_pairs(cfg, sampler=ChoiceSampler(), scorer=HashScorer())
    records = read_records(pairs, kind="preference")
    prompts = {r["id"]: r for r in read_records(toy_data["prompts_eval"], kind="prompt")}
    report = json.loads((pairs.parent / "report.json").read_text())
    # each prompt gets its right answer and 2-3 wrong ones: 2 pairs per prompt
    assert report["prompts"]["with_pairs"] == 16 and len(records) == 32
    for rec in records:
        answer = prompts[json.loads(rec["meta"])["prompt_id"]]["answer"]
        assert rec["chosen"][0]["content"][0]["text"] == f"It is {answer}."
        assert rec["rejected"][0]["content"][0]["text"] != f"It is {answer}."


def test_bad_records_are_counted_not_fatal(tmp_path):
    rows_in = [{"id": f"q{i}", "question": f"Pick one: {i}?", "answer": "red", "choices": ["red", "blue", "green"]}
               for i in range(6)]  # fmt: skip
    rows_in[1] = {"id": "q1"}  # no question
    rows_in[4]["image"] = "missing.png"
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_in) + "{broken\n")
    cfg = make_cfg(path, tmp_path / "out", chunk_size=4)  # q0 and q5 are scored in one call: only q5 must fail
    sampler, scorer = (
        ChoiceSampler(fail_ids={"q2"}, too_long_ids={"q3"}),
        HashScorer(nan_responses={"It is blue."}, fail_if_prompt_has="5?"),
    )
    pairs = build_pairs(cfg, sampler=sampler, scorer=scorer)
    report = json.loads((pairs.parent / "report.json").read_text())
    assert report["prompts"]["skipped_at_read"]["by_reason"] == {
        "question: expected a non-empty question string, got None": 1, "images: image file not found": 1,
        "<line>: invalid JSON": 1}  # fmt: skip
    assert report["prompts"]["valid"] == 4 and report["prompts"]["processed"] == 4
    assert report["prompts"]["without_pairs"] == {"sampling failed: ValueError": 1, "scoring failed: ValueError": 1,
                                                  "prompt longer than max_prompt_tokens": 1}  # fmt: skip
    assert report["candidates"]["dropped"] == {"non-finite score": 1}
    assert report["pairs"] == 1 and len(read_records(pairs, kind="preference")) == 1


def test_output_dir_of_another_build_is_refused_unless_overwrite(toy_data, tmp_path):
    cfg = make_cfg(toy_data["prompts_eval"], tmp_path / "out", max_prompts=4)
    first = build_pairs(cfg, sampler=ChoiceSampler(), scorer=HashScorer())
    first_seed = json.loads(read_records(first)[0]["meta"])["seed"]
    other = make_cfg(toy_data["prompts_eval"], tmp_path / "out", max_prompts=4, seed=1)
    with pytest.raises(ValueError, match=r"config field seed: 0 -> 1"):
        build_pairs(other, sampler=ChoiceSampler(), scorer=HashScorer())
    other.overwrite_output_dir = True
    pairs = build_pairs(other, sampler=ChoiceSampler(), scorer=HashScorer())
    assert json.loads(read_records(pairs)[0]["meta"])["seed"] != first_seed  # rebuilt with the new seed
    assert json.loads((pairs.parent / "run_config.json").read_text())["config"]["BuildPairsConfig"]["seed"] == 1


def test_config_validation_names_every_problem(tmp_path):
    with pytest.raises(ValueError) as e:
        BuildPairsConfig(prompts="p", rule="best", num_samples=1, chunk_size=0,
                         reward_model_name_or_path=str(tmp_path / "nope")).validate()  # fmt: skip
    msg = str(e.value)
    for text in ("policy_name_or_path: required", "output_dir: required", "rule='best'", "chunk_size=0",
                 "num_samples=1", f"reward_model_name_or_path: the local path '{tmp_path}/nope' does not exist"):  # fmt: skip
        assert text in msg


@pytest.mark.parametrize("name", ["build_pairs_tiny", "build_pairs_qwen2_5_vl_7b"])
def test_shipped_configs_parse(name, tmp_path):
    path = f"recipes/configs/{name}.yaml"
    assert open(path).readline().startswith("# ") and "recipes/build_pairs.py" in open(path).readline()
    (cfg,) = parse_configs([BuildPairsConfig], ["--config", path, "--prompts", "p", "--policy_name_or_path", str(tmp_path),
                                                "--reward_model_name_or_path", str(tmp_path), "--output_dir", "o"])  # fmt: skip
    cfg.validate()
    assert set(yaml.safe_load(open(path))) <= set(vars(cfg))


def test_report_to_wandb_offline(toy_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(toy_data["prompts_eval"], tmp_path / "out", max_prompts=4, report_to="wandb", run_name="t")
    pairs = build_pairs(cfg, sampler=ChoiceSampler(), scorer=HashScorer())
    runs = list((pairs.parent / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_empty_responses_never_reach_the_scorer(toy_data, tmp_path):
    class HalfEmpty(ChoiceSampler):
        def sample(self, prompt, params, seed):
            cands = super().sample(prompt, params, seed)
            cands.texts[0] = "  "
            return cands

    class Checking(HashScorer):
        def score_groups(self, groups):
            assert all(r.strip() for g in groups for r in g.responses)
            return super().score_groups(groups)

    cfg = make_cfg(toy_data["prompts_eval"], tmp_path / "out", max_prompts=8)
    pairs = build_pairs(cfg, sampler=HalfEmpty(), scorer=Checking())
    report = json.loads((pairs.parent / "report.json").read_text())
    assert report["candidates"]["dropped"] == {"empty response": 8} and report["pairs"] == 8
    assert all(r["chosen"][0]["content"][0]["text"].strip() for r in read_records(pairs))
