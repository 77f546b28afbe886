"""recipes/eval_reward.py end to end on the shipped fixtures with the tiny model (patched sys.argv, in process)."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
from PIL import Image

from common.schema import RecordError
from reward.bench import METRICS
from tests.launch import refusal

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
RECIPE = ROOT / "recipes" / "eval_reward.py"
CONFIG = ROOT / "recipes" / "configs" / "eval_reward_tiny.yaml"


def _run(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [str(RECIPE), "--config", str(CONFIG), *map(str, args)])
    runpy.run_path(str(RECIPE), run_name="__main__")


def _predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "benchmark, data, n, headline",
    [
        (
            "vl_rewardbench",
            "vl_rewardbench.jsonl",
            6,
            "| Skywork-VL-Reward-7B (paper) | 73.1 | 69.0 | 66.0 | 80.0 | 61.0 |",
        ),
        (
            "rewardbench",
            "rewardbench_dataset",
            8,
            "| Skywork-VL-Reward-7B (paper) | 90.0 | 87.5 | 91.1 | 91.8 | 90.1 | - | - |",
        ),
        ("mm_rewardbench", "mm_rewardbench.parquet", 6, "| model | overall |"),
    ],
)
def test_eval_cli_end_to_end(monkeypatch, tmp_path, tiny_reward_path, benchmark, data, n, headline):
    out = tmp_path / benchmark
    _run(monkeypatch, "--model", tiny_reward_path, "--benchmark", benchmark, "--data", FIXTURES / data,
         "--output_dir", out)  # fmt: skip
    rows = _predictions(out)
    assert len(rows) == n
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_examples"] == n and report["benchmark"] == benchmark
    # the per-example file is enough to recompute every figure
    assert report["metrics"] == json.loads(json.dumps(METRICS[benchmark](rows)))
    figures = [v for v in report["metrics"].values() if isinstance(v, float)]
    assert figures and all(0.0 <= v <= 1.0 for v in figures)
    assert headline in (out / "results.md").read_text()
    with Image.open(out / "categories.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["EvalConfig"]["benchmark"] == benchmark and meta["ScorerConfig"]["group_aware"] is True


def test_eval_cli_naive_path_gives_the_same_predictions_and_wandb_logs(monkeypatch, tmp_path, tiny_reward_path):
    args = ["--model", tiny_reward_path, "--benchmark", "vl_rewardbench", "--data", FIXTURES / "vl_rewardbench.parquet"]
    _run(monkeypatch, *args, "--output_dir", tmp_path / "shared")
    monkeypatch.setenv("WANDB_MODE", "offline")
    _run(monkeypatch, *args, "--output_dir", tmp_path / "naive", "--group_aware", "false", "--report_to", "wandb")
    shared, naive = _predictions(tmp_path / "shared"), _predictions(tmp_path / "naive")
    assert [r["id"] for r in shared] == [r["id"] for r in naive]
    assert max(abs(a - b) for s, v in zip(shared, naive) for a, b in zip(s["scores"], v["scores"])) <= 1e-4
    assert list((tmp_path / "naive" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_eval_cli_refuses_bad_config(monkeypatch, tmp_path, tiny_reward_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    message = str(refusal(lambda: _run(monkeypatch, "--model", tiny_reward_path, "--benchmark", "vlrb", "--data",
                                       tmp_path / "missing.jsonl", "--output_dir", out)))  # fmt: skip
    assert "--benchmark 'vlrb'" in message and "no such file" in message and "--overwrite_output_dir" in message


def test_eval_cli_skips_and_counts_rows_whose_image_is_missing(monkeypatch, tmp_path, tiny_reward_path):
    rows = json.loads((FIXTURES / "mm_rewardbench.json").read_text())
    rows.append({**rows[0], "ID": "hateful_memes_9", "Image": "images/not_downloaded.png"})
    (tmp_path / "images").symlink_to(FIXTURES / "images")
    data = tmp_path / "all_data.json"
    data.write_text(json.dumps(rows))
    args = ["--model", tiny_reward_path, "--benchmark", "mm_rewardbench", "--data", data]
    error = refusal(lambda: _run(monkeypatch, *args, "--output_dir", tmp_path / "strict"))
    assert isinstance(error, RecordError) and not (tmp_path / "strict").exists()  # read before the folder is made
    assert re.search(r"'hateful_memes_9' \(#6\), field 'Image\[0\]': image file not found", str(error))
    _run(monkeypatch, *args, "--output_dir", tmp_path / "out", "--on_bad_record", "skip")
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["n_examples"] == 6
    assert report["skipped"]["by_reason"] == {"Image: image file not found": 1}
    assert "1 skipped" in (tmp_path / "out" / "results.md").read_text()
