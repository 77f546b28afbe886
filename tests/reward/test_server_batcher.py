"""The batcher and request parsing without a server: merged batches split by key and budget, a failing item fails
only itself, OpenRLHF queries parse back to messages that re-render to the same text."""

from __future__ import annotations

import asyncio

import pytest

from reward.serving.api import RequestError, Unit, parse_qwen_chat
from reward.serving.batcher import DynamicBatcher


class _LengthScorer:
    """Score = len(response) + 100 * group size; refuses any batch with a response "BAD" (ValueError)."""

    def __init__(self):
        self.calls = []

    def score_groups(self, groups):
        self.calls.append([len(g.responses) for g in groups])
        if any("BAD" in r for g in groups for r in g.responses):
            raise ValueError("BAD response")
        return [[len(r) + 100 * len(g.responses) for r in g.responses] for g in groups]


def _unit(key, response, tokens=10):
    return Unit(key, [{"role": "user", "content": [{"type": "text", "text": key}]}], [], response, tokens, response)


async def _run(batcher, requests):
    await batcher.start()
    futures = [batcher.submit(units) for units in requests]
    results = [await asyncio.gather(*f, return_exceptions=True) for f in futures]
    await batcher.stop()
    return results


def test_units_sharing_a_key_are_one_group_and_budgets_cut_batches():
    scorer = _LengthScorer()
    batcher = DynamicBatcher(scorer, max_batch_items=5, max_batch_tokens=1000, max_wait_ms=50)
    requests = [[_unit("p", "a" * k)] for k in range(1, 5)] + [[_unit("q", "xy"), _unit("q", "z", tokens=10)]]
    results = asyncio.run(_run(batcher, requests))
    assert scorer.calls == [[4, 1], [1]]  # 5 items per call: p's four completions are one group, q is cut
    assert [r[0] for r in results[:4]] == [401, 402, 403, 404]
    assert results[4] == [102, 101]


def test_token_budget_and_no_merging():
    scorer = _LengthScorer()
    batcher = DynamicBatcher(scorer, max_batch_items=8, max_batch_tokens=25, max_wait_ms=50, group_merging=False)
    asyncio.run(_run(batcher, [[_unit("p", "a")], [_unit("p", "b")], [_unit("p", "c")]]))
    assert scorer.calls == [[1, 1], [1]]  # 10 + 10 tokens fit in 25, the third opens the next call


def test_a_bad_item_fails_only_itself():
    scorer = _LengthScorer()
    batcher = DynamicBatcher(scorer, max_batch_items=8, max_wait_ms=50)
    good, bad = [_unit("p", "ok")], [_unit("p", "BAD"), _unit("q", "fine")]
    results = asyncio.run(_run(batcher, [good, bad]))
    assert results[0] == [102]  # scored alone after the merged call failed
    assert isinstance(results[1][0], RequestError) and results[1][0].status == 422 and results[1][0].item == "BAD"
    assert results[1][1] == 104


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_openrlhf_queries_parse_back_to_the_same_chat(tiny_vlm_path, n_images):
    from common.processor import load_processor

    processor = load_processor(str(tiny_vlm_path))
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": "What is\nshown?"}]
    prompt = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
              {"role": "user", "content": content}]  # fmt: skip
    full = prompt + [{"role": "assistant", "content": [{"type": "text", "text": "A red\nsquare."}]}]
    text = processor.apply_chat_template(full, tokenize=False)
    query = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) + "A red\nsquare."
    for q in (text, query + "<|im_end|><|endoftext|><|endoftext|>", query):  # closed, padded, truncated
        messages, response = parse_qwen_chat(q, "query[0]")
        assert response == "A red\nsquare." and messages == prompt
        assert processor.apply_chat_template(messages + [full[-1]], tokenize=False) == text
    with pytest.raises(RequestError, match="end with the assistant"):
        parse_qwen_chat(processor.apply_chat_template(prompt, tokenize=False), "query[0]")


def test_app_in_process_overload_and_internal_errors(tiny_vlm_path):
    """The app on a stub scorer: a full queue answers 503 (the client retries), a bug answers 500 in our format."""
    from fastapi.testclient import TestClient

    from common.processor import load_processor
    from reward.serving.app import ServeConfig, create_app

    scorer = _LengthScorer()
    scorer.processor = load_processor(str(tiny_vlm_path))
    items = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": r}]} for r in "ab"]
    with TestClient(create_app(scorer, ServeConfig(max_queue_items=2))) as client:
        assert client.post("/v1/score", json={"items": items}).json()["scores"] == [201, 201]
    with TestClient(create_app(scorer, ServeConfig(max_queue_items=1))) as client:
        r = client.post("/v1/score", json={"items": items})
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded"
        scorer.processor.apply_chat_template = lambda *a, **k: 1 / 0  # a bug inside request parsing
        r = client.post("/v1/score", json={"items": items[:1]})
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        assert client.get("/health").json() == {"status": "ok"}
