"""Reward servers in a run's identity: jobs scoring through `reward_url` record the served model's `/info`
fingerprint, not the URLs. Other replicas of the same model resume; another model behind the same URL is refused.

Three live servers: A and B serve the tiny reward model, C serves a copy whose value head differs. A loopback
forwarding proxy gives one fixed URL whose backend the test swaps (a replica replaced behind a load balancer)."""

from __future__ import annotations

import http.server
import json
import shutil
import threading

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from common.io import read_records
from common.run_folder import RunFolderError, fingerprint
from data_builders.build import build_pairs
from data_builders.config import BuildPairsConfig
from data_builders.reward_data.job import build_reward_data
from reward.client import RewardClient, RewardServerError
from reward.model import VALUE_HEAD_FILE
from reward.serving.process import server_process
from tests.data_builders.conftest import ChoiceSampler
from tests.data_builders.test_reward_data import REPO, tiny_config


@pytest.fixture(scope="module")
def other_reward_path(tiny_reward_path, tmp_path_factory):
    """The tiny reward model with another value head (same backbone and files otherwise)."""
    path = tmp_path_factory.mktemp("models") / "tiny-reward-other-head"
    shutil.copytree(tiny_reward_path, path)
    head = load_file(path / VALUE_HEAD_FILE)
    save_file({k: v + 0.5 * torch.ones_like(v) for k, v in head.items()}, str(path / VALUE_HEAD_FILE))
    return path


@pytest.fixture(scope="module")
def servers(tiny_reward_path, other_reward_path):
    """{"A", "B"}: the tiny reward model on two URLs; "C": the other model."""
    flags = ("--device", "cpu", "--max_wait_ms", "5")
    with (
        server_process(tiny_reward_path, *flags) as (_, a),
        server_process(tiny_reward_path, *flags) as (_, b),
        server_process(other_reward_path, *flags) as (_, c),
    ):
        yield {"A": a, "B": b, "C": c}


class _Proxy:
    """A loopback URL forwarding every GET/POST to `self.target` (swappable between requests)."""

    def __init__(self, target: str):
        self.target = target
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                r = httpx.request(method, proxy.target + self.path, content=body or None, timeout=120,
                                  headers={"content-type": self.headers.get("content-type", "application/json")})  # fmt: skip
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self):  # noqa: N802
                self._forward("GET")

            def do_POST(self):  # noqa: N802
                self._forward("POST")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(servers):
    p = _Proxy(servers["A"])
    yield p
    p.close()


def test_info_reports_the_model_fingerprint_and_replicas_must_agree(servers, tiny_reward_path, other_reward_path):
    info = {name: httpx.get(url + "/info", timeout=30).json() for name, url in servers.items()}
    assert info["A"]["model_fingerprint"] == info["B"]["model_fingerprint"] == fingerprint(tiny_reward_path)
    assert info["C"]["model_fingerprint"] == fingerprint(other_reward_path) != info["A"]["model_fingerprint"]
    assert RewardClient([servers["A"], servers["B"]]).model_info()["model_fingerprint"] == fingerprint(tiny_reward_path)
    with pytest.raises(RewardServerError, match="serve different models"):
        RewardClient([servers["A"], servers["C"]]).model_info()


def _pairs_cfg(toy_data, tiny_vlm_path, out, urls):
    return BuildPairsConfig(prompts=str(toy_data["prompts_eval"]), policy_name_or_path=str(tiny_vlm_path),
                            output_dir=str(out), num_samples=3, chunk_size=2, max_prompts=4, device="cpu",
                            progress=False, reward_url=list(urls))  # fmt: skip


def test_build_pairs_resumes_through_other_replicas_and_refuses_another_model_behind_the_same_url(
    servers, proxy, toy_data, tiny_vlm_path, tmp_path
):
    out = tmp_path / "pairs"
    first = read_records(build_pairs(_pairs_cfg(toy_data, tiny_vlm_path, out, [proxy.url]), sampler=ChoiceSampler()))
    assert len(first) > 0
    (out / "chunks" / "chunk-000001.json").unlink()  # as if killed before the last chunk
    # the same model through other URLs: resumes, recomputing only the missing chunk
    sampler = ChoiceSampler()
    again = build_pairs(_pairs_cfg(toy_data, tiny_vlm_path, out, [servers["B"], servers["A"]]), sampler=sampler)
    assert len(sampler.calls) == 2 and read_records(again).to_list() == first.to_list()
    # another model behind the first URL: refused, naming the fingerprint
    proxy.target = servers["C"]
    with pytest.raises(RunFolderError, match=r"served_model_fingerprint: 'sha256:[0-9a-f]+' -> 'sha256:[0-9a-f]+'"):
        build_pairs(_pairs_cfg(toy_data, tiny_vlm_path, out, [proxy.url]), sampler=ChoiceSampler())


def test_reward_data_filter_resumes_through_other_replicas_and_refuses_another_model(servers, proxy, tmp_path):
    sources = [{"name": "skywork", "format": "skywork",
                "path": str(REPO / "tests/data_builders/fixtures/reward_data/skywork.jsonl")}]  # fmt: skip
    base = ["--sources", json.dumps(sources), "--stages", json.dumps([{"name": "all", "sources": ["skywork"]}]),
            "--benchmarks", "[]", "--filter_action", "flag"]  # fmt: skip
    out = tmp_path / "rd"
    first = read_records(build_reward_data(tiny_config(out, *base, "--reward_url", proxy.url))["all"])
    assert len(first) == 3 and all(isinstance(s, float) for s in first["chosen_score"])
    again = read_records(build_reward_data(tiny_config(out, *base, "--reward_url", servers["B"]))["all"])
    assert again.to_list() == first.to_list()
    proxy.target = servers["C"]
    with pytest.raises(RunFolderError, match=r"filter_scorer: 'reward server: sha256:[0-9a-f]+ \(float32\)' -> "):
        build_reward_data(tiny_config(out, *base, "--reward_url", proxy.url))
