"""The reward server: a FastAPI app around a `RewardScorer` with dynamic batching (docs/serving.md).

    python recipes/serve_reward.py --model outputs/reward-tiny --port 8000

Endpoints: `POST /v1/score`, `POST /v1/score_groups`, `POST /get_reward` (OpenRLHF's remote reward model),
`GET /health`, `GET /info` (limits, model, dtype and `model_fingerprint`: the content hash of the model folder that
`common.run_folder` records for a local model, which runs scoring through the server record instead of its URLs),
`GET /metrics` (Prometheus). Errors, 404 and 405 included, are `{"error": {"type", "message", "item"}}` with a 4xx
(503: overloaded or shutting down, retry; 5xx otherwise only for a model failure). With an API key, every endpoint
but `/health` needs it, and the OpenAPI pages are off.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.config_checks import raise_problems
from common.run_folder import fingerprint
from reward.serving.api import Limits, PixelBudget, RequestError, RequestParser
from reward.serving.batcher import DynamicBatcher
from reward.serving.fetch import UrlFetcher, parse_allowlist
from reward.serving.images import ImagePolicy

API_KEY_ENV = "VLRM_API_KEY"
VERSION = "0.1.0"


@dataclass
class ServeConfig:
    """Where the server listens, what it accepts, how it batches (`ScorerConfig` loads the model)."""

    host: str = field(default="127.0.0.1", metadata={"help": "Interface to listen on (0.0.0.0 exposes it)."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    api_key: str | None = field(
        default=None, metadata={"help": f"Required key (Bearer or X-API-Key); default: ${API_KEY_ENV} if set."}
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Allow image file paths, only inside this folder (default: no paths)."}
    )
    allow_urls: bool = field(default=False, metadata={"help": "Fetch http(s) image URLs (default: refused)."})
    url_allowlist: list[str] = field(
        default_factory=list,
        metadata={"help": "Hosts or CIDRs fetched even when internal (loopback, private, ...: refused otherwise)."},
    )
    url_timeout_s: float = field(default=10.0, metadata={"help": "Total deadline of a request's URL fetches."})
    max_concurrent_fetches: int = field(default=8, metadata={"help": "Most URL fetches in flight, all requests."})
    max_request_mb: float = field(default=16.0, metadata={"help": "Largest request body in MB."})
    max_items_per_request: int = field(default=256, metadata={"help": "Most items (responses) in one request."})
    max_images_per_item: int = field(default=8, metadata={"help": "Most images in one item."})
    max_image_mb: float = field(default=8.0, metadata={"help": "Largest encoded image in MB."})
    max_image_pixels: int = field(default=4096 * 4096, metadata={"help": "Largest image (width x height) decoded."})
    max_item_tokens: int = field(default=8192, metadata={"help": "Most tokens in one item, image tokens included."})
    max_item_chars: int = field(
        default=65536, metadata={"help": "Most characters of text in one item (checked before tokenizing)."}
    )
    max_request_pixels: int = field(
        default=2**26, metadata={"help": "Most pixels a request's images hold once decoded and resized (~4 B each)."}
    )
    max_queue_pixels: int = field(
        default=2**28, metadata={"help": "Most decoded pixels held by all requests not yet scored (then 503)."}
    )
    parse_threads: int = field(
        default=4, metadata={"help": "Threads decoding images and tokenizing (each holds one full-size image)."}
    )
    max_batch_items: int = field(default=32, metadata={"help": "Most responses in one model call."})
    max_batch_tokens: int = field(default=65536, metadata={"help": "Most tokens in one model call."})
    max_wait_ms: float = field(default=5.0, metadata={"help": "How long a batch waits to fill after its first item."})
    max_queue_items: int = field(
        default=4096, metadata={"help": "Items waiting for the model beyond which requests get 503 (retry later)."}
    )
    group_merging: bool = field(
        default=True, metadata={"help": "Score items sharing prompt and images (across requests) as one group."}
    )
    served_model_name: str | None = field(
        default=None, metadata={"help": "Name reported in responses (default: path)."}
    )
    graceful_shutdown_s: float = field(default=60.0, metadata={"help": "On SIGTERM, wait this long for requests."})

    def __post_init__(self):
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None

    def validate(self) -> None:
        problems = []
        for name in ("max_request_mb", "max_items_per_request", "max_images_per_item", "max_image_mb",
                     "max_image_pixels", "max_item_tokens", "max_item_chars", "max_request_pixels", "max_queue_pixels",
                     "parse_threads", "max_batch_items", "max_batch_tokens", "max_queue_items", "url_timeout_s",
                     "max_concurrent_fetches"):  # fmt: skip
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)}: must be > 0")
        if self.max_queue_pixels < self.max_request_pixels:
            problems.append(f"max_queue_pixels={self.max_queue_pixels} < max_request_pixels="
                            f"{self.max_request_pixels}: a full request could never be queued")  # fmt: skip
        if self.url_allowlist and not self.allow_urls:
            problems.append("url_allowlist is set but allow_urls is not: no URL would be fetched")
        try:
            parse_allowlist(self.url_allowlist)
        except ValueError as e:
            problems.append(str(e))
        if self.max_wait_ms < 0:
            problems.append(f"max_wait_ms={self.max_wait_ms}: must be >= 0")
        if self.max_batch_tokens < self.max_item_tokens:
            problems.append(f"max_batch_tokens={self.max_batch_tokens} < max_item_tokens={self.max_item_tokens}: "
                            "an item could never be scored")  # fmt: skip
        if self.image_root is not None and not os.path.isdir(self.image_root):
            problems.append(f"image_root={self.image_root!r} is not a folder")
        raise_problems("ServeConfig", problems)

    def limits(self) -> Limits:
        policy = ImagePolicy(max_image_bytes=int(self.max_image_mb * 2**20), max_image_pixels=self.max_image_pixels,
                             image_root=self.image_root, allow_urls=self.allow_urls, url_allowlist=self.url_allowlist,
                             url_timeout_s=self.url_timeout_s,
                             max_concurrent_fetches=self.max_concurrent_fetches)  # fmt: skip
        return Limits(self.max_items_per_request, self.max_images_per_item, self.max_item_tokens, self.max_item_chars,
                      self.max_request_pixels, policy)  # fmt: skip

    def public(self) -> dict:
        """Everything but the key (what /info reports)."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"} | {"api_key_required": bool(self.api_key)}


class _Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "reward_requests", "Requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.items = Counter("reward_items", "Items (responses) scored.", registry=r)
        self.errors = Counter("reward_errors", "Errors by type.", ["type"], registry=r)
        self.latency = Histogram("reward_request_seconds", "Request latency.", ["endpoint"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))  # fmt: skip
        self.batch_items = Histogram("reward_batch_items", "Items per model call.", registry=r,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.batch_groups = Histogram("reward_batch_groups", "Groups per model call.", registry=r,
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.queue_depth = Gauge("reward_queue_depth", "Items waiting for the model.", registry=r)
        self.in_flight = Gauge("reward_requests_in_flight", "Requests being handled.", registry=r)

    def on_batch(self, n_items: int, n_groups: int) -> None:
        self.batch_items.observe(n_items)
        self.batch_groups.observe(n_groups)
        self.items.inc(n_items)


async def _read_json(request: Request, limit: int):
    """The body as JSON, refused (413) past `limit` bytes before it is all read."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(413, "body_too_large", f"request body of {length} bytes, more than {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, "body_too_large", f"request body larger than {limit} bytes")
    try:
        return json.loads(body)
    except ValueError as e:
        raise RequestError(400, "invalid_json", f"malformed JSON: {e}") from None
    except RecursionError:
        raise RequestError(400, "invalid_json", "JSON nested too deeply") from None


class _Drain:
    """The SIGTERM drain clock: `expired` resolves `graceful_shutdown_s` after the signal; requests still running
    then answer 503 (retry elsewhere) instead of being cut by the server."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.loop: asyncio.AbstractEventLoop | None = None
        self.expired: asyncio.Future | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.expired = self.loop.create_future()

    def begin(self) -> None:
        """Start the clock (any thread, a signal handler included)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        self.loop.call_later(self.seconds, lambda: self.expired.done() or self.expired.set_result(None))


def create_app(scorer, cfg: ServeConfig, model_info: dict | None = None) -> FastAPI:
    """The ASGI app serving `scorer` (a `RewardScorer`) under `cfg`'s limits. `app.state.drain.begin()` starts the
    shutdown clock (`serve` calls it on SIGTERM)."""
    metrics = _Metrics()
    limits = cfg.limits()
    parser = RequestParser(scorer.processor, limits)
    fetcher = UrlFetcher(limits.images)
    pixels = PixelBudget(cfg.max_queue_pixels)
    parse_pool = ThreadPoolExecutor(max_workers=cfg.parse_threads, thread_name_prefix="reward-parse")
    batcher = DynamicBatcher(scorer, cfg.max_batch_items, cfg.max_batch_tokens, cfg.max_wait_ms, cfg.group_merging,
                             on_batch=metrics.on_batch)  # fmt: skip
    metrics.queue_depth.set_function(batcher.depth)
    drain = _Drain(cfg.graceful_shutdown_s)
    info = {"version": VERSION, "limits": cfg.public(), **(model_info or {})}
    model_name = info.get("model", "reward-model")
    limit = int(cfg.max_request_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app):
        drain.start()
        await batcher.start()
        yield
        await batcher.stop(wait=not drain.expired.done())
        await fetcher.aclose()
        parse_pool.shutdown(wait=False, cancel_futures=True)

    docs = {} if not cfg.api_key else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="vlrm-mpo reward server", version=VERSION, lifespan=lifespan, **docs)
    app.state.drain = drain

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        error = RequestError(e.status_code, kind, f"{request.method} {request.url.path}: {e.detail}")
        return JSONResponse(error.to_json(), status_code=e.status_code, headers=getattr(e, "headers", None))

    def check_key(request: Request) -> None:
        if not cfg.api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if not given:
            raise RequestError(401, "unauthorized", "missing API key (Authorization: Bearer or X-API-Key)")
        if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise RequestError(403, "forbidden", "wrong API key")

    async def work(request: Request, plan_of, respond) -> Response:
        """Cheapest checks first: key, body size, shape and counts, URLs, headers and pixel budgets, then pixels."""
        loop = asyncio.get_running_loop()
        check_key(request)
        body = await _read_json(request, limit)
        plan = await loop.run_in_executor(parse_pool, plan_of, body)
        if batcher.depth() + len(plan.pending) > cfg.max_queue_items:
            raise RequestError(503, "overloaded", f"{batcher.depth()} items queued; retry later")
        fetched = await fetcher.fetch_all(plan.urls(), limit)
        inspected = await loop.run_in_executor(parse_pool, parser.inspect, plan, fetched)
        held = inspected.pixels
        pixels.reserve(held)
        try:
            units = await loop.run_in_executor(parse_pool, parser.decode, inspected)
            scores = await asyncio.gather(*batcher.submit(units))
        finally:
            pixels.release(held)
        return JSONResponse(respond(scores, plan))

    async def handle(request: Request, endpoint: str, plan_of, respond) -> Response:
        start = time.perf_counter()
        metrics.in_flight.inc()
        status = 200
        task = asyncio.ensure_future(work(request, plan_of, respond))
        try:
            await asyncio.wait({task, drain.expired}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                raise RequestError(503, "shutting_down", "the server is shutting down; retry (on another replica)")
            response = task.result()
        except RequestError as e:
            status = e.status
            metrics.errors.labels(e.kind).inc()
            response = JSONResponse(e.to_json(), status_code=e.status)
        except Exception as e:  # a bug, not the client's fault: still our error format, and counted
            status = 500
            metrics.errors.labels("internal_error").inc()
            error = RequestError(500, "internal_error", f"{type(e).__name__}: {e}")
            response = JSONResponse(error.to_json(), status_code=500)
        finally:
            metrics.in_flight.dec()
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        return await handle(request, "score", parser.plan_score, lambda s, _: {"scores": s, "model": model_name})

    @app.post("/v1/score_groups")
    async def score_groups(request: Request) -> Response:
        def respond(scores, plan):
            out, start = [], 0
            for n in plan.sizes:
                out.append(scores[start : start + n])
                start += n
            return {"scores": out, "model": model_name}

        return await handle(request, "score_groups", parser.plan_groups, respond)

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Response:
        return await handle(request, "get_reward", parser.plan_get_reward,
                            lambda s, _: {"rewards": s, "scores": s, "extra_logs": {}})  # fmt: skip

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    def refused(request: Request) -> Response | None:
        """The 401/403 response for a GET without the right key, else None."""
        try:
            check_key(request)
        except RequestError as e:
            return JSONResponse(e.to_json(), status_code=e.status)
        return None

    @app.get("/info")
    async def get_info(request: Request) -> Response:
        return refused(request) or JSONResponse(info)

    @app.get("/metrics")
    async def get_metrics(request: Request) -> Response:
        return refused(request) or Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM / Ctrl-C starts the app's drain clock, and a clean shutdown exits 0 (uvicorn
    re-raises the signal once it has drained, so the process would die of it)."""

    def __init__(self, config: uvicorn.Config, drain: _Drain):
        super().__init__(config)
        self.drain = drain

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        self.drain.begin()


def serve(cfg: ServeConfig, scorer_cfg) -> None:
    """Load the model (`scorer_cfg`, a `reward.scorer.ScorerConfig`) and serve it until SIGTERM / Ctrl-C: requests in
    flight then get `graceful_shutdown_s` to finish, or a 503."""
    from reward.model import check_value_head
    from reward.scorer import RewardScorer

    cfg.validate()
    check_value_head(scorer_cfg.model_name_or_path, "--model")  # before the load
    options = {k: v for k, v in asdict(scorer_cfg).items() if k != "model_name_or_path"}
    options.update(progress=False, batch_size=cfg.max_batch_items)  # the batcher decides what one call holds
    scorer = RewardScorer.from_pretrained(scorer_cfg.model_name_or_path, **options)
    info = {"model": cfg.served_model_name or scorer_cfg.model_name_or_path, "dtype": scorer_cfg.dtype,
            "device": str(scorer.device), "model_fingerprint": fingerprint(scorer_cfg.model_name_or_path)}  # fmt: skip
    app = create_app(scorer, cfg, info)
    # uvicorn's own deadline comes after ours, so that the 503s of requests cut at ours are sent
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, timeout_graceful_shutdown=cfg.graceful_shutdown_s + 5,
                            access_log=False, log_level="info")  # fmt: skip
    _Server(config, app.state.drain).run()
