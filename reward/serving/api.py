"""Request validation for the reward server: every item is checked and turned into `Unit`s before it is batched.

A `Unit` is one response to score with its prompt and decoded images. Units whose prompt messages and image bytes
are equal share a `key`, so the batcher can score K completions of one prompt, sent as K separate requests, as one
group. Anything wrong with an item raises `RequestError` naming it (`items[3].images[0]`), with the HTTP status.

Three request shapes are accepted (docs/serving.md): `/v1/score` items (TRL conversational messages, or OpenAI-style
`image_url` parts), `/v1/score_groups` groups, and OpenRLHF's `/get_reward` chat-formatted queries, which are parsed
back into messages with `parse_qwen_chat`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from reward.serving.images import ImagePolicy, ImageRefused, open_checked, read_image_bytes

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
    """Validates request bodies into `Unit`s (runs in a worker thread: it decodes images and tokenizes).

    Args:
        processor: the reward model's processor (chat template, tokenizer, image resize bounds).
        limits: the server's limits.
    """

    def __init__(self, processor, limits: Limits):
        self.processor, self.limits = processor, limits
        ip = processor.image_processor
        self._factor = ip.patch_size * ip.merge_size
        self._min_pixels, self._max_pixels = ip.size.shortest_edge, ip.size.longest_edge

    # -------------------------------------------------------------------------------------------- request shapes
    def parse_score(self, body: Any) -> list[Unit]:
        items = self._list_field(body, "items")
        units = []
        for i, item in enumerate(items):
            where = f"items[{i}]"
            _expect(item, dict, where, "an object with messages and images")
            messages = _expect(item.get("messages"), list, f"{where}.messages", "a list of messages")
            prompt, refs = self._normalize(messages, item.get("images") or [], where)
            if not prompt or prompt[-1]["role"] != "assistant":
                raise RequestError(400, "invalid_request", "the last message must be the assistant's response", where)
            response = self._text_only(prompt[-1], f"{where}.messages[{len(prompt) - 1}]")
            units.append(self._unit(prompt[:-1], refs, response, where))
        return units

    def parse_groups(self, body: Any) -> tuple[list[Unit], list[int]]:
        """The units of all groups, flat, and each group's size."""
        groups = self._list_field(body, "groups")
        units, sizes = [], []
        for g, group in enumerate(groups):
            where = f"groups[{g}]"
            _expect(group, dict, where, "an object with prompt, images and responses")
            prompt_in = _expect(group.get("prompt"), list, f"{where}.prompt", "a list of messages")
            prompt, refs = self._normalize(prompt_in, group.get("images") or [], where)
            responses = _expect(group.get("responses"), list, f"{where}.responses", "a list of strings")
            if not responses:
                raise RequestError(400, "invalid_request", "no responses to score", f"{where}.responses")
            decoded = self._decode(refs, where)
            for k, r in enumerate(responses):
                _expect(r, str, f"{where}.responses[{k}]", "a string")
                units.append(self._unit(prompt, refs, r, f"{where}.responses[{k}]", decoded))
            sizes.append(len(responses))
        if len(units) > self.limits.max_items_per_request:
            raise RequestError(413, "too_many_items", f"{len(units)} responses, more than "
                               f"{self.limits.max_items_per_request} per request")  # fmt: skip
        return units, sizes

    def parse_get_reward(self, body: Any) -> list[Unit]:
        queries = self._list_field(body, "query")
        images = body.get("images")
        if images is not None:
            _expect(images, list, "images", "a list (one list of images per query)")
            if len(images) != len(queries):
                raise RequestError(400, "invalid_request", f"{len(images)} image lists for {len(queries)} queries",
                                   "images")  # fmt: skip
        units = []
        for i, query in enumerate(queries):
            where = f"query[{i}]"
            _expect(query, str, where, "a chat-formatted string")
            prompt, response = parse_qwen_chat(query, where)
            refs = _expect(images[i], list, f"images[{i}]", "a list of images") if images is not None else []
            n_placeholders = sum(p["type"] == "image" for m in prompt for p in m["content"])
            if n_placeholders != len(refs):
                raise RequestError(400, "image_count_mismatch", f"{n_placeholders} image placeholder(s) in the query "
                                   f"but {len(refs)} image(s) given in images[{i}]", where)  # fmt: skip
            units.append(self._unit(prompt, refs, response, where))
        return units

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

    def _normalize(self, messages: list, images: list, where: str) -> tuple[list[dict], list[str]]:
        """Messages with list content (`text` / `image` placeholder parts) and the image refs in placeholder order."""
        _expect(images, list, f"{where}.images", "a list of images")
        out, refs, next_image = [], [], 0
        for m, msg in enumerate(messages):
            at = f"{where}.messages[{m}]"
            _expect(msg, dict, at, "a message object")
            if msg.get("role") not in ROLES:
                raise RequestError(400, "invalid_request", f"role must be one of {ROLES}", f"{at}.role")
            content = msg.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            _expect(content, list, f"{at}.content", "a string or a list of parts")
            parts = []
            for p, part in enumerate(content):
                _expect(part, dict, f"{at}.content[{p}]", "a content part")
                kind = part.get("type")
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
                elif kind == "image_url" and isinstance((part.get("image_url") or {}).get("url"), str):
                    refs.append(part["image_url"]["url"])
                    parts.append({"type": "image"})
                else:
                    raise RequestError(400, "invalid_request", "a part must be text, image or image_url",
                                       f"{at}.content[{p}]")  # fmt: skip
            out.append({"role": msg["role"], "content": parts})
        if next_image != len(images):
            raise RequestError(400, "image_count_mismatch", f"{len(images)} images but {next_image} placeholders "
                               "use them", where)  # fmt: skip
        if len(refs) > self.limits.max_images_per_item:
            raise RequestError(413, "too_many_images", f"{len(refs)} images, more than "
                               f"{self.limits.max_images_per_item} per item", where)  # fmt: skip
        return out, refs

    @staticmethod
    def _text_only(message: dict, where: str) -> str:
        if any(p["type"] != "text" for p in message["content"]):
            raise RequestError(400, "invalid_request", "the response must be text only", where)
        return "".join(p["text"] for p in message["content"])

    def _decode(self, refs: list, where: str) -> tuple[list[Image.Image], str | None, int]:
        """The item's images, their digests and image token count (`key` is filled by `_unit`)."""
        images, digests, image_tokens = [], [], 0
        for j, ref in enumerate(refs):
            try:
                data = read_image_bytes(ref, self.limits.images)
                image = open_checked(data, self.limits.images)
                image_tokens += self._image_tokens(image)
            except ImageRefused as e:
                raise RequestError(e.status, e.kind, str(e), f"{where}.images[{j}]") from None
            except ValueError as e:  # smart_resize's bounds
                raise RequestError(400, "invalid_image", str(e), f"{where}.images[{j}]") from None
            images.append(image)
            digests.append(hashlib.sha256(data).hexdigest())
        return images, digests, image_tokens

    def _unit(self, prompt: list[dict], refs: list, response: str, where: str, decoded=None) -> Unit:
        """Decode the images (or take them `decoded` already), count the tokens, key the prompt."""
        images, digests, image_tokens = decoded or self._decode(refs, where)
        text = self.processor.apply_chat_template(
            prompt + [{"role": "assistant", "content": [{"type": "text", "text": response}]}], tokenize=False
        )
        n_text = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        tokens = image_tokens + n_text - len(images)  # each image's one placeholder token expands to its grid
        if tokens > self.limits.max_item_tokens:
            raise RequestError(413, "too_many_tokens", f"{tokens} tokens, more than {self.limits.max_item_tokens} "
                               "per item", where)  # fmt: skip
        return Unit(group_key(prompt, digests), prompt, images, response, tokens, where)

    def _image_tokens(self, image: Image.Image) -> int:
        h, w = smart_resize(image.height, image.width, self._factor, self._min_pixels, self._max_pixels)
        return (h // self._factor) * (w // self._factor)
