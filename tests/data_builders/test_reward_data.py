"""The reward-data job: dedup and decontamination on crafted cases, deterministic mixing, the surrogate filter on the
tiny reward model, the tiny config end to end (report counts), kill + rerun equal to an uninterrupted run, and
`train_reward_model` on the stages it writes."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from common.cli import parse_configs
from common.io import read_records
from common.run_folder import LOCK_FILE, RunFolderError
from common.schema import message_text
from data_builders.reward_data.config import BenchmarkSpec, RewardDataConfig, SourceSpec, StageSpec
from data_builders.reward_data.decontam import BenchmarkIndex
from data_builders.reward_data.dedup import DedupIndex, image_key, messages_text, pair_keys
from data_builders.reward_data.filtering import NEGATIVE_GAP, SurrogateFilter
from data_builders.reward_data.job import build_reward_data
from data_builders.reward_data.mixing import plan_stage
from data_builders.scoring import ServedRewardModel
from tests.launch import REPO, cpu_env

TINY = REPO / "recipes" / "configs" / "reward_data_tiny.yaml"
RECIPE = REPO / "recipes" / "build_reward_data.py"
BENCH = REPO / "tests" / "reward" / "fixtures"


def tiny_config(out, *overrides):
    (cfg,) = parse_configs([RewardDataConfig], ["--config", str(TINY), "--output_dir", str(out), "--progress",
                                                "false", *overrides])  # fmt: skip
    return cfg


def png(draw, fmt="PNG"):
    im = Image.new("RGB", (48, 48), "white")
    draw(ImageDraw.Draw(im))
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return buf.getvalue()


def ring(d):
    d.ellipse([6, 6, 40, 40], outline=(0, 120, 0), width=5)


def bars(d):
    d.rectangle([4, 0, 14, 47], fill=(200, 0, 0))
    d.rectangle([30, 0, 36, 47], fill=(0, 0, 200))


def keys(prompt, chosen, rejected, images=()):
    msgs = [{"role": "user", "content": prompt}]
    return pair_keys(messages_text(msgs), messages_text([{"role": "assistant", "content": chosen}]),
                     messages_text([{"role": "assistant", "content": rejected}]), [image_key(b) for b in images], 128)  # fmt: skip


def test_exact_and_near_duplicates_on_crafted_cases(tmp_path):
    ring_png, ring_jpeg, bars_png = png(ring), png(ring, "JPEG"), png(bars)
    assert ring_png != ring_jpeg and image_key(ring_png).sha != image_key(ring_jpeg).sha
    question = "Describe the green shape in the picture, including its outline and where it sits in the frame."
    index = DedupIndex(exact=True, near=True, text_threshold=0.9, image_distance=6, num_perm=128)
    index.add("a", keys(question, "A green ring in the middle.", "A red square.", [ring_png]))
    # case and whitespace differences: the same normalised text, the same pixels
    assert index.find(keys(f"  {question.upper()} ", "a green  ring in the middle.", "A red square.", [ring_png])) == (
        "exact", "a")  # fmt: skip
    # the same picture re-encoded as JPEG: other pixels, a close perceptual hash
    assert index.find(keys(question, "A green ring in the middle.", "A red square.", [ring_jpeg])) == ("near", "a")
    # one letter added (a plural): MinHash similarity of the 5-grams above 0.9
    assert index.find(keys(question.replace("picture", "pictures"), "A green ring in the middle.", "A red square.",
                           [ring_png])) == ("near", "a")  # fmt: skip
    # not duplicates: other responses, another picture, no picture
    assert index.find(keys(question, "It is a circle outline.", "Nothing is there.", [ring_png])) is None
    assert index.find(keys(question, "A green ring in the middle.", "A red square.", [bars_png])) is None
    assert index.find(keys(question, "A green ring in the middle.", "A red square.")) is None
    # near dedup off: only exact copies go; the index persists and reloads the same
    exact_only = DedupIndex(exact=True, near=False, text_threshold=0.9, image_distance=6, num_perm=128)
    exact_only.add("a", keys(question, "A green ring in the middle.", "A red square.", [ring_png]))
    assert exact_only.find(keys(question, "A green ring in the middle.", "A red square.", [ring_jpeg])) is None
    DedupIndex.save_chunk(tmp_path / "k.npz", ["a"], [keys(question, "A green ring in the middle.", "A red square.",
                                                           [ring_png])], 128)  # fmt: skip
    reloaded = DedupIndex(exact=True, near=True, text_threshold=0.9, image_distance=6, num_perm=128)
    reloaded.load_chunk(tmp_path / "k.npz")
    assert reloaded.find(keys(question, "A green ring in the middle.", "A red square.", [ring_jpeg])) == ("near", "a")


def test_benchmark_index_matches_prompt_and_image():
    index = BenchmarkIndex([BenchmarkSpec("vl_rewardbench", str(BENCH / "vl_rewardbench.jsonl")),
                            BenchmarkSpec("rewardbench", str(BENCH / "rewardbench.jsonl"))], 0.8, 6, 128)  # fmt: skip
    blue = image_key((BENCH / "images" / "blue_square.png").read_bytes()).phash
    red_jpeg = image_key(png(lambda d: None)).phash  # a blank picture: no benchmark image

    def text(q):
        return messages_text([{"role": "user", "content": q}])

    assert index.find(text("What shape is SHOWN?"), [blue]).item_id == "RLAIF-V_2"
    assert index.find(text("What shape is shown?"), [red_jpeg]) is None  # same question, another image
    assert index.find(text("What shape is shown?"), []) is None
    match = index.find(text("What is 2 + 2?"), [])  # RewardBench is text-only: the prompt alone matches
    assert (match.benchmark, match.kind) == ("rewardbench", "exact")
    assert index.find(text("What is 2 + 3?"), []) is None


def test_job_on_the_tiny_config_counts_every_step_and_removes_only_planted_items(tmp_path, reward_scorer):
    paths = build_reward_data(tiny_config(tmp_path / "out"))
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    rlaif = report["sources"]["rlaif_v"]
    assert rlaif["read"] == {
        "in": 10,
        "out": 9,
        "dropped": {"question: expected a non-empty question string, got ''": 1},
    }
    assert rlaif["validate"]["dropped"] == {"images: cannot decode image": 1}
    assert rlaif["ambiguous"]["dropped"] == {"ambiguous: chosen equals rejected (normalised)": 1}
    assert rlaif["decontaminate"] == {"in": 7, "out": 5, "dropped": {"overlaps vl_rewardbench": 2}}
    assert rlaif["exact_dedup"]["dropped"] == {"exact duplicate": 1}
    assert rlaif["near_dedup"] == {"in": 4, "out": 3, "dropped": {"near duplicate": 1}}
    assert report["sources"]["mapped"]["ambiguous"] == {"in": 2, "out": 1, "dropped": {"ambiguous: equal ratings": 1}}
    decontaminated = [json.loads(line) for line in (out / "decontaminated.jsonl").read_text().splitlines()]
    assert [(d["id"], d["item_id"]) for d in decontaminated] == [("rlaif_v/00000005", "RLAIF-V_2"),
                                                                  ("rlaif_v/00000006", "vlfeedback_0")]  # fmt: skip
    assert report["overlaps"] == {"vl_rewardbench": 2}
    # without benchmarks exactly the two planted pairs come back (stage 1 takes every multimodal pair)
    no_bench = tiny_config(tmp_path / "no_bench", "--benchmarks", "[]", "--report_to", "wandb")  # offline
    with_ids = set(read_records(paths["multimodal"])["id"])
    without_ids = set(read_records(build_reward_data(no_bench)["multimodal"])["id"])
    assert without_ids - with_ids == {"rlaif_v/00000005", "rlaif_v/00000006"} and with_ids < without_ids
    runs = list((tmp_path / "no_bench" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    # stages: stage 1 multimodal only, stage 2 adds the text-only sources; train_reward's reader takes them as they are
    stages = report["stages"]
    assert stages["multimodal"]["text_only"] == 0 and stages["multimodal"]["pairs"] == 13
    # stage 2: 5 text-only pairs, so the 13 multimodal ones are cut to 12 for a text-only share of 0.3 (5/17)
    assert (
        report["cleaned_pairs"] == 18 and stages["with_text"]["text_only"] == 5 and stages["with_text"]["pairs"] == 17
    )
    ds = read_records(paths["multimodal"])
    assert set(ds.column_names) >= {"id", "prompt", "chosen", "rejected", "images", "source", "meta", "margin"}
    assert all(len(ims) == 1 for ims in ds["images"])
    assert report["dedup_index"]["pairs"] == 18 and report["dedup_index"]["bytes_per_pair"] > 0
    assert all((out / f"hist_{h}.png").stat().st_size > 0 for h in ("prompt_words", "image_width"))
    assert "| decontaminate | 7 | 5 | overlaps vl_rewardbench: 2 |" in (out / "report.md").read_text()
    with pytest.raises(RunFolderError, match="config field seed: 0 -> 1"):  # another mix into the same folder
        build_reward_data(tiny_config(out, "--seed", "1"))
    # a filter scorer passed in code is part of the run too: unfiltered chunks must not mix with filtered ones
    with pytest.raises(RunFolderError, match=r"config field filter_scorer: 'none \(no filter\)' -> 'RewardScorer\(mo"):
        build_reward_data(tiny_config(out), scorer=reward_scorer)
    assert yaml.safe_load((out / "stages.yaml").read_text())["stages"][0] == {
        "name": "multimodal", "datasets": {str(paths["multimodal"]): 1.0}}  # fmt: skip


def test_mix_weights_caps_share_and_seed():
    sources = [SourceSpec("a", "rlaif_v", "a", weight=0.5), SourceSpec("b", "skywork", "b", max_pairs=40),
               SourceSpec("c", "rlaif_v", "c", weight=2.0)]  # fmt: skip
    positions = {"a": np.arange(0, 100), "b": np.arange(100, 150), "c": np.arange(150, 160)}
    text_only = np.arange(160) >= 100
    text_only[150:] = False
    stage = StageSpec("s", ["a", "b", "c"])
    rows, counts = plan_stage(stage, 0, sources, positions, text_only, seed=0)
    assert {n: c["taken"] for n, c in counts.items()} == {"a": 50, "b": 40, "c": 20}
    assert np.bincount(rows[rows >= 150] - 150).tolist() == [2] * 10  # weight 2: every pair twice
    assert len(set(rows[rows < 100].tolist())) == 50  # weight 0.5: a seeded half, no repeats
    again, _ = plan_stage(stage, 0, sources, positions, text_only, seed=0)
    other, _ = plan_stage(stage, 0, sources, positions, text_only, seed=1)
    assert rows.tolist() == again.tolist() and rows.tolist() != other.tolist()
    # text-only share 0.2 of a stage with 70 multimodal pairs: 17 or 18 text-only pairs (never added, only cut)
    shared, counts = plan_stage(StageSpec("s", ["a", "b", "c"], 0.2), 0, sources, positions, text_only, seed=0)
    n_text = int(text_only[shared].sum())
    assert n_text == round(0.2 * 70 / 0.8) and len(shared) - n_text == 70


@pytest.fixture(scope="module")
def reward_scorer(tiny_reward_path):
    from data_builders.scoring import make_scorer

    return make_scorer(str(tiny_reward_path), "float32", "cpu", 4, None, None)


def test_surrogate_filter_on_the_tiny_reward_model(reward_scorer, tmp_path, monkeypatch):
    base = ["--sources", json.dumps([{"name": "rlaif_v", "format": "rlaif_v", "path": str(
        REPO / "tests/data_builders/fixtures/reward_data/rlaif_v.parquet")}, {"name": "skywork", "format": "skywork",
        "path": str(REPO / "tests/data_builders/fixtures/reward_data/skywork.jsonl")}]),
        "--stages", json.dumps([{"name": "all", "sources": ["rlaif_v", "skywork"]}]), "--benchmarks", "[]"]  # fmt: skip
    flagged = read_records(build_reward_data(tiny_config(tmp_path / "flag", *base, "--filter_action", "flag"),
                                             scorer=reward_scorer)["all"])  # fmt: skip
    assert len(flagged) == 8  # rlaif_v 5 (no benchmarks given) + skywork 3
    # the stored scores are the reward model's, pair by pair (batched in the job, one group at a time here)
    from common.scoring import ScoringGroup

    for rec in flagged.select(range(3)):
        group = ScoringGroup(rec["prompt"], rec["images"], [message_text(rec["chosen"]), message_text(rec["rejected"])])
        assert reward_scorer.score_groups([group])[0] == pytest.approx([rec["chosen_score"], rec["rejected_score"]],
                                                                       abs=1e-5)  # fmt: skip
    gaps = {r["id"]: r["chosen_score"] - r["rejected_score"] for r in flagged}
    negative = {i for i, g in gaps.items() if g < 0}
    assert 0 < len(negative) < len(gaps), "the random tiny head should rank some pairs each way"
    assert {r["id"] for r in flagged if json.loads(r["meta"]).get("surrogate_flag") == NEGATIVE_GAP} == negative
    # drop with a minimum chosen score as well: what stays is exactly what passes both thresholds
    min_chosen = float(np.median([r["chosen_score"] for r in flagged]))
    dropped_cfg = tiny_config(tmp_path / "drop", *base, "--filter_min_chosen_score", str(min_chosen))
    kept = read_records(build_reward_data(dropped_cfg, scorer=reward_scorer)["all"])
    expected = {r["id"] for r in flagged if r["chosen_score"] >= min_chosen and gaps[r["id"]] >= 0}
    assert set(kept["id"]) == expected
    # the dedup keys kept for a resume are those of every pair the index took, the filter's drops included
    indexed = []
    for path in sorted((tmp_path / "drop" / "chunks").glob("*.keys.npz")):
        with np.load(path) as z:
            assert len(z["ids"]) == len(z["text_hash"]) == len(z["exact"])
            indexed += z["ids"].tolist()
    assert sorted(indexed) == sorted(flagged["id"]) and len(indexed) > len(kept)
    with pytest.raises(RunFolderError, match=r"filter_scorer: 'RewardScorer\(model=.*tiny.*' -> 'none \(no filter\)'"):
        build_reward_data(tiny_config(tmp_path / "flag", *base, "--filter_action", "flag"))
    # reward_url: the filter scores through the reward server's client, built from the URLs
    calls = []

    def remote(urls, batch_size):
        calls.append((urls, batch_size))
        return reward_scorer  # stands in for the server's client (tests/reward/test_integrations.py tests that one)

    monkeypatch.setattr("data_builders.scoring.make_remote_scorer", remote)
    # what the servers' /info would report (tests/data_builders/test_served_identity.py asks live servers)
    served = ServedRewardModel("sha256:" + "0" * 64, "float32")
    monkeypatch.setattr(ServedRewardModel, "of", classmethod(lambda cls, urls: served))
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    remote_cfg = tiny_config(tmp_path / "remote", *base, "--filter_action", "flag", "--reward_url", *urls)
    by_url = read_records(build_reward_data(remote_cfg)["all"])
    assert calls == [(urls, 8)]
    assert by_url["chosen_score"] == flagged["chosen_score"] and by_url["meta"] == flagged["meta"]
    with pytest.raises(RunFolderError, match=r"filter_scorer: 'reward server: sha256:0+ \(float32\)' -> 'none"):
        build_reward_data(tiny_config(tmp_path / "remote", *base, "--filter_action", "flag"))
    weak = SurrogateFilter(reward_scorer, min_chosen_score=None, min_gap=0.5)
    assert weak.reason(1.0, 0.8) == "surrogate: gap < 0.5" and weak.reason(1.0, 2.0) == NEGATIVE_GAP


def test_shipped_paper_config_parses_and_only_misses_the_data():
    (cfg,) = parse_configs([RewardDataConfig], ["--config", str(REPO / "recipes/configs/reward_data_skywork.yaml")])
    sources, stages, benchmarks, problems = cfg.specs()
    assert [s.name for s in stages] == ["multimodal", "with_text"] and len(benchmarks) == 3
    assert set(stages[1].sources) - set(stages[0].sources) == {"skywork"}  # stage 2 adds the text-only pairs
    # hub ids not in the local cache: each problem says which command downloads the snapshot
    hub = [p for p in problems if p.startswith("sources[") and "huggingface-cli download --repo-type dataset" in p]
    assert {p.split("]")[0] for p in hub} == {"sources[llava_critic", "sources[rlaif_v", "sources[skywork"}
    assert all("does not exist" in p for p in problems if p not in hub)


def test_bad_config_lists_every_problem(tmp_path):
    cfg = RewardDataConfig(sources=[{"name": "x", "format": "nope", "path": str(tmp_path / "missing")}, {"name": "x"}],
                           stages='[{"name": "s", "sources": ["y"], "text_only_share": 1.5}]',
                           benchmarks=[{"name": "mmlu", "path": str(tmp_path)}])  # fmt: skip
    with pytest.raises(ValueError) as err:
        cfg.validate()
    for needle in ("format='nope'", "missing' does not exist", "sources[1]: format is required", "unknown source 'y'",
                   "text_only_share=1.5", "unknown benchmark 'mmlu'", "output_dir: required"):  # fmt: skip
        assert needle in str(err.value), needle


def tree_digest(out: Path) -> dict[str, str]:
    """sha256 of every file the job leaves but run_meta.json, run_config.json (they record the settings, run-only
    ones such as num_proc and output_dir included) and the run's lock (its holder's PID); in stages.yaml/json the
    output_dir is replaced first."""
    digest = {}
    for p in sorted(p for p in out.rglob("*") if p.is_file() and p.name not in ("run_meta.json", "run_config.json",
                                                                                LOCK_FILE)):  # fmt: skip
        data = p.read_bytes()
        if p.name in ("stages.yaml", "stages.json"):
            data = data.replace(str(out).encode(), b"<out>")
        digest[str(p.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return digest


def test_kill_and_rerun_gives_identical_output(tmp_path):
    reference = tmp_path / "reference"
    build_reward_data(tiny_config(reference, "--chunk_size", "2", "--num_proc", "2"))
    out = tmp_path / "out"
    args = [sys.executable, str(RECIPE), "--config", str(TINY), "--output_dir", str(out), "--chunk_size", "2",
            "--progress", "false"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, env=cpu_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while len(list((out / "chunks").glob("chunk-*.json"))) < 3 if (out / "chunks").exists() else True:
            assert proc.poll() is None and time.time() < deadline, "the run ended or hung before 3 chunks"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "stages").exists() and len(list((out / "chunks").glob("chunk-*.json"))) < 17
    subprocess.run(args, cwd=REPO, env=cpu_env(1), check=True, capture_output=True)
    assert tree_digest(out) == tree_digest(reference)


def test_train_reward_trains_on_the_stages_the_job_wrote(tiny_vlm_path, tmp_path):
    from reward.config import RewardConfig
    from reward.train import SUMMARY_FILE, train_reward_model

    build_reward_data(tiny_config(tmp_path / "data"))
    stages = yaml.safe_load((tmp_path / "data" / "stages.yaml").read_text())["stages"]
    stages = [{**s, "max_steps": 2} for s in stages]
    cfg = RewardConfig(output_dir=str(tmp_path / "run"), model_name_or_path=str(tiny_vlm_path), stages=stages,
                       use_cpu=True, report_to="none", learning_rate=1e-3, per_device_train_batch_size=2,
                       max_length=512, save_steps=100, logging_steps=1, seed=0)  # fmt: skip
    export = train_reward_model(cfg)
    assert export == tmp_path / "run" / "with_text" / "model"
    for name, n_pairs in (("multimodal", 13), ("with_text", 17)):
        summary = json.loads((tmp_path / "run" / name / "model" / SUMMARY_FILE).read_text())
        assert summary["n_train_pairs"] == n_pairs and summary["skipped"]["total"] == 0
        assert summary["metrics"]["global_step"] == 2 and np.isfinite(summary["metrics"]["train_loss"])
