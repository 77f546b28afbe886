"""verl end to end against a live reward server, on Parquet written by `recipes/prepare_verl_data.py`.

The calls are verl's (volcengine/verl v0.9.1 and main@b178a3c): `RLHFDataset.__getitem__` pops `images` and keeps
`extra_info`; the `naive` manager calls `compute_score(data_source=, solution_str=, ground_truth=, extra_info=)` with
`num_turns` / `rollout_reward_scores` added to `extra_info`; the `batch` manager calls `compute_score(data_sources=,
solution_strs=, ground_truths=, extra_infos=)` with numpy object arrays; `get_custom_reward_fn` merges
`custom_reward_function.reward_kwargs` into every call. The tests without verl reproduce those calls from its source;
`test_with_verls_own_dataset_and_reward_managers` runs verl's own code and is skipped where verl is not importable.
verl does not install into the project's environment (its pins clash); to run it, make a test-only venv on top of it:

    python -m venv /tmp/verl-venv && echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/verl-venv/lib/python3.11/site-packages/project.pth
    /tmp/verl-venv/bin/pip install --no-deps verl==0.9.1 ray tensordict omegaconf antlr4-python3-runtime codetiming \\
        jsonschema attrs referencing rpds-py jsonschema-specifications pyvers cloudpickle aiohttp aiohappyeyeballs \\
        aiosignal frozenlist multidict yarl propcache orjson
    /tmp/verl-venv/bin/python -m pytest -q tests/reward/test_verl.py
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import io
import json
import logging
import os
import re
import subprocess
import sys
from functools import partial

import datasets
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.io import SkipLog, read_records, write_records
from common.schema import RecordError
from common.scoring import ScoringGroup
from reward.client import RewardServerError
from reward.integrations import verl
from reward.integrations.verl_data import VerlDataConfig, prepare_verl_data, write_verl_parquet
from reward.scorer import RewardScorer
from reward.serving.process import server_process
from tests.launch import REPO, cpu_env

TOL = 1e-5
RESPONSES = ("It is red.", "The answer is nine.", "A circle.")


@pytest.fixture(scope="module")
def local(tiny_reward_path):
    return RewardScorer.from_pretrained(str(tiny_reward_path), device="cpu", progress=False)


@pytest.fixture(scope="module")
def url(tiny_reward_path):
    with server_process(tiny_reward_path, "--device", "cpu", "--max_wait_ms", "20") as (_, base):
        yield base


@pytest.fixture(scope="module")
def prompts(toy_data):
    """Six toy prompts: image questions of three kinds and text-only sums."""
    return read_records(toy_data["prompts_eval"], kind="prompt").select(range(6))


@pytest.fixture(scope="module")
def parquet(toy_data, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("verl") / "train.parquet"
    cfg = VerlDataConfig(prompts=str(toy_data["prompts_eval"]), output=str(out), data_source="toy", max_prompts=6)
    n, skipped = prepare_verl_data(cfg)
    assert n == len(prompts) and skipped.total == 0
    return out


def verl_rows(parquet) -> list[dict]:
    """The rows as RLHFDataset hands them on: `load_dataset("parquet")`, then `images` popped."""
    rows = []
    for row in datasets.load_dataset("parquet", data_files=str(parquet))["train"]:
        row.pop("images")
        rows.append(row)
    return rows


def local_scores(local, prompts, responses) -> list[list[float]]:
    groups = [ScoringGroup(list(p["prompt"]), list(p["images"]), list(responses)) for p in prompts]
    return local.score_groups(groups)


def test_helper_writes_verls_geo3k_layout(parquet, prompts):
    """Columns and Arrow types of examples/data_preprocess/geo3k.py's output, the images where verl looks for them."""
    schema = pq.read_schema(parquet)
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert schema.names == ["data_source", "prompt", "images", "ability", "reward_model", "extra_info"]
    assert schema.field("prompt").type == messages
    assert schema.field("images").type == pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    assert schema.field("reward_model").type == pa.struct([("style", pa.string()), ("ground_truth", pa.string())])
    extra = schema.field("extra_info").type
    assert [extra.field(i).name for i in range(extra.num_fields)] == ["split", "index", "id", "answer", "question",
                                                                      "prompt", "images"]  # fmt: skip
    assert extra.field("index").type == pa.int64() and extra.field("images").type == pa.list_(pa.binary())
    ds = datasets.load_dataset("parquet", data_files=str(parquet))["train"]
    assert isinstance(ds.features["images"], datasets.List) and isinstance(
        ds.features["images"].feature, datasets.Image
    )
    for index, (row, record) in enumerate(zip(ds, prompts)):
        user = row["prompt"][-1]["content"]
        n_images = len(record["images"])
        assert user.count("<image>") == len(row["images"]) == len(row["extra_info"]["images"]) == n_images
        assert row["extra_info"] | {"images": None} == {
            "split": "train", "index": index, "id": record["id"], "answer": record["answer"], "question": user,
            "prompt": row["prompt"], "images": None}  # fmt: skip
        assert row["reward_model"] == {"style": "model", "ground_truth": record["answer"]}
        for im, data, ours in zip(row["images"], row["extra_info"]["images"], record["images"]):  # the same pixels
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(ours.convert("RGB")))
            assert Image.open(io.BytesIO(data)).tobytes() == im.tobytes()
        # RLHFDataset._build_messages splits the string on the placeholders: text and images come back in order
        pieces = [p for p in re.split("(<image>|<video>|<audio>)", user) if p]
        ours = [p.get("text") or "<image>" for p in record["prompt"][-1]["content"]]
        assert pieces == ours


def test_helper_refuses_a_text_verl_would_take_for_an_image(prompts, tmp_path):
    bad = dict(prompts[0], id="literal-tag", prompt=[{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Is <video> a tag?"}]}])  # fmt: skip
    skipped = SkipLog()
    n = write_verl_parquet([prompts[1], bad], tmp_path / "x.parquet", "toy", on_bad_record="skip", skipped=skipped)
    assert n == 1 and skipped.counts == {"prompt: text contains a verl placeholder": 1}
    with pytest.raises(RecordError, match=r"'literal-tag' \(#0\), field 'prompt\[0\].content\[1\]'.*'<video>'"):
        write_verl_parquet([bad], tmp_path / "y.parquet", "toy")
    assert not (tmp_path / "y.parquet").exists() and not list(tmp_path.glob(".y.parquet*"))


def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    """verl/trainer/ppo/reward.py: reward_kwargs merged into every call (and win)."""
    return raw_fn(*args, **{**kwargs, **extra_kwargs})


def load_like_verl(path):
    """verl/utils/import_utils.py `load_module` for a file path: a module object that is not in `sys.modules`."""
    spec = importlib.util.spec_from_file_location(f"custom_module_{hash(os.path.abspath(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_manager_call_scores_like_the_local_model(parquet, prompts, url, local):
    module = load_like_verl(verl.__file__)  # custom_reward_function.path=reward/integrations/verl.py
    compute_score = partial(_call_with_kwargs, module.compute_score, {"reward_url": url})
    want = local_scores(local, prompts, RESPONSES)
    for row, group_scores in zip(verl_rows(parquet), want):
        for response, expected in zip(RESPONSES, group_scores):
            extra_info = copy.deepcopy(row["extra_info"])
            extra_info["num_turns"], extra_info["rollout_reward_scores"] = None, {}  # what naive.py adds
            got = compute_score(data_source=row["data_source"], solution_str=response,
                                ground_truth=row["reward_model"]["ground_truth"], extra_info=extra_info)  # fmt: skip
            assert isinstance(got, float) and got == pytest.approx(expected, abs=TOL)


def _score_groups_requests(url) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    found = re.search(r'reward_requests_total\{endpoint="score_groups",status="200"\} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


def test_batch_manager_call_sends_one_request_and_scores_like_the_local_model(parquet, prompts, url, local):
    rows = verl_rows(parquet)
    n = len(RESPONSES)  # rollout.n: verl repeats each prompt's row n times, interleaved
    extra_infos = np.array([row["extra_info"] for row in rows for _ in range(n)], dtype=object)
    data_sources = np.array([row["data_source"] for row in rows for _ in range(n)], dtype=object)
    ground_truths = [row["reward_model"]["ground_truth"] for row in rows for _ in range(n)]
    solution_strs = [r for _ in rows for r in RESPONSES]
    before = _score_groups_requests(url)
    got = verl.compute_score_batch(data_sources=data_sources, solution_strs=solution_strs, ground_truths=ground_truths,
                                   extra_infos=extra_infos, reward_url=url)  # fmt: skip
    assert _score_groups_requests(url) - before == 1
    want = [s for g in local_scores(local, prompts, RESPONSES) for s in g]
    assert got == pytest.approx(want, abs=TOL) and all(isinstance(s, float) for s in got)


def test_stock_geo3k_extra_info_is_refused_or_falls_back_as_configured(url, caplog):
    """geo3k's own extra_info has the question (with <image>) but no images: never scored without its image."""
    stock = {"split": "train", "index": 7, "answer": "3", "question": "<image>Find x."}
    with pytest.raises(verl.VerlRewardError, match=r"sample #0 \('hiyouga/geometry3k', 7\): .*1 <image> placeholder"
                                                   r"\(s\) but extra_info\['images'\] holds 0 .*prepare_verl_data"):  # fmt: skip
        verl.compute_score("hiyouga/geometry3k", "x = 3", "3", stock, reward_url=url)
    with pytest.raises(verl.VerlRewardError, match="needs fallback_score"):
        verl.compute_score("hiyouga/geometry3k", "x = 3", "3", stock, reward_url=url, on_error="fallback")
    with caplog.at_level(logging.WARNING, logger=verl.__name__):
        got = verl.compute_score("hiyouga/geometry3k", "x = 3", "3", stock, reward_url=url, on_error="fallback",
                                 fallback_score=-1.5)  # fmt: skip
    assert got == -1.5 and "1 of 1 samples got fallback_score=-1.5" in caplog.text


def _png(width, height) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buf, format="PNG")
    return buf.getvalue()


def test_a_sample_the_server_refuses_raises_by_default_and_falls_back_when_asked(parquet, prompts, url, local):
    rows = verl_rows(parquet)[:3]
    bad = dict(rows[1]["extra_info"], id="too-thin", images=[_png(1, 400)])  # an aspect ratio Qwen-VL refuses
    extra_infos = [rows[0]["extra_info"], bad, rows[2]["extra_info"]]
    args = (["toy"] * 3, ["It is red."] * 3, [None] * 3, extra_infos)
    with pytest.raises(verl.VerlRewardError, match=r"sample #1 \('toy', 'too-thin'\): the reward server refused it.*"
                                                   r"1 of 3 samples failed"):  # fmt: skip
        verl.compute_score_batch(*args, reward_url=url)
    got = verl.compute_score_batch(*args, reward_url=url, on_error="fallback", fallback_score=0.0)
    want = local_scores(local, [prompts[0], prompts[2]], ["It is red."])
    assert got == pytest.approx([want[0][0], 0.0, want[1][0]], abs=TOL)


def test_no_server_always_raises(parquet, monkeypatch):
    from common.distributed import free_port

    row = verl_rows(parquet)[0]
    monkeypatch.delenv(verl.URL_ENV, raising=False)
    with pytest.raises(verl.VerlRewardError, match="no reward server"):
        verl.compute_score("toy", "x", None, row["extra_info"])
    dead = f"http://127.0.0.1:{free_port()}"  # a fallback here would train on a constant
    with pytest.raises(RewardServerError, match="failed after"):
        verl.compute_score("toy", "x", None, row["extra_info"], reward_url=dead, on_error="fallback",
                           fallback_score=0.0)  # fmt: skip


def test_with_verls_own_dataset_and_reward_managers(parquet, prompts, url, local, tiny_vlm_path, tmp_path):
    """verl's RLHFDataset reads the helper's Parquet, its collate_fn / DataProto.repeat build the batch, and its
    reward managers (the legacy naive and batch ones, and the 0.9 reward loop's naive one) call our functions loaded
    by its get_custom_reward_fn."""
    pytest.importorskip("verl.workers.reward_manager", reason="verl is not installed (see the module docstring)")
    loop_naive = pytest.importorskip("verl.experimental.reward_loop.reward_manager.naive")
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
    from verl.workers.reward_manager import BatchRewardManager, NaiveRewardManager

    from common.processor import load_processor

    processor = load_processor(str(tiny_vlm_path))
    tokenizer = processor.tokenizer
    data_config = OmegaConf.create({"filter_overlong_prompts": False, "cache_dir": str(tmp_path / "cache")})
    dataset = RLHFDataset(str(parquet), tokenizer, data_config, processor=processor)
    items = [dataset[i] for i in range(len(dataset))]
    assert all("images" not in item for item in items)  # what the reward function cannot see
    assert all(any(p.get("type") == "image" for p in item["raw_prompt"][-1]["content"]) for item in items
               if item["extra_info"]["images"])  # fmt: skip
    batch = DataProto.from_single_dict(collate_fn(items)).repeat(repeat_times=len(RESPONSES), interleave=True)
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] for _ in items for r in RESPONSES]
    width = max(len(r) for r in responses)
    batch.batch["prompts"] = torch.ones(len(batch), 4, dtype=torch.long)
    batch.batch["responses"] = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in responses])
    batch.batch["attention_mask"] = torch.tensor([[1] * 4 + [1] * len(r) + [0] * (width - len(r)) for r in responses])
    decoded = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    want = [s for k, p in enumerate(prompts) for s in local_scores(local, [p], decoded[3 * k : 3 * k + 3])[0]]
    for name, manager in (("compute_score", NaiveRewardManager), ("compute_score_batch", BatchRewardManager)):
        fn = {"path": str(verl.__file__), "name": name, "reward_kwargs": {"reward_url": url}}
        compute_score = get_custom_reward_fn(OmegaConf.create({"custom_reward_function": fn,
                                                               "reward": {"custom_reward_function": fn}}))  # fmt: skip
        rewards = manager(tokenizer, 0, compute_score)(copy.deepcopy(batch))
        ends = batch.batch["attention_mask"][:, 4:].sum(-1) - 1
        got = rewards[torch.arange(len(batch)), ends].tolist()
        assert got == pytest.approx(want, abs=1e-4), name
        assert float(rewards.sum()) == pytest.approx(sum(want), abs=1e-3)  # nothing anywhere else
    # verl 0.9's trainer: the reward loop's naive manager, one sample per run_single, run concurrently
    fn = {"path": str(verl.__file__), "name": "compute_score", "reward_kwargs": {"reward_url": url}}
    compute_score = get_custom_reward_fn(OmegaConf.create({"reward": {"custom_reward_function": fn}}))
    manager = loop_naive.NaiveRewardManager(OmegaConf.create({}), tokenizer, compute_score)
    samples = copy.deepcopy(batch)

    async def all_samples():
        return await asyncio.gather(*(manager.run_single(samples[i : i + 1]) for i in range(len(samples))))

    got = [r["reward_score"] for r in manager.loop.run_until_complete(all_samples())]
    assert got == pytest.approx(want, abs=1e-4), "reward loop naive"


def test_recipe_lists_every_problem_then_writes_the_split(monkeypatch, toy_data, tmp_path, capsys):
    from tests.test_recipes import _run_recipe

    with pytest.raises(SystemExit) as err:
        _run_recipe(monkeypatch, "prepare_verl_data.py", "--prompts", tmp_path / "none", "--output", tmp_path / "x.json",
                    "--on_bad_record", "ignore")  # fmt: skip
    message = capsys.readouterr().err
    assert err.value.code == 2 and message.startswith("error: invalid VerlDataConfig:\n")
    for needle in ("prompts: ", "does not exist", "output=", "give a .parquet file", "on_bad_record='ignore'"):
        assert needle in message, needle
    out = tmp_path / "verl" / "test.parquet"
    _run_recipe(monkeypatch, "prepare_verl_data.py", "--prompts", toy_data["prompts_eval"], "--output", out,
                "--split", "test")  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    ds = datasets.load_dataset("parquet", data_files=str(out))["train"]
    assert report["rows"] == len(ds) == 16 and report["skipped"]["total"] == 0
    assert set(ds["data_source"]) == {"prompts_eval"} and set(e["split"] for e in ds["extra_info"]) == {"test"}


def _prepare_verl_data(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "recipes" / "prepare_verl_data.py"), *map(str, args)]
    env = {**cpu_env(1), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}  # `datasets` draws its bars on stderr
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_recipe_refusals_are_one_line_with_exit_status_2(prompts, tmp_path):
    out = tmp_path / "verl" / "train.parquet"
    proc = _prepare_verl_data("--prompts", tmp_path / "none", "--output", out)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"error: invalid VerlDataConfig: prompts: {str(tmp_path / 'none')!r} does not exist"], proc.stderr[-3000:]  # fmt: skip
    # every record refused (a text verl would take for a placeholder): no empty split is written
    tagged = [dict(r, prompt=[{"role": "user", "content": [*r["prompt"][-1]["content"], {"type": "text",
              "text": "Is <video> a tag?"}]}]) for r in prompts.select(range(2))]  # fmt: skip
    source = write_records(tagged, tmp_path / "tagged.jsonl")
    proc = _prepare_verl_data("--prompts", source, "--output", out)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"error: no record left to write to {out} (skipped: "
                                        "{'prompt: text contains a verl placeholder': 2})"], proc.stderr  # fmt: skip
    assert not out.exists()
