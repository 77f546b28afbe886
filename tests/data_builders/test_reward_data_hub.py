"""The reward-data job on the public sets as their hub snapshots lay them out (fixtures/reward_data/hub_layouts.py,
built in a Hugging Face cache folder at test time and named by hub id), and nothing silent: a source that yields no
pair or mostly skips, an unreadable or wrong-format file, a format whose columns do not match."""

import hashlib
import json
import warnings
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from common.io import read_records
from data_builders.reward_data.config import RewardDataConfig
from data_builders.reward_data.job import build_reward_data
from data_builders.reward_data.mixing import RepeatGroup, apply_repeats, repeat_plan
from data_builders.reward_data.readers import SourceError, iter_source_rows
from tests.data_builders.fixtures.reward_data.hub_layouts import EXPECTED, REPOS, SHA, snapshot_dir, write_hub_cache

HUB_SOURCES = [
    {"name": "vlfeedback", "format": "vlfeedback", "path": REPOS["vlfeedback"], "data_files": "data"},
    {"name": "llava_critic", "format": "llava_critic", "path": REPOS["llava_critic"], "subset": "pairwise"},
    {"name": "llava_critic_pointwise", "format": "llava_critic", "path": REPOS["llava_critic"], "subset": "pointwise",
     "allow_empty": True},
    {"name": "rlaif_v", "format": "rlaif_v", "path": REPOS["rlaif_v"]},
    {"name": "skywork", "format": "skywork", "path": REPOS["skywork"], "revision": SHA},
    {"name": "mmpr", "format": "mmpr", "path": REPOS["mmpr"], "data_files": "meta.json"},
]  # fmt: skip


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The fixture snapshots in a fresh HF cache that `huggingface_hub` reads (its cache constant, read per call)."""
    cache = tmp_path / "hf-cache"
    snapshots = write_hub_cache(cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshots


def config(out, sources, **kw):
    stages = [{"name": "all", "sources": [s["name"] for s in sources]}]
    return RewardDataConfig(sources=sources, stages=stages, benchmarks=[], output_dir=str(out), progress=False,
                            chunk_size=4, **kw)  # fmt: skip


def counts(report, name):
    """(rows read, pairs, skips by reason) of one source in the job's report."""
    steps = report["sources"][name]
    skips = {r: n for step in ("read", "validate", "images") for r, n in steps[step]["dropped"].items()}
    pairs = steps["validate"]["out"] - sum(steps["images"]["dropped"].values())
    return steps["read"]["in"], pairs, skips


def test_every_set_by_hub_id_gives_the_hand_counted_pairs(hub_cache, tmp_path):
    with pytest.warns(UserWarning, match=r"entry 'chart' has data_augment: true"):
        paths = build_reward_data(config(tmp_path / "out", HUB_SOURCES))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for name, expected in EXPECTED.items():
        assert counts(report, name) == expected, name
    # MMPR's repeat_time weighs its entries after cleaning: no copy reaches dedup; geo's 4 pairs x 1.5 (rows 1 and 2
    # twice), chart's 2 x 0.5 (row 0)
    assert report["sources"]["mmpr"]["exact_dedup"]["dropped"] == {}
    assert report["repeat_time"]["mmpr"] == {"geo": {"repeat_time": 1.5, "cleaned": 4, "pairs": 6},
                                             "chart": {"repeat_time": 0.5, "cleaned": 2, "pairs": 1}}  # fmt: skip
    assert report["skip_examples"]["vlfeedback"]["completions: fewer than two completions"] == [
        "record 'vlfeedback/00000003', field 'completions': fewer than two completions"]  # fmt: skip
    ds = read_records(paths["all"])
    by_id = {r["id"]: r for r in ds}
    # VLFeedback: best vs worst by mean rating; the image is the row's embedded one
    vlf = json.loads(by_id["vlfeedback/00000000"]["meta"])
    assert (vlf["chosen_model"], vlf["rejected_model"], vlf["chosen_rating"]) == ("a", "c", 5.0)
    assert by_id["vlfeedback/00000000"]["chosen"][0]["content"][0]["text"] == "One bar."
    # LLaVA-Critic: [first] keeps the order, [second] and [2] swap it; the bracket inside an answer stays
    critic = {k: (by_id[f"llava_critic/0000000{k}"]["chosen"][0]["content"][0]["text"],
                  by_id[f"llava_critic/0000000{k}"]["rejected"][0]["content"][0]["text"]) for k in (0, 1, 2, 4)}  # fmt: skip
    assert critic == {0: ("Blue and red [mostly blue].", "Green."), 1: ("Spread left to right.", "Nowhere."),
                      2: ("Yes, all of them.", "No."), 4: ("Three bars.", "Two.")}  # fmt: skip
    question = by_id["llava_critic/00000000"]["prompt"][0]["content"]
    assert [p["type"] for p in question] == ["image", "text"] and question[1]["text"] == "What colour are the bars?"
    mmpr_ids = sorted(r["id"] for r in ds if r["source"] == "mmpr")
    assert mmpr_ids == [f"mmpr/0000000{k}" for k in (0, 1, 1, 2, 2, 3, 4)]
    assert len(ds) == 3 + 4 + 3 + 3 + 7


def test_repeat_time_repeats_the_integer_part_and_samples_the_fraction_by_seed():
    assert repeat_plan(4, 1.5, 0, "mmpr/geo") == (1, [1, 2])  # the fixture's copies (hand-checked above)
    assert repeat_plan(10, 2.0, 0, "x") == (2, [])
    whole, sampled = repeat_plan(100, 0.25, 7, "x")
    assert whole == 0 and len(sampled) == 25 and sampled == sorted(set(sampled))
    assert repeat_plan(100, 0.25, 7, "x") == (whole, sampled) and repeat_plan(100, 0.25, 8, "x") != (whole, sampled)


def test_apply_repeats_expands_each_group_and_leaves_other_rows_once():
    groups = [RepeatGroup("a", None, 1.0), RepeatGroup("b", None, 1.0), RepeatGroup("a", "x", 2.5),
              RepeatGroup("b", "none", 0.0)]  # fmt: skip
    positions, report = apply_repeats(groups, np.array([0, 2, 2, 1, 2, 2, 3]), seed=3)
    x = [1, 2, 4, 5]
    _, sampled = repeat_plan(4, 2.5, 3, "a/x")
    assert len(sampled) == 2 and positions["a"].tolist() == sorted([0] + x * 2 + [x[i] for i in sampled])
    assert positions["b"].tolist() == [3]  # repeat_time 0: row 6 is cleaned but never taken
    assert report == {"a": {"x": {"repeat_time": 2.5, "cleaned": 4, "pairs": 10}},
                      "b": {"none": {"repeat_time": 0.0, "cleaned": 1, "pairs": 0}}}  # fmt: skip


def _mmpr_text_rows(folder: Path, entries: dict[str, tuple[float, int]]) -> Path:
    """An MMPR `meta.json` of text-only entries {name: (repeat_time, rows)}, rows far from each other (no dedup)."""
    meta = {}
    for name, (repeat, n) in entries.items():
        words = [[hashlib.sha256(f"{name}/{k}/{j}".encode()).hexdigest()[:7] for j in range(9)] for k in range(n)]
        rows = [{"question": " ".join(w[:5]) + "?", "chosen": " ".join(w[5:7]), "rejected": " ".join(w[7:])}
                for w in words]  # fmt: skip
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        meta[name] = {"root": ".", "annotation": f"{name}.jsonl", "repeat_time": repeat, "length": n}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "meta.json"


def test_repeat_time_weighs_each_entry_after_dedup_and_samples_the_fraction_by_seed(tmp_path):
    meta = _mmpr_text_rows(tmp_path, {"twice": (2, 4), "half": (0.5, 10), "once": (1, 3)})
    source = [{"name": "mmpr", "format": "mmpr", "path": str(meta)}]

    def stage_ids(out, seed):
        paths = build_reward_data(config(out, source, seed=seed))  # default exact_dedup / near_dedup
        rows = read_records(paths["all"])
        by_entry = {}
        for r in rows:
            by_entry.setdefault(json.loads(r["meta"])["origin"], []).append(r["id"])
        return by_entry, json.loads((out / "report.json").read_text())

    by_entry, report = stage_ids(tmp_path / "s0", 0)
    # each distinct row is cleaned once: no repeat copy is read, none is counted as a duplicate
    steps = report["sources"]["mmpr"]
    assert steps["read"]["in"] == 17 and steps["exact_dedup"]["dropped"] == {} and steps["near_dedup"]["out"] == 17
    assert report["cleaned_pairs"] == 17
    # repeat_time 2: every row of the entry twice; 1: once; 0.5: a seeded half of its 10 rows, each once
    assert sorted(by_entry["twice"]) == sorted([f"mmpr/{k:08d}" for k in range(4)] * 2)
    assert sorted(by_entry["once"]) == [f"mmpr/{k:08d}" for k in range(14, 17)]
    half = sorted(by_entry["half"])
    assert len(half) == 5 and len(set(half)) == 5 and set(half) <= {f"mmpr/{k:08d}" for k in range(4, 14)}
    # the repeats are reported apart from duplicates, per entry
    assert report["repeat_time"]["mmpr"] == {
        "half": {"repeat_time": 0.5, "cleaned": 10, "pairs": 5},
        "once": {"repeat_time": 1.0, "cleaned": 3, "pairs": 3},
        "twice": {"repeat_time": 2.0, "cleaned": 4, "pairs": 8},
    }
    assert report["stages"]["all"]["sources"]["mmpr"]["taken"] == 8 + 5 + 3
    # the same half with the same seed (a fresh run), another half with another seed
    assert sorted(stage_ids(tmp_path / "s0-again", 0)[0]["half"]) == half
    assert sorted(stage_ids(tmp_path / "s1", 1)[0]["half"]) != half


def test_missing_snapshot_or_file_in_it_says_how_to_download(hub_cache, tmp_path):
    sources = [{"name": "rv", "format": "rlaif_v", "path": "openbmb/Not-Downloaded"},
               {"name": "old", "format": "rlaif_v", "path": REPOS["rlaif_v"], "revision": "v0.1"},
               {"name": "sub", "format": "llava_critic", "path": REPOS["llava_critic"], "subset": "pairwize"},
               {"name": "local", "format": "rlaif_v", "path": str(tmp_path), "subset": "x"}]  # fmt: skip
    with pytest.raises(ValueError) as err:
        config(tmp_path / "out", sources).validate()
    message = str(err.value)
    assert ("sources[rv].path: 'openbmb/Not-Downloaded' is neither a local path nor a dataset in the local Hugging "
            "Face cache (LocalEntryNotFoundError); download it with: huggingface-cli download --repo-type dataset "
            "openbmb/Not-Downloaded") in message  # fmt: skip
    assert "at revision 'v0.1'" in message and "--revision v0.1" in message
    assert ("sources[sub].data_files: 'pairwize' is not in the snapshot of lmms-lab/llava-critic-113k") in message
    assert "sources[local]: subset apply to a hub id only" in message
    # a revision that is in the cache resolves (a commit sha, as `refs/main` names it)
    config(tmp_path / "ok", [HUB_SOURCES[4]]).validate()


def test_a_source_yielding_no_pair_fails_naming_it_the_reason_and_rows(hub_cache, tmp_path):
    pointwise = {**HUB_SOURCES[2], "allow_empty": False}
    with pytest.raises(ValueError) as err:
        build_reward_data(config(tmp_path / "out", [HUB_SOURCES[3], pointwise]))
    message = str(err.value)
    assert "sources[llava_critic_pointwise]: 0 pairs from 2 rows" in message
    assert ("conversations: a pointwise judgement (one response): no pair: 2 of 2; e.g. record "
            "'llava_critic_pointwise/00000000', field 'conversations': a pointwise judgement") in message  # fmt: skip
    assert "set allow_empty: true on the source" in message and "rlaif_v" not in message
    # allow_empty: the rerun into the same folder resumes (the key is no part of the run's identity) and finishes
    assert len(read_records(build_reward_data(config(tmp_path / "out", [HUB_SOURCES[3], HUB_SOURCES[2]]))["all"])) == 3


def test_a_build_keeping_no_pair_ends_with_the_sources_message_not_a_traceback(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "chosen": "a"}\n' * 4)
    sources = [{"name": "empty", "format": "rlaif_v", "path": str(empty)},
               {"name": "broken", "format": "rlaif_v", "path": str(broken)}]  # fmt: skip
    with (pytest.raises(ValueError) as err,
          pytest.warns(UserWarning, match=r"broken.jsonl: columns question, chosen, rejected expected; found question, "
                                          r"chosen$")):  # fmt: skip
        build_reward_data(config(tmp_path / "out", sources))
    message = str(err.value)
    assert "sources[empty]: 0 pairs from 0 rows" in message and "no row read" in message
    assert (
        "sources[broken]: 0 pairs from 4 rows" in message
        and "rejected: expected a string, got NoneType: 4 of 4" in message
    )
    assert "Keys mismatch" not in message
    # every source allowed to be empty: still no stage to train on, which is said as such
    allowed = [{**s, "allow_empty": True} for s in sources]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"stages\[all\]: no pair kept from its sources \['empty', 'broken'\] \(pairs "
                                         r"kept per source: empty: 0, broken: 0"):  # fmt: skip
        build_reward_data(config(tmp_path / "allowed", allowed))


def test_skips_for_one_reason_above_the_fraction_fail_unless_the_source_allows_them(tmp_path):
    rows = [{"question": "q?", "chosen": f"yes {k}", "rejected": f"no {k}"} for k in range(4)]
    rows += [{"question": "", "chosen": "a", "rejected": "b"}] * 5  # 5 of 9 rows: 56% > 50%
    path = tmp_path / "rv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "rv", "format": "rlaif_v", "path": str(path)}
    with pytest.raises(ValueError, match=r"sources\[rv\]: 5 of 9 \(56%\) skipped for 'question: expected a non-empty "
                                         r"question string, got ''', above max_skip_fraction 0.5; e.g. record "
                                         r"'rv/00000004'.* \| .*'rv/00000005'.* \| .*'rv/00000006'"):  # fmt: skip
        build_reward_data(config(tmp_path / "out", [source]))
    assert len(read_records(build_reward_data(config(tmp_path / "out", [{**source, "max_skip_fraction": 0.6}]))[
        "all"])) == 4  # fmt: skip
    assert len(read_records(build_reward_data(config(tmp_path / "job", [source], max_skip_fraction=0.6))["all"])) == 4


def test_unreadable_or_wrong_format_files_name_the_source_and_path(hub_cache, tmp_path):
    empty = tmp_path / "train-00000-of-00001.parquet"
    empty.write_bytes(b"")
    source = {"name": "vlfeedback", "format": "vlfeedback", "path": str(empty)}
    with pytest.raises(ValueError, match=rf"sources\[vlfeedback\].path: {empty}: not a Parquet file \(0 bytes\)"):
        build_reward_data(config(tmp_path / "a", [source]))
    text = tmp_path / "shard.parquet"
    text.write_text("id,prompt\n1,hi\n")
    with pytest.raises(SourceError, match=r"sources\[x\].path: .*shard.parquet: not a Parquet file \(it starts"):
        list(iter_source_rows("rlaif_v", text, where="sources[x].path"))
    shard = hub_cache["rlaif_v"] / "RLAIF-V-Dataset_000.parquet"
    with pytest.raises(SourceError, match=r"sources\[m\].path: .*RLAIF-V-Dataset_000.parquet: the mmpr format reads "
                                          r"MMPR's meta.json .* not a .parquet"):  # fmt: skip
        list(iter_source_rows("mmpr", shard, where="sources[m].path"))
    binary = tmp_path / "rows.jsonl"
    binary.write_bytes(b"\xff\xfe\x00bad")
    folder = tmp_path / "data"  # a hub-like folder of shards, one of them truncated to nothing
    folder.mkdir()
    (folder / "train-00000-of-00001.parquet").write_bytes(b"")
    with pytest.raises(SourceError, match=r"sources\[f\].path: .*data: train-00000-of-00001.parquet: not a Parquet "
                                          r"file \(0 bytes\)"):  # fmt: skip
        list(iter_source_rows("rlaif_v", folder, where="sources[f].path"))
    with pytest.raises(
        SourceError, match=r"sources\[b\].path: .*rows.jsonl: cannot be read as a table \(UnicodeDecode"
    ):
        list(iter_source_rows("rlaif_v", binary, where="sources[b].path"))


def test_columns_of_another_format_warn_with_a_guess(hub_cache):
    with pytest.warns(UserWarning, match=r"sources\[rlaif_v\].path: .*: columns question, chosen, rejected expected; "
                                         r"found id, prompt, models, completions, image: is this format vlfeedback\?"):  # fmt: skip
        rows = list(iter_source_rows("rlaif_v", hub_cache["vlfeedback"] / "data", where="sources[rlaif_v].path"))
    assert len(rows) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right format: no warning
        list(iter_source_rows("vlfeedback", hub_cache["vlfeedback"] / "data", where="sources[vlfeedback].path"))


def test_snapshot_dir_is_the_cache_layout_huggingface_hub_reads(tmp_path, monkeypatch):
    from huggingface_hub import snapshot_download

    folder = snapshot_dir(tmp_path, "owner/name")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert Path(snapshot_download("owner/name", repo_type="dataset", local_files_only=True)) == folder
