"""recipes/eval_policy.py: a scripted answerer's per-category accuracies equal the hand counts; the tiny model end to
end from the hub-layout fixtures (patched sys.argv, in process)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_builders.sampling import Candidates, HFSampler
from policy_eval import BENCHMARKS, breakdown, read_benchmark
from policy_eval.evaluate import EvalPolicyConfig, evaluate_policy
from tests.policy_eval.hub_fixtures import EXPECTED, SCRIPTS

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "eval_policy.py"
CONFIG = ROOT / "recipes" / "configs" / "eval_policy_tiny.yaml"
NAMES = ["mmstar", "mmmu_val", "mathvista_testmini", "ai2d"]


class ScriptedAnswerer:
    """Answers each question with the response the fixture table scripts for its id."""

    def __init__(self):
        self.script = {qid: text for script in SCRIPTS.values() for qid, text in script.items()}

    def greedy(self, prompts, max_new_tokens):
        return [Candidates([self.script[p["id"]]], [len(self.script[p["id"]].split())]) for p in prompts]


def _data(hub_data) -> list[str]:
    return [f"{name}={hub_data[name]}" for name in NAMES]


def _predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_scripted_answers_give_the_hand_counted_accuracies(hub_data, tiny_vlm_path, tmp_path):
    cfg = EvalPolicyConfig(model=str(tiny_vlm_path), benchmarks=",".join(NAMES), data=_data(hub_data),
                           output_dir=str(tmp_path / "scripted"))  # fmt: skip
    report = evaluate_policy(cfg, answerer=ScriptedAnswerer())
    for name, expected in EXPECTED.items():
        got = report["benchmarks"][name]
        assert got["overall"] == pytest.approx(expected["overall"]), name
        for key, values in expected.items():
            if key != "overall":
                assert {v: c["accuracy"] for v, c in got["by"][key].items()} == pytest.approx(values), (name, key)
    rows = {row["id"]: row for row in _predictions(tmp_path / "scripted")}
    assert len(rows) == 21
    assert rows["mathvista-3"]["extracted"] == "1.45" and rows["mathvista-3"]["correct"] is True
    assert rows["mmstar-5"]["extracted"] == "B" and rows["mmstar-5"]["correct"] is False
    assert rows["mmstar-3"]["extracted"] is None  # "I cannot tell.": nothing read, wrong
    results = (tmp_path / "scripted" / "results.md").read_text()
    assert "| mmmu_val | 80.0 | 4 / 5 | 0 |" in results and "| Science | 50.0 | 1 / 2 |" in results
    assert "no GPT extraction" in results


def test_tiny_model_end_to_end_from_the_hub_layouts(hub_data, tiny_vlm_path, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(sys, "argv", [str(RECIPE), "--config", str(CONFIG), "--model", str(tiny_vlm_path),
                                      "--benchmarks", ",".join(NAMES), "--data", *_data(hub_data),
                                      "--output_dir", str(out), "--report_to", "wandb"])  # fmt: skip
    runpy.run_path(str(RECIPE), run_name="__main__")
    rows = _predictions(out)
    assert [sum(r["benchmark"] == n for r in rows) for n in NAMES] == [6, 5, 6, 4]
    assert all(r["num_tokens"] >= 1 and isinstance(r["correct"], bool) for r in rows)
    report = json.loads((out / "metrics.json").read_text())
    for name in NAMES:  # every figure can be recomputed from predictions.jsonl
        mine = [r for r in rows if r["benchmark"] == name]
        assert report["benchmarks"][name] == json.loads(json.dumps(breakdown(mine, BENCHMARKS[name].BREAKDOWN)))
    # the answers are the shared-prefill greedy answers of the model (max_new_tokens 16 in the tiny YAML)
    sampler = HFSampler(str(tiny_vlm_path), device="cpu", max_pixels=50176)
    first = read_benchmark("mmmu_val", hub_data["mmmu_val"])[2]  # validation_Art_1: two images, in mention order
    assert (
        next(r for r in rows if r["id"] == first.record["id"])["response"]
        == sampler.greedy([first.record], 16)[0].texts[0]
    )
    with Image.open(out / "categories.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["n_items"] == {"mmstar": 6, "mmmu_val": 5, "mathvista_testmini": 6, "ai2d": 4}


def test_bad_configs_are_refused_with_every_problem(tmp_path, tiny_vlm_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.json").write_text("{}")
    cfg = EvalPolicyConfig(model=str(tmp_path / "no-model"), benchmarks="mmstar,mmbench",
                           data=["ai2d=x", "mmstar"], output_dir=str(tmp_path / "done"), backend="sglang")  # fmt: skip
    with pytest.raises(ValueError) as err:
        cfg.validate()
    for problem in ("model: the local path", "unknown 'mmbench'", "'ai2d' is not among --benchmarks",
                    "'mmstar': expected NAME=PATH", "already holds a report", "--backend 'sglang'"):  # fmt: skip
        assert problem in str(err.value)
