"""The reward server as users run it (`recipes/serve_reward.py` on a loopback port, tiny model): HTTP scores equal the
local scorer's, merging concurrent requests does not change them, every bad input gets its 4xx naming the item and
the server keeps answering, the key is enforced, SIGTERM loses no request in flight."""

from __future__ import annotations

import base64
import io
import signal
import threading

import httpx
import pytest
from PIL import Image

from common.scoring import ScoringGroup
from common.toy_task import make_example
from reward.client import RewardClient, RewardServerError
from reward.scorer import RewardScorer, assistant_message
from reward.serving.images import to_data_uri
from reward.serving.process import server_process

KEY = "test-key"
TOL = 1e-5


def _png(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _groups():
    """Two image prompts and one text-only prompt, with K = 4, 3, 2 responses that differ."""
    out = []
    for i, (kind, k) in enumerate((("color", 4), ("shape", 3), ("sum", 2))):
        ex = make_example(0, "eval", i, kind)
        parts = ([{"type": "image"}] if ex.image is not None else []) + [{"type": "text", "text": ex.question}]
        responses = [ex.response(w) for w in (ex.answer, ex.wrong, "blue", "seven")[:k]]
        out.append(ScoringGroup([{"role": "user", "content": parts}], [ex.image] if ex.image else [], responses))
    return out


def _conversations(groups):
    return [{"messages": g.prompt + [assistant_message(r)], "images": g.images} for g in groups for r in g.responses]


@pytest.fixture(scope="module")
def local(tiny_reward_path):
    return RewardScorer.from_pretrained(str(tiny_reward_path), device="cpu", progress=False)


@pytest.fixture(scope="module")
def server(tiny_reward_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("image_root")
    (root / "ok.png").write_bytes(_png(make_example(0, "eval", 0, "color").image))
    (root.parent / "outside.png").write_bytes(_png(make_example(0, "eval", 0, "color").image))
    flags = ["--device", "cpu", "--api_key", KEY, "--image_root", str(root), "--max_items_per_request", "16",
             "--max_request_mb", "1", "--max_image_pixels", "250000", "--max_wait_ms", "50"]  # fmt: skip
    with server_process(tiny_reward_path, *flags) as (proc, url):
        yield proc, url, root


def _post(url, path, body=None, key=KEY, content=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, content=content, headers=headers, timeout=60)


def test_http_scores_equal_the_local_scorer(server, local):
    _, url, _ = server
    groups = _groups()
    with RewardClient(url, api_key=KEY) as client:
        remote_groups = client.score_groups(groups)
        remote_items = client.score(_conversations(groups))
    want = local.score_groups(groups)
    got = [s for g in remote_groups for s in g]
    flat = [s for g in want for s in g]
    assert max(abs(a - b) for a, b in zip(got, flat)) <= TOL
    naive = local.score(_conversations(groups))  # the full-forward path: agrees to float rounding
    assert max(abs(a - b) for a, b in zip(remote_items, naive)) <= TOL
    assert max(flat) - min(flat) > 100 * TOL  # the comparison is not vacuous


def test_image_url_parts_and_paths_under_the_root(server, local):
    _, url, _ = server
    group = _groups()[0]
    question = group.prompt[0]["content"][1]
    want = local.score_groups([ScoringGroup(group.prompt, group.images, group.responses[:1])])[0][0]
    for image in (to_data_uri(group.images[0]), "ok.png"):  # OpenAI-style part; a path under --image_root
        msg = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}, question]}
        r = _post(url, "/v1/score", {"items": [{"messages": [msg, assistant_message(group.responses[0])]}]})
        assert r.status_code == 200, r.text
        assert r.json()["scores"][0] == pytest.approx(want, abs=TOL)


def test_images_larger_than_the_processor_size_are_shrunk_on_arrival_and_score_as_locally(server, local):
    """A 480 x 360 image (tiny processor: at most 224 x 224 = 50176 pixels) is resized when decoded, with the
    processor's filter, to the size the processor would give it: the score equals the local scorer's on the
    full-size image."""
    _, url, _ = server
    image = make_example(0, "eval", 2, "shape").image.resize((480, 360))
    group = ScoringGroup(_groups()[0].prompt, [image], ["It is red.", "It is blue."])
    with RewardClient(url, api_key=KEY) as client:
        got = client.score_groups([group])[0]
    assert got == pytest.approx(local.score_groups([group])[0], abs=TOL)


def test_concurrent_requests_are_merged_without_changing_scores(server, local):
    """GRPO-shaped: K completions of one prompt as K separate requests, sent at once, from several threads."""
    _, url, _ = server
    groups = _groups()
    alone = [s for g in local.score_groups([ScoringGroup(g.prompt, g.images, [r]) for g in groups
                                            for r in g.responses]) for s in g]  # fmt: skip
    convs = _conversations(groups)
    before = _batch_stats(url)
    results = [None] * len(convs)

    def worker(i):
        with RewardClient(url, api_key=KEY) as client:
            results[i] = client.score([convs[i]])[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert max(abs(a - b) for a, b in zip(results, alone)) <= TOL  # each request got its own item's score
    after = _batch_stats(url)
    items, calls, groups_scored = (after[k] - before[k] for k in ("items", "calls", "groups"))
    assert items == len(convs)
    assert calls < len(convs)  # requests were merged into fewer model calls
    assert groups_scored < items  # and completions of one prompt became one group


def _batch_stats(url):
    text = httpx.get(url + "/metrics", headers={"X-API-Key": KEY}).text
    value = lambda name: float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith(name + " ")))  # noqa: E731
    return {"items": value("reward_batch_items_sum"), "calls": value("reward_batch_items_count"),
            "groups": value("reward_batch_groups_sum")}  # fmt: skip


def _item(image_ref=None, n_images=1, text="answer"):
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": "what is it?"}]
    images = [image_ref] * n_images if image_ref is not None else []
    return {"messages": [{"role": "user", "content": content}, assistant_message(text)], "images": images}


def _ok_uri():
    return to_data_uri(make_example(0, "eval", 1, "color").image)


def _bad_cases(root):
    big = Image.new("RGB", (600, 600), (10, 20, 30))  # 360k pixels > --max_image_pixels 250000
    corrupt = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20).decode()
    return {
        "bad base64": ({"items": [_item(_ok_uri()), _item("data:image/png;base64,@@@notbase64")]}, 400,
                       "invalid_base64", "items[1].images[0]"),
        "corrupt image": ({"items": [_item(corrupt)]}, 400, "corrupt_image", "items[0].images[0]"),
        "oversized image": ({"items": [_item(_ok_uri()), _item(to_data_uri(big))]}, 413, "image_too_large",
                            "items[1].images[0]"),
        "path outside the root": ({"items": [_item("../outside.png")]}, 403, "path_refused", "items[0].images[0]"),
        "absolute path outside the root": ({"items": [_item(str(root.parent / "outside.png"))]}, 403,
                                           "path_refused", "items[0].images[0]"),
        "url": ({"items": [_item("http://127.0.0.1:1/x.png")]}, 403, "url_refused", "items[0].images[0]"),
        "too many items": ({"items": [_item(n_images=0, text=str(i)) for i in range(17)]}, 413, "too_many_items", "items"),
        "image count mismatch": ({"items": [dict(_item(_ok_uri()), images=[])]}, 400, "image_count_mismatch",
                                 "items[0]"),
        "no assistant response": ({"items": [{"messages": [{"role": "user", "content": "hi"}]}]}, 400,
                                  "invalid_request", "items[0]"),
        "wrong role": ({"items": [{"messages": [{"role": "robot", "content": "hi"}]}]}, 400, "invalid_request",
                       "items[0].messages[0].role"),
        "group without responses": ({"groups": [{"prompt": [], "responses": []}]}, 400, "invalid_request",
                                    "groups[0].responses"),
    }  # fmt: skip


@pytest.mark.parametrize("case", ["bad base64", "corrupt image", "oversized image", "path outside the root",
                                  "absolute path outside the root", "url", "too many items", "image count mismatch",
                                  "no assistant response", "wrong role", "group without responses"])  # fmt: skip
def test_each_bad_input_gets_its_4xx_naming_the_item(server, case):
    _, url, root = server
    body, status, kind, item = _bad_cases(root)[case]
    path = "/v1/score_groups" if "groups" in body else "/v1/score"
    r = _post(url, path, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind and r.json()["error"]["item"] == item
    assert _post(url, "/v1/score", {"items": [_item(_ok_uri())]}).status_code == 200  # still answers


def test_body_and_json_limits(server):
    _, url, _ = server
    r = _post(url, "/v1/score", content=b'{"items": [' + b" " * (1024 * 1024) + b"]}")
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"
    r = _post(url, "/v1/score", content=b'{"items": [')
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"
    r = _post(url, "/get_reward", {"query": ["no chat format"]})
    assert r.status_code == 400 and r.json()["error"]["item"] == "query[0]"
    r = _post(url, "/get_reward", {"query": [_IMAGE_QUERY]})  # an image placeholder and no images
    assert r.status_code == 400 and r.json()["error"] == {
        "type": "image_count_mismatch", "item": "query[0]",
        "message": "1 image placeholder(s) in the query but 0 image(s) given in images[0]"}  # fmt: skip
    assert httpx.get(url + "/health").status_code == 200


_IMAGE_QUERY = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                "<|image_pad|><|vision_end|>What color?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>")  # fmt: skip


def test_api_key_is_required_except_for_health(server):
    _, url, _ = server
    body = {"items": [_item(n_images=0, text="x")]}
    r = _post(url, "/v1/score", body, key=None)
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    r = _post(url, "/v1/score", body, key="wrong")
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    assert httpx.post(url + "/v1/score", json=body, headers={"X-API-Key": KEY}).status_code == 200
    for path in ("/info", "/metrics"):
        assert httpx.get(url + path).status_code == 401
    assert httpx.get(url + "/health").status_code == 200
    info = httpx.get(url + "/info", headers={"X-API-Key": KEY}).json()
    assert info["dtype"] == "float32" and info["limits"]["max_items_per_request"] == 16
    assert "api_key" not in info["limits"] and info["limits"]["api_key_required"] is True
    with pytest.raises(RewardServerError) as e:
        RewardClient(url, api_key="wrong", retries=0).score([_item(n_images=0, text="x")])
    assert e.value.status == 403


def test_sigterm_finishes_requests_in_flight(tiny_reward_path, local):
    groups = _groups()
    convs = _conversations(groups)
    want = local.score(convs)
    with server_process(tiny_reward_path, "--device", "cpu", "--max_wait_ms", "1500") as (proc, url):
        results = [None] * len(convs)

        def worker(i):
            with RewardClient(url, retries=0) as client:
                results[i] = client.score([convs[i]])[0]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(convs))]
        for t in threads:
            t.start()
        for _ in range(200):  # bounded: until every request is inside the server
            text = httpx.get(url + "/metrics").text
            if f"reward_requests_in_flight {float(len(convs))}" in text:
                break
            threading.Event().wait(0.02)
        else:
            pytest.fail("requests never reached the server")
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        assert proc.wait(timeout=60) == 0  # a clean drain is a clean exit
    assert None not in results
    assert max(abs(a - b) for a, b in zip(results, want)) <= TOL
