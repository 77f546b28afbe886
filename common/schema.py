"""The toolkit's one record format, in TRL's conversational vision format, and its validation.

A **preference record** (what the reward trainer and MPO train on, what `data_builders` writes)::

    {"id": "toy-00017",
     "prompt":   [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}],
     "chosen":   [{"role": "assistant", "content": [{"type": "text", "text": "It is red."}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "It is blue."}]}],
     "images":   [<PIL image, a path, or {"bytes": ..., "path": ...}>],   # one per {"type": "image"} in prompt
     # optional: "margin", "source", "chosen_score", "rejected_score", "meta" (a JSON string)
    }

A **prompt record** (what sampling reads) has `id`, `prompt`, `images` and optionally `answer` (ground truth),
`choices` (the answer set it is checked against), `source` and `judge` (the name of the rule that checks answers,
`common.correctness.JUDGES`; default: the one registered for `source`, else `default`).

Validation errors name the record (its id and position) and the field, e.g.
``record 'toy-00017' (#17), field 'images[0]': image file not found ('a.png')``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from common.correctness import check_judge
from common.errors import InputError
from common.images import ImageError, check_image

ROLES = ("system", "user", "assistant")
OPTIONAL_STRINGS = {"preference": ("source", "meta"), "prompt": ("source", "answer", "judge")}
# Qwen-VL's vision tokens: the processor expands each image into them, so a literal one in a text would make the
# token count disagree with the images (an error at the first forward, far from the record at fault).
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
PREFERENCE_OPTIONAL_FLOATS = ("margin", "chosen_score", "rejected_score")


class RecordError(InputError):
    """A record is malformed. The message names the record and the field."""

    def __init__(self, record_ref: str, field: str, problem: str, detail: str | None = None):
        self.record_ref, self.field, self.problem, self.detail = record_ref, field, problem, detail
        super().__init__(f"record {record_ref}, field '{field}': {problem}" + (f" ({detail})" if detail else ""))

    @property
    def reason(self) -> str:
        """What went wrong without the specifics, to count skips by: `"images: image file not found"`."""
        return f"{self.field.split('[')[0].split('.')[0]}: {self.problem}"


def record_ref(record: Mapping[str, Any], index: int | None) -> str:
    """How errors name a record: its id and its position in the file."""
    rid = record.get("id") if isinstance(record, Mapping) else None
    where = f" (#{index})" if index is not None else ""
    return f"{rid!r}{where}" if rid is not None else f"#{index}"


def check_text(text: str, ref: str, field: str) -> str:
    """`text` if it encodes as UTF-8 (no lone surrogate such as a JSON `"\\ud83d"`) and holds no vision token."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(ref, field, "text is not valid Unicode",
                          f"lone surrogate {text[e.start]!r} at character {e.start}") from e  # fmt: skip
    for token in VISION_TOKENS:
        if token in text:
            raise RecordError(ref, field, "text contains a vision special token",
                              f"{token!r}; images go in {{'type': 'image'}} parts, never as tokens in the text")  # fmt: skip
    return text


def normalize_messages(messages: Any, ref: str, field: str) -> list[dict]:
    """Messages with string content turned into `[{"type": "text", "text": ...}]`; raises on anything malformed."""
    if isinstance(messages, str) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise RecordError(ref, field, f"expected a non-empty list of messages, got {type(messages).__name__}")
    out = []
    for i, msg in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(msg, Mapping):
            raise RecordError(ref, where, f"expected a message dict, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            raise RecordError(ref, f"{where}.role", f"expected one of {ROLES}, got {role!r}")
        content = msg.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": check_text(content, ref, f"{where}.content")}]
        elif isinstance(content, Sequence) and len(content) > 0:
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "image":
                    parts.append({"type": "image", "text": None})
                elif kind == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": check_text(part["text"], ref, f"{where}.content[{j}].text")})
                else:
                    raise RecordError(ref, f"{where}.content[{j}]", f"expected {{'type': 'text', 'text': str}} "
                                      f"or {{'type': 'image'}}, got {part!r}")  # fmt: skip
        else:
            raise RecordError(ref, f"{where}.content", f"expected a string or a non-empty list, got {content!r}")
        out.append({"role": role, "content": parts})
    return out


def message_text(messages: Sequence[Mapping]) -> str:
    """The concatenated text of some messages (images left out)."""
    return "".join(p["text"] for m in messages for p in m["content"] if p["type"] == "text" and p["text"])


def get_field(row: Mapping, field: str, ref: str, kind: type | tuple = str) -> Any:
    """`row[field]`, which must be present, of type `kind`, and (a string) not blank; else a `RecordError`."""
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip() and kind is str):
        raise RecordError(ref, field, "missing or empty")
    if not isinstance(value, kind):
        raise RecordError(ref, field, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def count_image_placeholders(messages: Sequence[Mapping]) -> int:
    return sum(1 for m in messages for p in m["content"] if p["type"] == "image")


def check_record_image(image: Any, ref: str, field: str, base_dir: str | None = None) -> Any:
    """`common.images.check_image` with its error as a `RecordError` naming the record and the field."""
    try:
        return check_image(image, base_dir)
    except ImageError as e:
        raise RecordError(ref, field, e.problem, e.detail) from e
    except TypeError as e:
        raise RecordError(ref, field, str(e)) from e


def _check_images(record: Mapping, messages: Sequence[Mapping], ref: str, base_dir: str | None) -> list:
    images = record.get("images")
    if images is None:
        images = []
    if isinstance(images, str) or not isinstance(images, Sequence):
        raise RecordError(ref, "images", f"expected a list of images, got {type(images).__name__}")
    n_slots = count_image_placeholders(messages)
    if n_slots != len(images):
        raise RecordError(ref, "images", f"the prompt has {n_slots} image placeholder(s) but {len(images)} image(s) "
                          "are given")  # fmt: skip
    return [check_record_image(im, ref, f"images[{i}]", base_dir) for i, im in enumerate(images)]


def _check_id(record: Mapping, ref: str) -> str:
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise RecordError(ref, "id", f"expected a non-empty string, got {rid!r}")
    return check_text(rid, ref, "id")


def _check_optional_strings(record: Mapping, out: dict, keys: Sequence[str], ref: str) -> None:
    for key in keys:
        value = record.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise RecordError(ref, key, f"expected a string, got {type(value).__name__}")
            out[key] = check_text(value, ref, key)


def _check_response(record: Mapping, key: str, ref: str) -> list[dict]:
    if key not in record:
        raise RecordError(ref, key, "missing")
    messages = normalize_messages(record[key], ref, key)
    if any(m["role"] != "assistant" for m in messages):
        raise RecordError(ref, key, "expected assistant messages only")
    if not message_text(messages).strip():
        raise RecordError(ref, key, "the response is empty")
    if count_image_placeholders(messages):
        raise RecordError(ref, key, "images belong in the prompt, not in the response")
    return messages


def _check_id_and_prompt(record: Any, index: int | None) -> tuple[str, dict[str, Any]]:
    """What both record kinds start with: a dict with an `id` and a `prompt`; returns (ref, normalised copy)."""
    ref = record_ref(record, index) if isinstance(record, Mapping) else f"#{index}"
    if not isinstance(record, Mapping):
        raise RecordError(ref, "<record>", f"expected a dict, got {type(record).__name__}")
    out = dict(record)
    out["id"] = _check_id(record, ref)
    if "prompt" not in record:
        raise RecordError(ref, "prompt", "missing")
    out["prompt"] = normalize_messages(record["prompt"], ref, "prompt")
    for i, message in enumerate(out["prompt"]):
        empty = not message_text([message]).strip() and not count_image_placeholders([message])
        if empty and message["role"] == "user":
            raise RecordError(ref, f"prompt[{i}]", "the user turn is empty (no text, no image)")
    return ref, out


def validate_preference_record(
    record: Mapping[str, Any], index: int | None = None, base_dir: str | None = None
) -> dict[str, Any]:
    """Check a preference record and return it normalised (string contents as text parts, paths resolved).

    Raises:
        RecordError: naming the record and the field at fault.
    """
    ref, out = _check_id_and_prompt(record, index)
    out["chosen"] = _check_response(record, "chosen", ref)
    out["rejected"] = _check_response(record, "rejected", ref)
    out["images"] = _check_images(record, out["prompt"], ref, base_dir)
    for key in PREFERENCE_OPTIONAL_FLOATS:
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RecordError(ref, key, f"expected a finite number, got {value!r}")
        out[key] = float(value)
    _check_optional_strings(record, out, OPTIONAL_STRINGS["preference"], ref)
    return out


def validate_prompt_record(
    record: Mapping[str, Any], index: int | None = None, base_dir: str | None = None
) -> dict[str, Any]:
    """Check a prompt record (`id`, `prompt`, `images`, optional `answer`/`choices`/`source`/`judge`); return it
    normalised."""
    ref, out = _check_id_and_prompt(record, index)
    if out["prompt"][-1]["role"] != "user":
        raise RecordError(ref, "prompt", "the last message must be the user's")
    out["images"] = _check_images(record, out["prompt"], ref, base_dir)
    _check_optional_strings(record, out, OPTIONAL_STRINGS["prompt"], ref)
    if out.get("judge") is not None:
        try:
            check_judge(out["judge"])
        except ValueError as e:
            raise RecordError(ref, "judge", str(e)) from None
    choices = record.get("choices")
    if choices is not None:
        if (
            isinstance(choices, str)
            or not isinstance(choices, Sequence)
            or not all(isinstance(c, str) for c in choices)
        ):
            raise RecordError(ref, "choices", "expected a list of strings", f"got {choices!r}")
        out["choices"] = [check_text(c, ref, f"choices[{i}]") for i, c in enumerate(choices)]
    return out
