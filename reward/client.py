"""`RewardClient`: the reward server (docs/serving.md) behind the same `score` / `score_groups` as `RewardScorer`.

    client = RewardClient(["http://10.0.0.1:8000", "http://10.0.0.2:8000"], api_key="...")
    client.score_groups([ScoringGroup(prompt, [image], ["answer A", "answer B"])])   # -> [[float, float]]

It is a `common.scoring.Scorer`, so it plugs in wherever one is taken (pair building, the MPO eval hook). A large
call is cut into requests of at most `max_items_per_request` responses, spread over the URLs (replicas) and sent
concurrently; connection errors and 5xx are retried with exponential backoff on the next URL, a 4xx is raised at once
as `RewardServerError` naming the item. `model_info()` asks every replica which model it serves (`/info`) and
refuses replicas that disagree.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from common.errors import ExpectedError
from common.images import load_image
from common.scoring import ScoringGroup
from reward.serving.images import to_data_uri


class RewardServerError(ExpectedError, RuntimeError):
    """The server refused a request (4xx) or kept failing (5xx / unreachable after the retries)."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None, item: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.item = status, kind, item


def _messages_json(messages: Sequence[Mapping]) -> list[dict]:
    """Messages without in-memory images: image parts become `{"type": "image"}` placeholders."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [{"type": "image"} if p.get("type") == "image" else dict(p) for p in content]
        out.append({"role": m["role"], "content": content})
    return out


class RewardClient:
    """Scores through one or more reward servers.

    Args:
        urls: base URL(s) of the server replicas (`http://host:port`).
        api_key: sent as `Authorization: Bearer` (default: none).
        timeout: seconds per request.
        retries: extra attempts after a connection error or a 5xx.
        backoff_s: first retry delay, doubled each time.
        max_items_per_request: responses per request (a larger call is split across requests and URLs).
    """

    def __init__(self, urls: str | Sequence[str], api_key: str | None = None, timeout: float = 300.0,
                 retries: int = 3, backoff_s: float = 0.5, max_items_per_request: int = 64):  # fmt: skip
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("RewardClient needs at least one server URL")
        self.urls = [u.rstrip("/") for u in self.urls]
        self.retries, self.backoff_s, self.max_items = retries, backoff_s, max_items_per_request
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ protocol
    def score(self, conversations: Sequence[Mapping[str, Any]]) -> list[float]:
        """One float per conversation (`messages` ending with the assistant's response, and `images`)."""
        encode = _ImageEncoder()
        items = [{"messages": _messages_json(c["messages"]), "images": encode.all(c.get("images"))}
                 for c in conversations]  # fmt: skip
        chunks = [items[i : i + self.max_items] for i in range(0, len(items), self.max_items)]
        results = self._post_all("/v1/score", [{"items": c} for c in chunks])
        return [s for r in results for s in r["scores"]]

    def score_groups(self, groups: Sequence[ScoringGroup]) -> list[list[float]]:
        """`[[score of responses[k] for k] for each group]` (the `common.scoring.Scorer` protocol)."""
        encode = _ImageEncoder()
        # (group index, slice of its responses) per sub-group; groups larger than a request are cut
        pieces, chunks, current, n = [], [], [], 0
        for g, group in enumerate(groups):
            if not group.responses:
                raise ValueError(f"group #{g}: no responses to score")
            prompt, images = _messages_json(group.prompt), encode.all(group.images)
            for start in range(0, len(group.responses), self.max_items):
                responses = list(group.responses[start : start + self.max_items])
                if n + len(responses) > self.max_items and current:
                    chunks.append(current)
                    current, n = [], 0
                current.append({"prompt": prompt, "images": images, "responses": responses})
                pieces.append(g)
                n += len(responses)
        if current:
            chunks.append(current)
        results = self._post_all("/v1/score_groups", [{"groups": c} for c in chunks])
        out: list[list[float]] = [[] for _ in groups]
        for g, scores in zip(pieces, (s for r in results for s in r["scores"]), strict=True):
            out[g].extend(scores)
        return out

    def model_info(self) -> dict:
        """The served model's `/info` (`model_fingerprint`, `dtype`, ...), the same on every URL.

        Raises:
            RewardServerError: a replica is unreachable, reports no fingerprint (an older server), or serves another
                model (fingerprint or dtype) than the first URL.
        """
        infos = [self._get(url, "/info") for url in self.urls]
        first, want = self.urls[0], _served(infos[0])
        if want[0] is None:
            raise RewardServerError(f"{first}/info reports no model_fingerprint: upgrade the reward server")
        for url, info in zip(self.urls[1:], infos[1:]):
            if _served(info) != want:
                raise RewardServerError(f"the reward servers serve different models: {first} has (fingerprint, dtype)"
                                        f" {want}, {url} has {_served(info)}")  # fmt: skip
        return infos[0]

    # ------------------------------------------------------------------------------------------------ transport
    def _get(self, url: str, path: str) -> dict:
        """GET `url + path`, retrying connection errors and 5xx on the same URL."""
        return self._request("GET", [url], path)

    def _post_all(self, path: str, bodies: list[dict]) -> list[dict]:
        if len(bodies) == 1:
            return [self._post(path, bodies[0], 0)]
        with ThreadPoolExecutor(max_workers=min(len(bodies), 4 * len(self.urls))) as pool:
            return list(pool.map(lambda ib: self._post(path, ib[1], ib[0]), enumerate(bodies)))

    def _post(self, path: str, body: dict, first_url: int) -> dict:
        """POST `body` to one replica (request i starts at URL i), retrying 5xx / connection errors on the next."""
        start = first_url % len(self.urls)
        return self._request("POST", self.urls[start:] + self.urls[:start], path, body)

    def _request(self, method: str, urls: list[str], path: str, body: dict | None = None) -> dict:
        """`method` on `urls[attempt % len(urls)] + path` until a 200; a 4xx raises at once (the request is wrong),
        connection errors and 5xx are retried with exponential backoff."""
        last = None
        for attempt in range(self.retries + 1):
            url = urls[attempt % len(urls)] + path
            try:
                r = self._http.request(method, url, json=body)
            except httpx.TransportError as e:
                last = f"{url}: {type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return r.json()
                error = _error_of(r)
                if r.status_code < 500:
                    where = f" ({error.get('item')})" if error.get("item") else ""
                    raise RewardServerError(f"{url} refused the request{where}: HTTP {r.status_code}: "
                                            f"{error.get('message')}", r.status_code, error.get("type"),
                                            error.get("item"))  # fmt: skip
                last = f"{url}: HTTP {r.status_code}: {error.get('message')}"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise RewardServerError(f"reward server failed after {self.retries + 1} attempts; last: {last}")


def _served(info: dict) -> tuple[str | None, str | None]:
    return info.get("model_fingerprint"), info.get("dtype")


def _error_of(response: httpx.Response) -> dict:
    try:
        return response.json().get("error") or {}
    except ValueError:
        return {"message": response.text[:200]}


class _ImageEncoder:
    """Data URIs for a call's images, each distinct object encoded once (K responses share one image)."""

    def __init__(self):
        self._cache: dict[int, str] = {}

    def one(self, image: Any) -> str:
        if isinstance(image, str) and image.startswith(("data:", "http://", "https://")):
            return image
        key = id(image)
        if key not in self._cache:
            self._cache[key] = to_data_uri(load_image(image))
        return self._cache[key]

    def all(self, images: Sequence | None) -> list[str]:
        return [self.one(im) for im in images or []]
