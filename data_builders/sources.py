"""Prompt readers: public and plain formats -> prompt records (`common.schema`: id, prompt, images, answer...).

Sampling needs only the prompt side (images + question, plus the ground truth where there is one). Formats:

* ``"prompt"``: our own prompt records (the toy task's `prompts_*`), read with `common.io.read_records`.
* ``"plain"``: JSONL/Parquet rows with a question (`question`, `prompt`, `query` or `instruction`), images
  (`images`: list, or `image` / `image_path` / `img_path`: one) and optionally `id`, `answer` (or `ground_truth`),
  `choices`, `source`.
* ``"rlaif_v"``: openbmb/RLAIF-V-Dataset (`question`, `image`, `idx`, `ds_name`/`origin_dataset`).
* ``"vlfeedback"``: MMInstruction/VLFeedback (`id`, `prompt`, `img_path`; `completions` are ignored).
* ``"mmpr"``: OpenGVLab/MMPR annotation JSONL (`question` with `<image>` tags, `image`: a path or a list of paths
  relative to the annotation's image root).
* ``"vl_rewardbench"``: MMInstruction/VL-RewardBench (`id`, `query`, `image`, `query_source`, `ground_truth` if
  present).
* ``"auto"``: picked from the first row's columns.

Relative image paths resolve against `image_root` (default: the file's folder). A `<image>` tag in the question
becomes an image placeholder at that place; images without tags go before the text. A bad record (missing
question, unreadable image, duplicate id...) is skipped and counted in the `SkipLog` under `"<field>: <problem>"`,
or raises a `RecordError` naming it with `on_bad_record="raise"`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset

from common.errors import ConfigError, InputNotFound
from common.io import SkipLog, iter_raw_rows, read_records, records_to_dataset, validate_rows
from common.record_checks import repeated_ids
from common.schema import RecordError, record_ref, validate_prompt_record

FORMATS = ("auto", "prompt", "plain", "rlaif_v", "vlfeedback", "mmpr", "vl_rewardbench")
IMAGE_TAG = re.compile(r"\s*<image>\s*")


def first_of(row: Mapping, keys: tuple[str, ...]) -> Any:
    return next((row[k] for k in keys if row.get(k) is not None), None)


def user_messages(question: Any, n_images: int, ref: str, field: str) -> list[dict]:
    """A one-turn user prompt; `<image>` tags become placeholders, untagged images go first."""
    if not isinstance(question, str) or not question.strip():
        raise RecordError(ref, field, f"expected a non-empty question string, got {question!r}")
    pieces = IMAGE_TAG.split(question)
    n_tags = len(pieces) - 1
    if n_tags > n_images:
        raise RecordError(ref, field, f"the question has {n_tags} <image> tag(s) but {n_images} image(s) are given")
    content = [{"type": "image"}] * (n_images - n_tags)
    for k, text in enumerate(pieces):
        if k:
            content.append({"type": "image"})
        if text.strip():
            content.append({"type": "text", "text": text.strip()})
    return [{"role": "user", "content": content}]


def as_list(images: Any) -> list:
    if images is None:
        return []
    return list(images) if isinstance(images, list | tuple) else [images]


def _record(rid: Any, question: Any, images: Any, ref: str, qfield: str, **extra: Any) -> dict:
    images = as_list(images)
    return {"id": None if rid is None else str(rid), "prompt": user_messages(question, len(images), ref, qfield),
            "images": images, **{k: v for k, v in extra.items() if v is not None}}  # fmt: skip


def _plain(row: Mapping, ref: str) -> dict:
    if isinstance(row.get("prompt"), list):  # already messages: only normalise the image key
        return {**row, "images": as_list(first_of(row, ("images", "image", "image_path", "img_path")))}
    question_keys = ("question", "prompt", "query", "instruction")
    field = next((k for k in question_keys if k in row), "question")
    answer = first_of(row, ("answer", "ground_truth"))
    return _record(row.get("id"), row.get(field), first_of(row, ("images", "image", "image_path", "img_path")), ref,
                   field, answer=None if answer is None else str(answer), choices=row.get("choices"),
                   source=row.get("source"), judge=row.get("judge"))  # fmt: skip


def _rlaif_v(row: Mapping, ref: str) -> dict:
    origin = row.get("ds_name") or row.get("origin_dataset")
    return _record(first_of(row, ("idx", "id")), row.get("question"), row.get("image"), ref, "question",
                   source=f"rlaif_v/{origin}" if origin else "rlaif_v")  # fmt: skip


def _vlfeedback(row: Mapping, ref: str) -> dict:
    return _record(row.get("id"), row.get("prompt"), row.get("img_path"), ref, "prompt", source="vlfeedback")


def _mmpr(row: Mapping, ref: str) -> dict:
    return _record(row.get("id"), row.get("question"), row.get("image"), ref, "question", source="mmpr")


def _vl_rewardbench(row: Mapping, ref: str) -> dict:
    origin = row.get("query_source")
    answer = row.get("ground_truth")
    return _record(row.get("id"), row.get("query"), row.get("image"), ref, "query",
                   answer=str(answer) if answer not in (None, "") else None,
                   source=f"vl_rewardbench/{origin}" if origin else "vl_rewardbench")  # fmt: skip


CONVERTERS: dict[str, Callable[[Mapping, str], dict]] = {
    "plain": _plain, "rlaif_v": _rlaif_v, "vlfeedback": _vlfeedback, "mmpr": _mmpr, "vl_rewardbench": _vl_rewardbench,
}  # fmt: skip


def detect_format(row: Mapping) -> str:
    """Guess the format from one row's columns."""
    keys = set(row)
    if isinstance(row.get("prompt"), list) and "id" in keys:
        return "prompt"
    if {"completions", "models"} <= keys:
        return "vlfeedback"
    if {"query", "human_ranking"} <= keys:
        return "vl_rewardbench"
    if "question" in keys and keys & {"ds_name", "origin_dataset"}:
        return "rlaif_v"
    if {"question", "chosen", "rejected", "image"} <= keys and isinstance(row.get("image"), str | list):
        return "mmpr"
    return "plain"


def read_prompts(
    path: str | os.PathLike,
    fmt: str = "auto",
    image_root: str | None = None,
    skipped: SkipLog | None = None,
    on_bad_record: str = "skip",
    max_prompts: int | None = None,
) -> Dataset:
    """Read prompts of format `fmt` (see the module docstring) into validated prompt records.

    Args:
        path: a .jsonl/.json, .parquet file or a `datasets` folder.
        fmt: one of `FORMATS`.
        image_root: folder that relative image paths resolve against (default: the file's folder).
        skipped: counts of skipped records per reason (needed with `on_bad_record="skip"`).
        on_bad_record: `"skip"` (count and go on) or `"raise"`.
        max_prompts: keep the first N valid prompts (None: all).

    Returns:
        A `Dataset` of prompt records, in file order, ids unique.

    Raises:
        FileNotFoundError: `path` does not exist. ValueError: unknown `fmt`. RecordError: with `on_bad_record="raise"`.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown prompt format {fmt!r}; choose one of {FORMATS}")
    if not path.exists():
        raise InputNotFound(f"no such prompt file or folder: {path}")
    skipped = skipped if skipped is not None else SkipLog()
    if fmt == "auto":
        fmt = detect_format(next(iter(iter_raw_rows(path)), {}))
    if fmt == "prompt":
        ds = read_records(path, kind="prompt", on_bad_record=on_bad_record, skipped=skipped)
        return _dedupe(ds, skipped, on_bad_record, max_prompts)

    def convert(row: Mapping, index: int, base_dir: str) -> dict:
        rec = CONVERTERS[fmt](row, record_ref(row, index))
        rec["id"] = rec.get("id") or f"{path.stem}-{index:07d}"
        return validate_prompt_record(rec, index=index, base_dir=base_dir)

    records = validate_rows(
        iter_raw_rows(path), convert, str(path), on_bad_record, skipped, image_root or str(path.parent), max_prompts
    )
    return _dedupe(records_to_dataset(records), skipped, on_bad_record, max_prompts)


def _dedupe(ds: Dataset, skipped: SkipLog, on_bad_record: str, max_prompts: int | None) -> Dataset:
    """Drop records whose id was seen before (pair ids and resume bookkeeping rely on unique prompt ids)."""
    ids = ds["id"] if len(ds) else []
    repeated = repeated_ids(ids)
    for i in repeated:
        error = RecordError(f"{ids[i]!r} (#{i})", "id", "duplicate prompt id")
        if on_bad_record == "raise":
            raise error
        skipped.add(error.reason, str(error))
    keep = sorted(set(range(len(ids))) - set(repeated))
    if max_prompts is not None:
        keep = keep[:max_prompts]
    return ds if len(keep) == len(ds) else ds.select(keep)
