"""Request validation for the reward server: every item is checked and turned into `Unit`s before it is batched.

A `Unit` is one response to score with its prompt and decoded images. Units whose prompt messages and image bytes
are equal share a `key`, so the batcher can score K completions of one prompt, sent as K separate requests, as one
group. Anything wrong with an item raises `RequestError` naming it (`items[3].images[0]`), with the HTTP status.

Work is done cheapest first, so a request over a limit is refused before it costs anything:

1. `plan_*`: the body's shape, the counts (items, responses, images) and the text lengths, into a `Plan`
   (no image read, nothing tokenized).
2. the image URLs are fetched (`reward.serving.fetch`, by the app).
3. `inspect`: each distinct image's bytes and header: the pixels it will hold once decoded and resized to the
   processor's size, against the request's pixel budget (the app then reserves them in the queue's budget).
4. `decode`: the pixels (each image shrunk to the processor's size as soon as it is decoded) and the token counts.

Three request shapes are accepted (docs/serving.md): `/v1/score` items (TRL conversational messages, or OpenAI-style
`image_url` parts), `/v1/score_groups` groups, and OpenRLHF's `/get_reward` chat-formatted queries, which are parsed
back into messages with `parse_qwen_chat`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from reward.serving.images import (
    ImagePolicy,
    ImageRefused,
    check_url_allowed,
    decode,
    is_url,
    read_header,
    read_image_bytes,
)

ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A refused request or item: `{"error": {"type", "message", "item"}}` with HTTP `status`."""

    def __init__(self, status: int, kind: str, message: str, item: str | None = None):
        super().__init__(f"{item}: {message}" if item else message)
        self.status, self.kind, self.message, self.item = status, kind, message, item

    def to_json(self) -> dict:
        return {"error": {"type": self.kind, "message": self.message, "item": self.item}}


@dataclass
class Limits:
    """Per-request limits (the server's flags)."""

    max_items_per_request: int = 256
    max_images_per_item: int = 8
    max_item_tokens: int = 8192
    max_item_chars: int = 65536
    max_request_pixels: int = 2**26
    images: ImagePolicy = field(default_factory=ImagePolicy)


@dataclass
class Unit:
    """One response to score: `key` is equal for units that may be scored in one group (same prompt and images)."""

    key: str
    prompt: list[dict]
    images: list[Image.Image]
    response: str
    tokens: int
    ref: str


@dataclass
class Pending:
    """One response to score, checked for shape and size but not yet read: `ref` names it in errors, `images_at` its
    images (`items[3]` -> `items[3].images[0]`)."""

    prompt: list[dict]
    refs: list[str]
    response: str
    ref: str
    images_at: str


@dataclass
class Plan:
    """A request after the cheap checks: its responses, and each group's size (`/v1/score_groups`)."""

    pending: list[Pending]
    sizes: list[int] | None = None

    def urls(self) -> dict[str, str]:
        """Each image URL, with the first image it is for (what a failed fetch names)."""
        out = {}
        for p in self.pending:
            for j, ref in enumerate(p.refs):
                if is_url(ref):
                    out.setdefault(ref, f"{p.images_at}.images[{j}]")
        return out


@dataclass
class _Image:
    data: bytes
    digest: str
    size: tuple[int, int]  # (width, height) once resized to the processor's size
    pixels: int  # what the decoded image holds: the resized size when smaller, else the original
    tokens: int
    decoded: Image.Image | None = None


@dataclass
class Inspected:
    """The images of a `Plan`, read and their headers checked, not decoded: `pixels` is what they will hold."""

    plan: Plan
    by_ref: dict[str, _Image]
    pixels: int


class PixelBudget:
    """Decoded pixels held by all requests between parsing and scoring (thread-safe): `reserve` or 503."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0
        self._lock = threading.Lock()

    def reserve(self, pixels: int) -> None:
        with self._lock:
            if self.held + pixels > self.limit:
                raise RequestError(503, "overloaded", f"the queued requests' images fill the server's decoded-pixel "
                                   f"budget ({self.held} of {self.limit}); retry later")  # fmt: skip
            self.held += pixels

    def release(self, pixels: int) -> None:
        with self._lock:
            self.held -= pixels


def group_key(prompt: list[dict], image_digests: list[str]) -> str:
    """Equal for equal prompt messages and equal image bytes, in order."""
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256("\x00".join([text, *image_digests]).encode()).hexdigest()


def _expect(value: Any, kind: type | tuple, where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise RequestError(400, "invalid_request", f"{what} expected, got {type(value).__name__}", where)
    return value


# Qwen chat format (what OpenRLHF's remote reward model receives): turns and image placeholders.
_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(?:<\|im_end\|>\n?|\Z)", re.S)
_IMAGE = re.compile(r"<\|vision_start\|>(?:<\|image_pad\|>)+<\|vision_end\|>")
_PAD = "<|endoftext|>"


def parse_qwen_chat(text: str, where: str) -> tuple[list[dict], str]:
    """Split a Qwen-chat-formatted prompt + response back into (prompt messages, response text).

    Image placeholders become `{"type": "image"}` parts; padding tokens at either end are dropped. Re-applying the
    chat template to `prompt + [assistant response]` gives the same text (with `<|im_end|>` closing the response).
    """
    while text.startswith(_PAD):
        text = text[len(_PAD) :]
    while text.endswith(_PAD):
        text = text[: -len(_PAD)]
    turns, pos = [], 0
    for m in _TURN.finditer(text):
        if m.start() != pos:
            break
        turns.append((m.group(1), m.group(2)))
        pos = m.end()
    if pos != len(text) or not turns:
        raise RequestError(400, "invalid_query", "not in the Qwen chat format (<|im_start|>role ... <|im_end|>)", where)
    if turns[-1][0] != "assistant":
        raise RequestError(400, "invalid_query", "the query must end with the assistant's response", where)
    if "<|video_pad|>" in text:
        raise RequestError(400, "invalid_query", "videos are not supported", where)
    messages = []
    for role, body in turns[:-1]:
        parts, start = [], 0
        for m in _IMAGE.finditer(body):
            if m.start() > start:
                parts.append({"type": "text", "text": body[start : m.start()]})
            parts.append({"type": "image"})
            start = m.end()
        if start < len(body) or not parts:
            parts.append({"type": "text", "text": body[start:]})
        messages.append({"role": role, "content": parts})
    return messages, turns[-1][1]


class RequestParser:
    """Validates request bodies into `Unit`s, cheapest checks first (module docstring). Thread-safe.

    Args:
        processor: the reward model's processor (chat template, tokenizer, image resize bounds and filter).
        limits: the server's limits.
    """

    def __init__(self, processor, limits: Limits):
        self.processor, self.limits = processor, limits
        ip = processor.image_processor
        self._factor = ip.patch_size * ip.merge_size
        self._min_pixels, self._max_pixels = ip.size.shortest_edge, ip.size.longest_edge
        self._resample = getattr(ip, "resample", 3)  # PIL's BICUBIC, Qwen-VL's default

    # -------------------------------------------------------------------------------------------- 1. plans
    def plan_score(self, body: Any) -> Plan:
        items = self._list_field(body, "items")
        pending = []
        for i, item in enumerate(items):
            where = f"items[{i}]"
            _expect(item, dict, where, "an object with messages and images")
            messages = _expect(item.get("messages"), list, f"{where}.messages", "a list of messages")
            prompt, refs = self._normalize(messages, self._images(item, where), where)
            if not prompt or prompt[-1]["role"] != "assistant":
                raise RequestError(400, "invalid_request", "the last message must be the assistant's response", where)
            response = self._text_only(prompt[-1], f"{where}.messages[{len(prompt) - 1}]")
            self._check_prompt(prompt[:-1], f"{where}.messages")
            pending.append(self._pending(prompt[:-1], refs, response, where, where))
        return self._urls_allowed(Plan(pending))

    def plan_groups(self, body: Any) -> Plan:
        """All groups' responses, flat, and each group's size; the response count is checked as it grows."""
        groups = self._list_field(body, "groups")
        pending, sizes = [], []
        for g, group in enumerate(groups):
            where = f"groups[{g}]"
            _expect(group, dict, where, "an object with prompt, images and responses")
            prompt_in = _expect(group.get("prompt"), list, f"{where}.prompt", "a list of messages")
            responses = _expect(group.get("responses"), list, f"{where}.responses", "a list of strings")
            if not responses:
                raise RequestError(400, "invalid_request", "no responses to score", f"{where}.responses")
            n = len(pending) + len(responses)
            if n > self.limits.max_items_per_request:
                raise RequestError(413, "too_many_items", f"{n} or more responses, more than "
                                   f"{self.limits.max_items_per_request} per request", f"{where}.responses")  # fmt: skip
            prompt, refs = self._normalize(prompt_in, self._images(group, where), where)
            self._check_prompt(prompt, f"{where}.prompt")
            for k, r in enumerate(responses):
                _expect(r, str, f"{where}.responses[{k}]", "a string")
                pending.append(self._pending(prompt, refs, r, f"{where}.responses[{k}]", where))
            sizes.append(len(responses))
        return self._urls_allowed(Plan(pending, sizes))

    def plan_get_reward(self, body: Any) -> Plan:
        queries = self._list_field(body, "query")
        images = body.get("images")
        if images is not None:
            _expect(images, list, "images", "a list (one list of images per query)")
            if len(images) != len(queries):
                raise RequestError(400, "invalid_request", f"{len(images)} image lists for {len(queries)} queries",
                                   "images")  # fmt: skip
        pending = []
        for i, query in enumerate(queries):
            where = f"query[{i}]"
            _expect(query, str, where, "a chat-formatted string")
            self._check_chars(len(query), where)
            prompt, response = parse_qwen_chat(query, where)
            refs = _expect(images[i], list, f"images[{i}]", "a list of images") if images is not None else []
            n_placeholders = sum(p["type"] == "image" for m in prompt for p in m["content"])
            if n_placeholders != len(refs):
                raise RequestError(400, "image_count_mismatch", f"{n_placeholders} image placeholder(s) in the query "
                                   f"but {len(refs)} image(s) given in images[{i}]", where)  # fmt: skip
            self._check_prompt(prompt, where)
            pending.append(self._pending(prompt, refs, response, where, where))
        return self._urls_allowed(Plan(pending))

    # -------------------------------------------------------------------------------------------- 3. inspect
    def inspect(self, plan: Plan, fetched: dict[str, bytes] | None = None) -> Inspected:
        """Read each distinct image's bytes and header (nothing decoded) and check the request's pixel budget."""
        by_ref, by_digest = {}, {}
        for p in plan.pending:
            for j, ref in enumerate(p.refs):
                if ref in by_ref:
                    continue
                where = f"{p.images_at}.images[{j}]"
                try:
                    data = read_image_bytes(ref, self.limits.images, fetched)
                    digest = hashlib.sha256(data).hexdigest()
                    if digest not in by_digest:
                        by_digest[digest] = self._header(data, digest)
                except ImageRefused as e:
                    raise RequestError(e.status, e.kind, str(e), where) from None
                except ValueError as e:  # smart_resize's bounds
                    raise RequestError(400, "invalid_image", str(e), where) from None
                by_ref[ref] = by_digest[digest]
        pixels = sum(im.pixels for im in by_digest.values())
        if pixels > self.limits.max_request_pixels:
            raise RequestError(413, "too_many_pixels", f"the request's images hold {pixels} pixels once decoded and "
                               f"resized, more than {self.limits.max_request_pixels}")  # fmt: skip
        return Inspected(plan, by_ref, pixels)

    def _header(self, data: bytes, digest: str) -> _Image:
        width, height = read_header(data, self.limits.images)
        h, w = smart_resize(height, width, self._factor, self._min_pixels, self._max_pixels)
        tokens = (h // self._factor) * (w // self._factor)
        return _Image(data, digest, (w, h), min(w * h, width * height), tokens)

    # -------------------------------------------------------------------------------------------- 4. decode
    def decode(self, inspected: Inspected) -> list[Unit]:
        """The units: images decoded (each once, shrunk to the processor's size at once) and tokens counted."""
        units = []
        for p in inspected.plan.pending:
            images = []
            for j, ref in enumerate(p.refs):
                im = inspected.by_ref[ref]
                if im.decoded is None:
                    try:
                        im.decoded = decode(im.data, self.limits.images, im.size, self._resample)
                    except ImageRefused as e:
                        raise RequestError(e.status, e.kind, str(e), f"{p.images_at}.images[{j}]") from None
                    im.data = b""  # the encoded bytes are no longer needed
                images.append(im)
            units.append(self._unit(p, images))
        return units

    def _unit(self, p: Pending, images: list[_Image]) -> Unit:
        text = self.processor.apply_chat_template(
            p.prompt + [{"role": "assistant", "content": [{"type": "text", "text": p.response}]}], tokenize=False
        )
        n_text = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        tokens = sum(im.tokens for im in images) + n_text - len(images)  # one placeholder token per image expands
        if tokens > self.limits.max_item_tokens:
            raise RequestError(413, "too_many_tokens", f"{tokens} tokens, more than {self.limits.max_item_tokens} "
                               "per item", p.ref)  # fmt: skip
        key = group_key(p.prompt, [im.digest for im in images])
        return Unit(key, p.prompt, [im.decoded for im in images], p.response, tokens, p.ref)

    # -------------------------------------------------------------------------------------------- helpers
    def _list_field(self, body: Any, name: str) -> list:
        _expect(body, dict, None, "a JSON object")
        value = body.get(name)
        if not isinstance(value, list) or not value:
            raise RequestError(400, "invalid_request", f"`{name}` must be a non-empty list", name)
        if len(value) > self.limits.max_items_per_request:
            raise RequestError(413, "too_many_items", f"{len(value)} entries, more than "
                               f"{self.limits.max_items_per_request} per request", name)  # fmt: skip
        return value

    def _urls_allowed(self, plan: Plan) -> Plan:
        """`plan`, unless it has a URL and URLs are off (403 before anything is fetched)."""
        urls = plan.urls()
        try:
            if urls:
                check_url_allowed(self.limits.images)
        except ImageRefused as e:
            raise RequestError(e.status, e.kind, str(e), next(iter(urls.values()))) from None
        return plan

    @staticmethod
    def _images(obj: dict, where: str) -> list:
        images = obj.get("images")
        return [] if images is None else _expect(images, list, f"{where}.images", "a list of images")

    @staticmethod
    def _check_prompt(prompt: list[dict], where: str) -> None:
        if not any(m["role"] == "user" for m in prompt):
            raise RequestError(400, "invalid_request", "the prompt needs a user message", where)

    def _check_chars(self, n: int, where: str) -> None:
        if n > self.limits.max_item_chars:
            raise RequestError(413, "text_too_long", f"{n} characters of text, more than "
                               f"{self.limits.max_item_chars} per item", where)  # fmt: skip

    def _pending(self, prompt: list[dict], refs: list, response: str, ref: str, images_at: str) -> Pending:
        chars = len(response) + sum(len(p.get("text", "")) for m in prompt for p in m["content"])
        self._check_chars(chars, ref)
        for j, image in enumerate(refs):
            if not isinstance(image, str) or not image:
                raise RequestError(400, "invalid_image", "an image must be a non-empty string (data URI, path or URL), "
                                   f"got {type(image).__name__}", f"{images_at}.images[{j}]")  # fmt: skip
        return Pending(prompt, refs, response, ref, images_at)

    def _normalize(self, messages: list, images: list, where: str) -> tuple[list[dict], list[str]]:
        """Messages with list content (`text` / `image` placeholder parts) and the image refs in placeholder order."""
        out, refs, next_image = [], [], 0
        for m, msg in enumerate(messages):
            at = f"{where}.messages[{m}]"
            _expect(msg, dict, at, "a message object")
            role = msg.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise RequestError(400, "invalid_request", f"role must be one of {ROLES}", f"{at}.role")
            content = msg.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            _expect(content, list, f"{at}.content", "a string or a list of parts")
            parts = []
            for p, part in enumerate(content):
                _expect(part, dict, f"{at}.content[{p}]", "a content part")
                kind = part.get("type")
                image_url = part.get("image_url")
                if kind == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                elif kind == "image":
                    if isinstance(part.get("image"), str):
                        refs.append(part["image"])
                    elif next_image < len(images):
                        refs.append(images[next_image])
                        next_image += 1
                    else:
                        raise RequestError(400, "image_count_mismatch", "more image placeholders than images", where)
                    parts.append({"type": "image"})
                elif kind == "image_url" and isinstance(image_url, dict) and isinstance(image_url.get("url"), str):
                    refs.append(image_url["url"])
                    parts.append({"type": "image"})
                else:
                    raise RequestError(400, "invalid_request", "a part must be {type: text, text: str}, "
                                       "{type: image} or {type: image_url, image_url: {url: str}}",
                                       f"{at}.content[{p}]")  # fmt: skip
                if len(refs) > self.limits.max_images_per_item:
                    raise RequestError(413, "too_many_images", f"more than {self.limits.max_images_per_item} "
                                       "images per item", where)  # fmt: skip
            out.append({"role": role, "content": parts})
        if next_image != len(images):
            raise RequestError(400, "image_count_mismatch", f"{len(images)} images but {next_image} placeholders "
                               "use them", where)  # fmt: skip
        return out, refs

    @staticmethod
    def _text_only(message: dict, where: str) -> str:
        if any(p["type"] != "text" for p in message["content"]):
            raise RequestError(400, "invalid_request", "the response must be text only", where)
        return "".join(p["text"] for p in message["content"])
