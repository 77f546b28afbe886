"""The reward server's guards (issue 19): no fetch of internal addresses (SSRF), one generic error per failed fetch, a
total fetch deadline, fetches that never starve other requests, no 500 on hostile input, limits checked before any
work, bounded decoded memory, and the documented error contract (404/405, OpenAPI pages behind the key, 503 rather
than 500 past the shutdown deadline). All servers are on loopback."""

from __future__ import annotations

import base64
import io
import re
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.bench_server import bomb_uri
from common.distributed import free_port
from common.processor import load_processor
from common.toy_task import make_example
from reward.scorer import assistant_message
from reward.serving.app import ServeConfig, create_app
from reward.serving.fetch import FETCH_FAILED
from reward.serving.images import to_data_uri
from reward.serving.process import image_host, peak_rss, server_process

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
PNG = base64.b64decode(to_data_uri(make_example(0, "eval", 0, "color").image).split(",")[1])


class _Scorer:
    """Score = len(response) + 10 * images: the app needs only `processor` and `score_groups`."""

    def __init__(self, processor):
        self.processor = processor

    def score_groups(self, groups):
        return [[len(r) + 10 * len(g.images) for r in g.responses] for g in groups]


@pytest.fixture(scope="module")
def processor(tiny_vlm_path):
    return load_processor(str(tiny_vlm_path))


@contextmanager
def _app(processor, **cfg):
    with TestClient(create_app(_Scorer(processor), ServeConfig(**cfg))) as client:
        yield client


@contextmanager
def _remote():
    """The loopback image host: `/img.png`, `/missing` (404), `/redirect`, `/drip` (1 byte every 0.5 s for 60 s)."""
    with image_host({"/img.png": PNG}) as (server, base):
        yield server, base


def _item(image=None, text="red"):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": "What color?"}]
    return {"messages": [{"role": "user", "content": content}, assistant_message(text)],
            "images": [image] if image else []}  # fmt: skip


def _fetch_error(r):
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"type": "image_fetch_failed", "message": FETCH_FAILED, "item": "items[0].images[0]"}


# ------------------------------------------------------------------------------------------------------------ SSRF
def test_loopback_urls_are_refused_by_default_and_fetched_when_allowlisted(processor):
    with _remote() as (remote, base):
        with _app(processor, allow_urls=True) as client:
            _fetch_error(client.post("/v1/score", json={"items": [_item(f"{base}/img.png")]}))
            assert remote.hits == []  # refused before any connection
        with _app(processor, allow_urls=True, url_allowlist=["127.0.0.1/32"]) as client:
            r = client.post("/v1/score", json={"items": [_item(f"{base}/img.png")]})
            assert r.status_code == 200 and r.json()["scores"] == [13]  # len("red") + one image
        assert remote.hits == ["/img.png"]


def test_every_address_a_name_resolves_to_is_checked(processor, monkeypatch):
    """A public-looking name resolving to loopback (or to a public and a private address) is refused; naming the
    host in the allowlist lets it through, to the address that was checked."""
    with _remote() as (remote, base):
        port = int(base.rsplit(":", 1)[1])
        fake = {"images.example.com": ["127.0.0.1"], "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
                "meta.example.com": ["169.254.169.254"], "v6.example.com": ["::ffff:127.0.0.1"]}  # fmt: skip
        real = socket.getaddrinfo

        def getaddrinfo(host, *args, **kwargs):
            if host not in fake:
                return real(host, *args, **kwargs)
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (ip, port) if ":" not in ip else (ip, port, 0, 0)) for ip in fake[host]]  # fmt: skip

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        with _app(processor, allow_urls=True) as client:
            for host in fake:
                _fetch_error(client.post("/v1/score", json={"items": [_item(f"http://{host}:{port}/img.png")]}))
        assert remote.hits == []
        with _app(processor, allow_urls=True, url_allowlist=["images.example.com"]) as client:
            r = client.post("/v1/score", json={"items": [_item(f"http://images.example.com:{port}/img.png")]})
            assert r.status_code == 200, r.text
        assert remote.hits == ["/img.png"]


def test_every_failed_fetch_is_the_same_generic_error(processor):
    """A 404, a redirect (not followed), a closed port and an oversized image read alike: no port scanner."""
    with _remote() as (remote, base):
        closed = f"http://127.0.0.1:{free_port()}/img.png"
        with _app(processor, allow_urls=True, url_allowlist=["127.0.0.1/32"], max_image_mb=0.0001) as client:
            for url in (f"{base}/missing", f"{base}/redirect", closed, f"{base}/img.png"):
                _fetch_error(client.post("/v1/score", json={"items": [_item(url)]}))
        assert remote.hits == ["/missing", "/redirect", "/img.png"]  # the redirect was not followed


def test_a_slow_remote_is_cut_at_the_total_deadline(processor):
    """1 byte every 0.5 s never trips a per-read timeout; the request's total deadline (1.5 s) cuts it."""
    with _remote() as (_, base):
        with _app(processor, allow_urls=True, url_allowlist=["127.0.0.1/32"], url_timeout_s=1.5) as client:
            start = time.monotonic()
            _fetch_error(client.post("/v1/score", json={"items": [_item(f"{base}/drip")]}))
            assert time.monotonic() - start < 1.5 + 2.0  # the drip lasts 60 s


def test_slow_fetches_do_not_starve_other_requests(tiny_reward_path):
    """48 requests with a slow URL in flight (more than the default 40 worker threads): a normal request is answered
    before any of them ends."""
    flags = ["--device", "cpu", "--allow_urls", "--url_allowlist", "127.0.0.1/32", "--url_timeout_s", "6",
             "--max_wait_ms", "0"]  # fmt: skip
    with _remote() as (_, base), server_process(tiny_reward_path, *flags) as (_, url):
        assert httpx.post(url + "/v1/score", json={"items": [_item(to_data_uri(Image.open(io.BytesIO(PNG))))]},
                          timeout=60).status_code == 200  # warm  # fmt: skip
        done, http = [], httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64))

        def slow():
            r = http.post(url + "/v1/score", json={"items": [_item(f"{base}/drip")]})
            done.append(("slow", r.status_code))

        threads = [threading.Thread(target=slow) for _ in range(48)]
        for t in threads:
            t.start()
        for _ in range(200):  # bounded: until every slow request is inside the server
            if "reward_requests_in_flight 48.0" in httpx.get(url + "/metrics").text:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the slow requests never reached the server")
        r = httpx.post(url + "/v1/score", json={"items": [_item(text="blue")]}, timeout=120)
        done.append(("normal", r.status_code))
        for t in threads:
            t.join(timeout=120)
        http.close()
    assert done[0] == ("normal", 200)  # answered while all 48 slow requests were still in flight
    assert sorted(set(done[1:])) == [("slow", 400)] and len(done) == 49


# ------------------------------------------------------------------------------------------------ hostile input
def _bad_inputs(root: Path) -> dict:
    (root / "loop.png").symlink_to(root / "loop.png")
    user = {"role": "user", "content": "What color?"}
    return {
        "JSON nested 10^5 levels": (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", None),
        "symlink loop": ({"items": [_item("loop.png")]}, 404, "image_not_found", "items[0].images[0]"),
        "5000-character name": ({"items": [_item("a" * 5000 + ".png")]}, 404, "image_not_found",
                                "items[0].images[0]"),
        "NUL in the name": ({"items": [_item("a\x00.png")]}, 404, "image_not_found", "items[0].images[0]"),
        "no user turn": ({"items": [{"messages": [assistant_message("hi")]}]}, 400, "invalid_request",
                         "items[0].messages"),
        "group with an empty prompt": ({"groups": [{"prompt": [], "responses": ["x"]}]}, 400, "invalid_request",
                                       "groups[0].prompt"),
        "image_url as a string": ({"items": [{"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]},
            assistant_message("x")]}]}, 400, "invalid_request", "items[0].messages[0].content[0]"),
        "images is 0": ({"items": [{"messages": [user, assistant_message("x")], "images": 0}]}, 400,
                        "invalid_request", "items[0].images"),
        "images is {}": ({"items": [{"messages": [user, assistant_message("x")], "images": {}}]}, 400,
                         "invalid_request", "items[0].images"),
        "an image that is an object": ({"items": [{"messages": [{"role": "user", "content": [{"type": "image"}]},
            assistant_message("x")], "images": [{"url": "x"}]}]}, 400, "invalid_image", "items[0].images[0]"),
        "role is a list": ({"items": [{"messages": [{"role": ["user"], "content": "x"}, assistant_message("x")]}]},
                           400, "invalid_request", "items[0].messages[0].role"),
    }  # fmt: skip


@pytest.mark.parametrize("case", ["JSON nested 10^5 levels", "symlink loop", "5000-character name", "NUL in the name",
                                  "no user turn", "group with an empty prompt", "image_url as a string",
                                  "images is 0", "images is {}", "an image that is an object",
                                  "role is a list"])  # fmt: skip
def test_hostile_input_gets_a_4xx_naming_the_item(processor, tmp_path, case):
    body, status, kind, item = _bad_inputs(tmp_path)[case]
    with _app(processor, image_root=str(tmp_path)) as client:
        path = "/v1/score_groups" if isinstance(body, dict) and "groups" in body else "/v1/score"
        r = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"]["type"] == kind and r.json()["error"]["item"] == item
        assert client.post("/v1/score", json={"items": [_item(text="ok")]}).status_code == 200


# ------------------------------------------------------------------------------------------- limits before work
def test_counts_and_sizes_are_refused_before_any_tokenizing_or_decoding(processor, monkeypatch):
    import reward.serving.api as api

    calls = {"template": 0, "decode": 0}
    template, decode = processor.apply_chat_template, getattr(api, "decode", None)

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(processor, "apply_chat_template", counted("template", template))
    monkeypatch.setattr(api, "decode", counted("decode", decode), raising=False)
    prompt = [{"role": "user", "content": "What color?"}]
    uri = [to_data_uri(Image.new("RGB", (224, 224), (i, 0, 0))) for i in range(3)]  # 50176 pixels each
    with _app(processor) as client:
        r = client.post("/v1/score_groups", json={"groups": [{"prompt": prompt, "responses": ["x"] * 10_000}]})
        assert r.status_code == 413 and r.json()["error"]["type"] == "too_many_items"
        assert r.json()["error"]["item"] == "groups[0].responses"
        r = client.post("/v1/score", json={"items": [_item(text="y" * 1_000_000)]})
        assert r.status_code == 413 and r.json()["error"] == {
            "type": "text_too_long", "item": "items[0]",
            "message": "1000011 characters of text, more than 65536 per item"}  # fmt: skip
    with _app(processor, max_request_pixels=50176 * 2) as client:
        r = client.post("/v1/score", json={"items": [_item(u) for u in uri]})  # 3 distinct images: over the budget
        assert r.status_code == 413 and r.json()["error"]["type"] == "too_many_pixels"
        assert calls == {"template": 0, "decode": 0}
        r = client.post("/v1/score", json={"items": [_item(uri[0])] * 5})  # one image, five times: decoded once
        assert r.status_code == 200 and calls == {"template": 5, "decode": 1}


def test_the_queue_pixel_budget_answers_503_while_full(processor):
    """With room for one request's images in the queue, a second image request gets a 503 (the client retries) while
    the first is being scored, and is accepted once the first is answered."""
    release = threading.Event()

    class Blocking(_Scorer):
        def score_groups(self, groups):
            release.wait(timeout=60)
            return super().score_groups(groups)

    images = [to_data_uri(Image.new("RGB", (224, 224), (i, 0, 0))) for i in range(2)]
    cfg = ServeConfig(max_request_pixels=50176, max_queue_pixels=50176, max_wait_ms=0)
    with TestClient(create_app(Blocking(processor), cfg)) as client:
        first = []
        body = {"items": [_item(images[0])]}
        thread = threading.Thread(target=lambda: first.append(client.post("/v1/score", json=body)))
        thread.start()
        for _ in range(200):  # bounded: until the first request is in the model call
            text = client.get("/metrics").text
            if "reward_queue_depth 0.0" in text and "reward_requests_in_flight 1.0" in text:
                break
            time.sleep(0.02)
        r = client.post("/v1/score", json={"items": [_item(images[1])]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded"
        release.set()
        thread.join(timeout=60)
        assert first[0].status_code == 200
        assert client.post("/v1/score", json={"items": [_item(images[1])]}).status_code == 200


# --------------------------------------------------------------------------------------------------- the contract
def test_error_contract_of_every_route(processor):
    with _app(processor, api_key="k") as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            for headers in ({}, {"X-API-Key": "k"}):
                r = client.get(path, headers=headers)
                assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", path
    with _app(processor) as client:
        assert client.get("/openapi.json").status_code == 200  # without a key the pages are there
        r = client.get("/nowhere")
        assert r.status_code == 404 and r.json() == {"error": {"type": "not_found", "item": None,
                                                               "message": "GET /nowhere: Not Found"}}  # fmt: skip
        r = client.get("/v1/score")
        assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
        for ref in ("http://example.com/a.png", "ftp://example.com/a.png", "file:///etc/passwd"):
            r = client.post("/v1/score", json={"items": [_item(ref)]})
            assert r.status_code == 403 and r.json()["error"]["type"] == "url_refused", ref
    row = next(ln for ln in DOCS.read_text().splitlines() if "`url_refused`" in ln and ln.startswith("|"))
    assert re.split(r"\s*\|\s*", row)[2] == "403", row  # the docs' error table says the same


def test_requests_past_the_shutdown_deadline_get_503_and_the_exit_is_clean(tiny_reward_path):
    """--graceful_shutdown_s 1 while 8 requests wait 4 s for their batch: each gets 200 or 503, never a 500."""
    flags = ["--device", "cpu", "--graceful_shutdown_s", "1", "--max_wait_ms", "4000"]
    with server_process(tiny_reward_path, *flags) as (proc, url):
        statuses = []

        def worker(i):
            r = httpx.post(url + "/v1/score", json={"items": [_item(text=f"answer {i}")]}, timeout=60)
            statuses.append((r.status_code, r.json().get("error", {}).get("type")))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for _ in range(200):
            if "reward_requests_in_flight 8.0" in httpx.get(url + "/metrics").text:
                break
            time.sleep(0.02)
        else:
            pytest.fail("requests never reached the server")
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        assert proc.wait(timeout=60) == 0
    assert len(statuses) == 8 and set(statuses) == {(503, "shutting_down")}


# ------------------------------------------------------------------------------------------------------- memory
def test_peak_memory_of_the_worst_request_stays_within_the_budget(tiny_reward_path):
    """2 items x 8 distinct 4096 x 4096 images, the most the limits below allow: the server's peak RSS grows by at
    most what the budget allows (each parse thread decodes one full-size image: 1 B/pixel for the 1-bit decode + 4 for
    RGB; the request holds its resized images), plus room for the model call. The code before these guards
    grew 2.1 GiB (`benchmarks/bench_server.py --only guards`)."""
    threads, items, images, pixels = 2, 2, 8, 4096 * 4096
    flags = ["--device", "cpu", "--max_items_per_request", str(items), "--max_images_per_item", str(images),
             "--parse_threads", str(threads), "--max_wait_ms", "0"]  # fmt: skip
    small = to_data_uri(make_example(0, "eval", 0, "color").image)
    with server_process(tiny_reward_path, *flags) as (proc, url):
        warm = {"items": [{**_item(small), "messages": _many(images), "images": [small] * images}] * items}
        assert httpx.post(url + "/v1/score", json=warm, timeout=120).status_code == 200
        before = peak_rss(proc.pid)
        worst = {"items": [{"messages": _many(images), "images": [bomb_uri(i * images + j) for j in range(images)]}
                           for i in range(items)]}  # fmt: skip
        r = httpx.post(url + "/v1/score", json=worst, timeout=300)
        assert r.status_code == 200, r.text
        growth = peak_rss(proc.pid) - before
    held = items * images * 224 * 224 * 4  # resized to the tiny processor's max_pixels (224 x 224)
    bound = threads * pixels * (1 + 4) + held + 256 * 2**20
    assert growth <= bound, f"peak RSS grew {growth / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB"


def _many(n: int) -> list[dict]:
    content = [{"type": "image"}] * n + [{"type": "text", "text": "What color?"}]
    return [{"role": "user", "content": content}, assistant_message("red")]
