"""The RL-trainer adapters against a live reward server (and in-process): TRL GRPO trains with image prompts rewarded
by `VLRewardFunc`, verl's `compute_score`, OpenRLHF's remote reward request, the client's replicas and retries, and
`build_pairs --reward_url`."""

from __future__ import annotations

import functools
import http.server
import threading

import datasets
import httpx
import pytest
import requests

from common.distributed import free_port
from common.processor import load_processor
from common.scoring import ScoringGroup
from common.toy_task import make_example
from reward.client import RewardClient, RewardServerError
from reward.integrations import verl
from reward.integrations.trl import VLRewardFunc
from reward.scorer import RewardScorer, assistant_message
from reward.serving.images import to_data_uri
from reward.serving.process import server_process

TOL = 1e-5


@pytest.fixture(scope="module")
def local(tiny_reward_path):
    return RewardScorer.from_pretrained(str(tiny_reward_path), device="cpu", progress=False)


@pytest.fixture(scope="module")
def url(tiny_reward_path):
    with server_process(
        tiny_reward_path, "--device", "cpu", "--max_wait_ms", "20", "--allow_urls", "--url_allowlist", "127.0.0.1/32"
    ) as (_, base):  # the test image server is on loopback
        yield base


def _group(i=0, kind="color", k=3):
    ex = make_example(0, "eval", i, kind)
    parts = ([{"type": "image"}] if ex.image is not None else []) + [{"type": "text", "text": ex.question}]
    responses = [ex.response(w) for w in (ex.answer, ex.wrong, "green", "nine")[:k]]
    return ScoringGroup([{"role": "user", "content": parts}], [ex.image] if ex.image else [], responses)


def _query(processor, group, response):
    """What OpenRLHF sends: prompt and response token ids decoded with special tokens, padding included."""
    prompt = processor.apply_chat_template(group.prompt, tokenize=False, add_generation_prompt=True)
    return prompt + response + "<|im_end|>" + "<|endoftext|>" * 3


def test_openrlhf_remote_reward_request(url, local):
    """The request body, headers and score key of OpenRLHF's `remote_rm_fn` / `request_api_wrapper`."""
    text_group, image_group = _group(0, "sum", 3), _group(1, "color", 3)
    queries = [_query(local.processor, text_group, r) for r in text_group.responses]
    response = requests.post(url=url + "/get_reward", json={"query": queries},
                             headers={"Content-Type": "application/json"}, timeout=180)  # fmt: skip
    response.raise_for_status()
    rewards = response.json()["rewards"]
    assert rewards == pytest.approx(local.score_groups([text_group])[0], abs=TOL)
    # our extension: the images of image prompts, one list per query
    queries = [_query(local.processor, image_group, r) for r in image_group.responses]
    images = [[to_data_uri(image_group.images[0])]] * len(queries)
    body = requests.post(url + "/get_reward", json={"query": queries, "images": images}, timeout=180).json()
    assert body["rewards"] == body["scores"] == pytest.approx(local.score_groups([image_group])[0], abs=TOL)
    assert body["extra_logs"] == {}


def test_verl_compute_score(url, local, monkeypatch):
    group = _group(2, "shape", 2)
    want = local.score_groups([group])[0]
    extra = {"reward_url": url, "prompt": group.prompt, "images": [to_data_uri(group.images[0])]}
    got = [verl.compute_score("toy", r, "ignored", extra) for r in group.responses]
    assert got == pytest.approx(want, abs=TOL) and isinstance(got[0], float)
    monkeypatch.setenv(verl.URL_ENV, url)  # the URL from the environment instead
    extra.pop("reward_url")
    assert verl.compute_score("toy", group.responses[0], None, extra_info=extra) == pytest.approx(want[0], abs=TOL)
    with pytest.raises(verl.VerlRewardError, match="extra_info has neither 'prompt' nor 'question'"):
        verl.compute_score("toy", "x", None, {"reward_url": url})


def test_image_urls_when_allowed(url, local, tmp_path):
    """With --allow_urls the server fetches http(s) images (here from a loopback file server)."""
    group = _group(3, "count", 1)
    group.images[0].save(tmp_path / "img.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{files.server_address[1]}"
        items = [{"messages": group.prompt + [assistant_message(group.responses[0])], "images": [f"{base}/{name}"]}
                 for name in ("img.png", "missing.png")]  # fmt: skip
        r = httpx.post(url + "/v1/score", json={"items": items[:1]}, timeout=60)
        assert r.json()["scores"] == pytest.approx(local.score_groups([group])[0], abs=TOL)
        r = httpx.post(url + "/v1/score", json={"items": items}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["item"] == "items[1].images[0]"
        assert r.json()["error"]["type"] == "image_fetch_failed"
    finally:
        files.shutdown()


def test_client_splits_across_replicas_and_retries_a_dead_one(url, local):
    groups = [_group(0, "color", 4), _group(1, "sum", 3), _group(2, "count", 2)]
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with RewardClient([dead, url], max_items_per_request=2, retries=2, backoff_s=0.01) as client:
        got = client.score_groups(groups)
    want = local.score_groups(groups)
    assert [len(g) for g in got] == [4, 3, 2]
    assert max(abs(a - b) for ga, gb in zip(got, want) for a, b in zip(ga, gb)) <= TOL
    with pytest.raises(RewardServerError, match="unreachable|failed after 1 attempts"):
        RewardClient(dead, retries=0).score_groups(groups[:1])
    bad = ScoringGroup([{"role": "user", "content": [{"type": "image"}]}], ["data:image/png;base64,@@"], ["x"])
    with pytest.raises(RewardServerError) as e:
        RewardClient(url).score_groups([bad])
    assert e.value.status == 400 and e.value.item == "groups[0].images[0]"


def test_build_pairs_with_reward_url_scores_like_the_local_model(url, local, toy_data, tiny_vlm_path, tiny_reward_path,
                                                                 tmp_path):  # fmt: skip
    from data_builders.build import build_pairs
    from data_builders.config import BuildPairsConfig
    from tests.data_builders.conftest import ChoiceSampler

    def run(out, scorer=None, **kw):
        cfg = BuildPairsConfig(prompts=str(toy_data["prompts_eval"]), policy_name_or_path=str(tiny_vlm_path),
                               output_dir=str(tmp_path / out), num_samples=3, chunk_size=4, max_prompts=4,
                               device="cpu", progress=False, **kw)  # fmt: skip
        path = build_pairs(cfg, sampler=ChoiceSampler(), scorer=scorer)
        return [dict(r) for r in datasets.load_from_disk(str(path)).select_columns(["id", "chosen_score"])]

    remote = run("remote", reward_url=[url])
    here = run("local", reward_model_name_or_path=str(tiny_reward_path), scorer=local)
    assert [r["id"] for r in remote] == [r["id"] for r in here] and remote
    assert [r["chosen_score"] for r in remote] == pytest.approx([r["chosen_score"] for r in here], abs=TOL)


class _Recording(VLRewardFunc):
    """Keeps what TRL passed and what was returned."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        out = super().__call__(prompts, completions, **kwargs)
        self.calls.append((prompts, completions, kwargs, out))
        return out


def _grpo(tiny_vlm_path, toy_data, reward, out_dir):
    from trl import GRPOConfig, GRPOTrainer

    ds = datasets.load_from_disk(str(toy_data["prompts_train"]))
    ds = ds.filter(lambda r: r["source"] != "toy/sum").select(range(4)).select_columns(["prompt", "images"])
    args = GRPOConfig(output_dir=str(out_dir), use_cpu=True, per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, max_steps=2, logging_steps=1, report_to="none", save_strategy="no",
                      seed=0)  # fmt: skip
    trainer = GRPOTrainer(model=str(tiny_vlm_path), reward_funcs=[reward], args=args, train_dataset=ds,
                          processing_class=load_processor(str(tiny_vlm_path)))  # fmt: skip
    trainer.train()
    return trainer


def _check_grpo(trainer, reward, local):
    assert trainer.state.global_step == 2
    logged = [h["rewards/vl_reward/mean"] for h in trainer.state.log_history if "rewards/vl_reward/mean" in h]
    assert len(logged) == 2
    assert len(reward.calls) >= 2
    for prompts, completions, kwargs, out in reward.calls:
        assert all(len(im) == 1 for im in kwargs["images"])  # image prompts reached the reward function
        convs = [{"messages": [m if isinstance(m["content"], str) else
                               {**m, "content": [{"type": p["type"], **({"text": p["text"]} if "text" in p else {})}
                                                 for p in m["content"]]} for m in prompt]
                  + [assistant_message(c[-1]["content"])], "images": images}
                 for prompt, c, images in zip(prompts, completions, kwargs["images"])]  # fmt: skip
        assert out == pytest.approx(local.score(convs), abs=TOL)  # the reward model's scores of these completions


def test_trl_grpo_in_process(tiny_vlm_path, tiny_reward_path, toy_data, local, tmp_path):
    reward = _Recording(model=str(tiny_reward_path), device="cpu")
    _check_grpo(_grpo(tiny_vlm_path, toy_data, reward, tmp_path), reward, local)


def test_trl_grpo_through_the_server(tiny_vlm_path, toy_data, url, local, tmp_path):
    reward = _Recording(url=url)
    _check_grpo(_grpo(tiny_vlm_path, toy_data, reward, tmp_path), reward, local)
    assert httpx.get(url + "/health").status_code == 200
