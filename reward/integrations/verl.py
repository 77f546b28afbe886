"""verl reward functions: score rollouts with the VL reward server, images included (docs/serving.md, "verl").

What reaches a verl reward function (volcengine/verl v0.9.1 and main@b178a3c): `RLHFDataset.__getitem__` pops the
`images` column once it has built the policy's messages; the `naive` reward manager calls
`compute_score(data_source=, solution_str=, ground_truth=, extra_info=)` per sample and the `batch` manager
`compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=, **reward_kwargs)` once per batch, where
`extra_info` is the row's `extra_info` column (plus verl's `num_turns` / `rollout_reward_scores`). verl's
`custom_reward_function.reward_kwargs` are merged into every call as keywords. So the prompt and its images travel in
`extra_info`, as `recipes/prepare_verl_data.py` writes them:

    extra_info["prompt"]     the chat: messages whose string content marks each image with `<image>` (verl's own
                             form), or TRL-style content parts; a plain string is one user turn
    extra_info["question"]   geo3k's field, a user string with `<image>`, used when there is no "prompt"
    extra_info["images"]     the images in `<image>` order: bytes (what the helper writes), {"bytes": ...}, data
                             URIs, http(s) URLs (the server must allow them) or paths the trainer can read

Options, from `reward_kwargs` first, then `extra_info`, then the environment:

    reward_url              server URL(s), comma-separated for replicas ($VLRM_REWARD_URL)
    api_key                 the server's key ($VLRM_API_KEY)
    on_error                what a sample the reward model cannot score gets (the server refused it with a 4xx, or
                            its prompt / images are malformed): "raise" (default) stops training with an error
                            naming the sample; "fallback" gives it `fallback_score`, logs a warning with the count
                            so far, and scores the rest. An unreachable server (after the client's retries) or a
                            missing URL always raises: falling back there would train on a constant.
    fallback_score          the reward of such a sample with on_error="fallback" (required then: no silent default)
    max_items_per_request   responses per HTTP request (default 256, the server's default limit)

The score is the reward model's raw reward; `ground_truth` is not used.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from PIL import Image

from common.scoring import ScoringGroup
from reward.client import RewardClient, RewardServerError
from reward.integrations.verl_data import PLACEHOLDER

URL_ENV, KEY_ENV = "VLRM_REWARD_URL", "VLRM_API_KEY"
ON_ERROR = ("raise", "fallback")

logger = logging.getLogger(__name__)
_fallbacks = {"samples": 0}  # fallback scores given in this process (the warning's running count)


class VerlRewardError(ValueError):
    """A sample the reward model cannot score, or a missing setting; the message names the sample."""


class _Options(NamedTuple):  # not a dataclass: verl loads this file without registering it in sys.modules
    url: str
    api_key: str | None
    on_error: str
    fallback_score: float | None
    max_items_per_request: int


def _option(name: str, kwargs: Mapping, extra_infos: Sequence[Mapping], env: str | None = None) -> Any:
    if kwargs.get(name) is not None:
        return kwargs[name]
    values = {json.dumps(e.get(name), default=str) for e in extra_infos if e.get(name) is not None}
    if len(values) > 1:
        raise VerlRewardError(f"extra_info[{name!r}] differs across the batch's samples: {sorted(values)}")
    if values:
        return next(e[name] for e in extra_infos if e.get(name) is not None)
    return os.environ.get(env) if env else None


def _options(kwargs: Mapping, extra_infos: Sequence[Mapping]) -> _Options:
    url = _option("reward_url", kwargs, extra_infos, URL_ENV)
    if not url:
        raise VerlRewardError(f"no reward server: set reward_kwargs.reward_url, extra_info['reward_url'] or ${URL_ENV}")
    on_error = _option("on_error", kwargs, extra_infos) or "raise"
    if on_error not in ON_ERROR:
        raise VerlRewardError(f"on_error={on_error!r}: choose one of {ON_ERROR}")
    fallback = _option("fallback_score", kwargs, extra_infos)
    if on_error == "fallback" and fallback is None:
        raise VerlRewardError("on_error='fallback' needs fallback_score (the reward a sample that cannot be scored "
                              "gets): set reward_kwargs.fallback_score")  # fmt: skip
    urls = url if isinstance(url, str) else ",".join(url)
    return _Options(urls, _option("api_key", kwargs, extra_infos, KEY_ENV), on_error,
                    None if fallback is None else float(fallback),
                    int(_option("max_items_per_request", kwargs, extra_infos) or 256))  # fmt: skip


@functools.lru_cache(maxsize=8)
def _client(url: str, api_key: str | None, max_items: int) -> RewardClient:
    return RewardClient([u for u in url.split(",") if u], api_key=api_key, max_items_per_request=max_items)


# ------------------------------------------------------------------------------------------------------ a sample
def _parts(content: Any, where: str) -> list[dict]:
    """Content parts of one message: a string split on verl's placeholders, or TRL-style parts."""
    if isinstance(content, str):
        parts = []
        for piece in PLACEHOLDER.split(content):
            if piece == "<image>":
                parts.append({"type": "image"})
            elif piece in ("<video>", "<audio>"):
                raise VerlRewardError(f"{where}: {piece} is not supported by the reward model (images only)")
            elif piece:
                parts.append({"type": "text", "text": piece})
        return parts
    parts = []
    for p, part in enumerate(_as_list(content, f"{where}.content")):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "image":
            parts.append({"type": "image"})
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        else:
            raise VerlRewardError(f"{where}.content[{p}]: a part must be text or image, got {part!r:.80}")
    return parts


def _as_list(value: Any, where: str) -> list:
    if hasattr(value, "tolist"):  # a numpy array (verl's non-tensor batch)
        value = value.tolist()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise VerlRewardError(f"{where}: expected a list, got {type(value).__name__}")
    return list(value)


def sample_messages(extra_info: Mapping) -> list[dict]:
    """The prompt messages (`{"type": "image"}` placeholders) of a sample's `extra_info` (module docstring)."""
    prompt = extra_info.get("prompt")
    if prompt is None:
        prompt = extra_info.get("question")
    if prompt is None:
        raise VerlRewardError("extra_info has neither 'prompt' nor 'question' (the messages the response answers): "
                              "write the data with recipes/prepare_verl_data.py")  # fmt: skip
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    messages = []
    for m, message in enumerate(_as_list(prompt, "extra_info['prompt']")):
        where = f"extra_info['prompt'][{m}]"
        if not isinstance(message, Mapping) or message.get("role") not in ("system", "user", "assistant"):
            raise VerlRewardError(f"{where}: expected a message with role system, user or assistant")
        messages.append({"role": message["role"], "content": _parts(message.get("content"), where)})
    if not any(m["role"] == "user" and m["content"] for m in messages):
        raise VerlRewardError("extra_info['prompt'] has no user turn with content")
    return messages


def _image_ref(image: Any, where: str) -> Any:
    """What the client sends: image bytes as a data URI of the same bytes (not re-encoded); other forms unchanged."""
    if isinstance(image, Mapping) and image.get("bytes"):
        image = image["bytes"]
    if isinstance(image, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(image)) as im:  # reads the header only, for the media type
                kind = (im.format or "png").lower()
        except (OSError, ValueError) as e:
            raise VerlRewardError(f"{where}: not an image ({e})") from None
        return f"data:image/{kind};base64,{base64.b64encode(image).decode()}"
    if isinstance(image, str | Image.Image):
        return image
    raise VerlRewardError(f"{where}: expected image bytes, {{'bytes': ...}}, a data URI, URL or path, "
                          f"got {type(image).__name__}")  # fmt: skip


def sample_prompt(extra_info: Mapping) -> tuple[list[dict], list]:
    """(messages, images) of one sample, the images' count checked against the `<image>` placeholders."""
    messages = sample_messages(extra_info)
    images = extra_info.get("images")
    images = [] if images is None else _as_list(images, "extra_info['images']")
    n_placeholders = sum(p["type"] == "image" for m in messages for p in m["content"])
    if n_placeholders != len(images):
        hint = " (verl's RLHFDataset drops the images column: recipes/prepare_verl_data.py copies the images into " \
               "extra_info['images'])" if not images else ""  # fmt: skip
        raise VerlRewardError(f"the prompt has {n_placeholders} <image> placeholder(s) but extra_info['images'] holds "
                              f"{len(images)} image(s){hint}")  # fmt: skip
    return messages, [_image_ref(im, f"extra_info['images'][{j}]") for j, im in enumerate(images)]


def _sample_name(data_source: Any, extra_info: Mapping, i: int) -> str:
    name = extra_info.get("id") if extra_info.get("id") is not None else extra_info.get("index")
    return f"sample #{i} ({data_source!r}{f', {name!r}' if name is not None else ''})"


# ------------------------------------------------------------------------------------------------------ scoring
def compute_score_batch(data_sources: Sequence, solution_strs: Sequence[str], ground_truths: Sequence,
                        extra_infos: Sequence[Mapping | None], **kwargs) -> list[float]:  # fmt: skip
    """verl's `batch` reward manager signature: the reward of every response, in order.

    Samples with equal prompts and images (verl's `rollout.n` responses of one prompt) are one group, so a prompt and
    its images are sent and encoded once; the whole batch goes in one `/v1/score_groups` call (one HTTP request up
    to `max_items_per_request` responses, several sent concurrently beyond). Failures follow `on_error`.
    """
    extra_infos = [e or {} for e in extra_infos]
    n = len(solution_strs)
    if not len(data_sources) == len(extra_infos) == n:
        raise VerlRewardError(f"{len(data_sources)} data_sources, {n} solution_strs, {len(extra_infos)} extra_infos")
    opts = _options(kwargs, extra_infos)
    scores: list[float | None] = [None] * n
    failures: dict[int, str] = {}
    groups: dict[str, tuple[ScoringGroup, list[int]]] = {}
    for i, (extra, response) in enumerate(zip(extra_infos, solution_strs)):
        try:
            messages, images = sample_prompt(extra)
        except VerlRewardError as e:
            failures[i] = str(e)
            continue
        key = json.dumps([messages, [_digest(im) for im in images]], sort_keys=True)
        group, members = groups.setdefault(key, (ScoringGroup(messages, images, []), []))
        group.responses.append(str(response))
        members.append(i)
    _score(_client(opts.url, opts.api_key, opts.max_items_per_request), list(groups.values()), scores, failures)
    if failures:
        first = min(failures)
        where = _sample_name(data_sources[first], extra_infos[first], first)
        if opts.on_error == "raise":
            raise VerlRewardError(f"{where}: {failures[first]} ({len(failures)} of {n} samples failed; "
                                  "on_error='fallback' with a fallback_score scores the rest)")  # fmt: skip
        _fallbacks["samples"] += len(failures)
        logger.warning("%d of %d samples got fallback_score=%s (%d in this process so far); first: %s: %s",
                       len(failures), n, opts.fallback_score, _fallbacks["samples"], where, failures[first])  # fmt: skip
        for i in failures:
            scores[i] = opts.fallback_score
    return [float(s) for s in scores]


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping | None = None,
                  **kwargs) -> float:  # fmt: skip
    """verl's per-sample signature (`naive` reward manager): the reward of `solution_str` (see the module docstring)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


def _score(client: RewardClient, groups: list[tuple[ScoringGroup, list[int]]], scores: list, failures: dict) -> None:
    """Fill `scores` for every group's samples; a refused request (4xx) is retried group by group to find the
    groups at fault, whose samples go to `failures` with the server's message. Unreachable servers raise."""
    if not groups:
        return
    try:
        results = client.score_groups([g for g, _ in groups])
    except RewardServerError as e:
        if e.status is None or e.status >= 500:
            raise
        if len(groups) == 1:
            failures.update({i: f"the reward server refused it: {e}" for i in groups[0][1]})
            return
        for one in groups:
            _score(client, [one], scores, failures)
        return
    for (_, members), group_scores in zip(groups, results, strict=True):
        for i, s in zip(members, group_scores, strict=True):
            scores[i] = s


def _digest(image: Any) -> str:
    if isinstance(image, Image.Image):
        return hashlib.sha256(image.tobytes() + repr((image.mode, image.size)).encode()).hexdigest()
    return hashlib.sha256(image.encode()).hexdigest()
