"""Readers for the reward benchmarks from local files: each example becomes a `ScoringGroup` plus the metric row.

Accepted files: `.jsonl`, `.json` (a list of rows, as Multimodal RewardBench's `all_data.json`), `.parquet`, a folder
of Parquet shards (a hub snapshot's `data/`), or a `datasets.save_to_disk` folder. Image paths in JSON files are
resolved against the file's folder; Parquet and `datasets` images are embedded bytes.

* ``vl_rewardbench`` (MMInstruction/VL-RewardBench): `id`, `query`, `response` (two strings), `image`,
  `human_ranking` (0 = preferred), optional `query_source`.
* ``rewardbench`` (allenai/reward-bench, split `filtered`): `id`, `prompt`, `chosen`, `rejected`, `subset`; text only.
* ``mm_rewardbench`` (facebookresearch/multimodal_rewardbench `all_data.json`): `ID`, `Text`, `Image`, `Output1`,
  `Output2`, `Better`, `Category` (or `Meta.Category`).

A malformed row raises `common.schema.RecordError` naming the row and the field, or, with `on_bad_record="skip"`, is
dropped and counted per reason in a `common.io.SkipLog`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets import Dataset

from common.io import SkipLog
from common.schema import RecordError, check_record_image
from common.scoring import ScoringGroup


@dataclass
class BenchmarkExample:
    """One benchmark item: what to score (`group`) and the fields its metric needs (`row`, scores not yet in)."""

    group: ScoringGroup
    row: dict[str, Any]


def _undecoded(ds: Dataset) -> Dataset:
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, datasets.List | datasets.Sequence) and isinstance(feature.feature, datasets.Image):
            ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
    return ds


def iter_rows(path: str | Path) -> Iterator[tuple[dict, str | None]]:
    """(row, folder that relative image paths are resolved against) for every row of a local dataset file/folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such benchmark file or folder: {path}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        for row in data if isinstance(data, list) else data["data"]:
            yield row, str(path.parent)
        return
    if path.suffix == ".jsonl":
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line), str(path.parent)
                    except json.JSONDecodeError as e:
                        raise RecordError(f"line {lineno}", "<line>", "invalid JSON", str(e)) from e
        return
    if path.suffix == ".parquet":
        ds = Dataset.from_parquet(str(path))
    elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            split = next((s for s in ("test", "filtered", "train") if s in ds), None)
            if split is None and len(ds) != 1:
                raise ValueError(f"{path}: several splits {sorted(ds)}; point --data at one of them")
            ds = ds[split or next(iter(ds))]
    else:
        shards = sorted(str(p) for p in path.rglob("*.parquet"))
        if not shards:
            raise FileNotFoundError(f"{path}: neither a datasets folder nor a folder of .parquet files")
        # hub shards are named <split>-00000-of-00001.parquet; never mix splits (RewardBench ships `raw` too)
        splits = sorted({re.sub(r"-\d{5}-of-\d{5}$", "", Path(s).stem) for s in shards})
        if len(splits) > 1 and all(re.search(r"-\d{5}-of-\d{5}$", Path(s).stem) for s in shards):
            raise ValueError(f"{path}: shards of several splits {splits}; point --data at one split's file")
        ds = Dataset.from_parquet(shards)
    for row in _undecoded(ds):
        yield row, None


def _get(row: Mapping, field: str, ref: str, kind: type | tuple = str) -> Any:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip() and kind is str):
        raise RecordError(ref, field, "missing or empty")
    if not isinstance(value, kind):
        raise RecordError(ref, field, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _user(text: str, n_images: int) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def _images(value: Any, ref: str, field: str, base_dir: str | None) -> list:
    images = value if isinstance(value, list) else [] if value is None else [value]
    return [check_record_image(im, ref, f"{field}[{i}]", base_dir) for i, im in enumerate(images)]


def _vl_rewardbench(row: Mapping, ref: str, base_dir: str | None) -> BenchmarkExample:
    responses = _get(row, "response", ref, list)
    ranking = _get(row, "human_ranking", ref, list)
    if len(responses) != 2 or not all(isinstance(r, str) for r in responses):
        raise RecordError(ref, "response", f"expected two strings, got {len(responses)} item(s)")
    if len(ranking) != 2:
        raise RecordError(ref, "human_ranking", f"expected two ranks, got {ranking!r}")
    images = _images(row.get("image"), ref, "image", base_dir)
    out = {"id": str(_get(row, "id", ref, (str, int))), "human_ranking": list(ranking)}
    if row.get("query_source"):
        out["query_source"] = row["query_source"]
    return BenchmarkExample(ScoringGroup(_user(_get(row, "query", ref), len(images)), images, list(responses)), out)


def _rewardbench(row: Mapping, ref: str, base_dir: str | None) -> BenchmarkExample:
    responses = [_get(row, "chosen", ref), _get(row, "rejected", ref)]
    out = {"id": row.get("id", ref), "subset": _get(row, "subset", ref)}
    return BenchmarkExample(ScoringGroup(_user(_get(row, "prompt", ref), 0), [], responses), out)


def _mm_rewardbench(row: Mapping, ref: str, base_dir: str | None) -> BenchmarkExample:
    category = row.get("Category") or (row.get("Meta") or {}).get("Category")
    if not category:
        raise RecordError(ref, "Category", "missing (neither Category nor Meta.Category)")
    better = _get(row, "Better", ref)
    if better not in ("Output1", "Output2"):
        raise RecordError(ref, "Better", f"expected 'Output1' or 'Output2', got {better!r}")
    images = _images(row.get("Image"), ref, "Image", base_dir)
    responses = [_get(row, "Output1", ref), _get(row, "Output2", ref)]
    out = {"ID": str(_get(row, "ID", ref, (str, int))), "Category": category, "Better": better}
    return BenchmarkExample(ScoringGroup(_user(_get(row, "Text", ref), len(images)), images, responses), out)


READERS: dict[str, Callable[[Mapping, str, str | None], BenchmarkExample]] = {
    "vl_rewardbench": _vl_rewardbench,
    "rewardbench": _rewardbench,
    "mm_rewardbench": _mm_rewardbench,
}


def read_benchmark(
    name: str,
    path: str | Path,
    limit: int | None = None,
    on_bad_record: Literal["raise", "skip"] = "raise",
    skipped: SkipLog | None = None,
) -> list[BenchmarkExample]:
    """Read `limit` (all by default) examples of benchmark `name` from a local file or folder.

    Args:
        on_bad_record: `"raise"` stops at the first malformed row; `"skip"` drops it and counts its reason in `skipped`
            (e.g. Multimodal RewardBench rows whose third-party image could not be downloaded).

    Raises:
        ValueError: unknown benchmark name.
        RecordError: a malformed row (names the row and the field), with `on_bad_record="raise"`.
    """
    if name not in READERS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(READERS)}")
    if on_bad_record == "skip" and skipped is None:
        raise ValueError("on_bad_record='skip' needs a SkipLog to count the skipped rows")
    reader, out = READERS[name], []
    for index, (row, base_dir) in enumerate(iter_rows(path)):
        if limit is not None and index >= limit:
            break
        rid = row.get("id", row.get("ID"))
        try:
            out.append(reader(row, f"{rid!r} (#{index})" if rid is not None else f"#{index}", base_dir))
        except RecordError as e:
            if on_bad_record == "raise":
                raise
            skipped.add(e.reason, str(e))
    return out


def scored_row(name: str, example: BenchmarkExample, scores: list[float]) -> dict[str, Any]:
    """The per-example row the metric functions read: the example's fields plus its scores."""
    if name == "rewardbench":
        return {**example.row, "chosen_score": scores[0], "rejected_score": scores[1]}
    return {**example.row, "scores": list(scores)}
