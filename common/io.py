"""Read and write records (preference or prompt) as `datasets.Dataset`, from JSONL, Parquet or a `datasets` folder.

* JSONL: one record per line; images are paths relative to the file (or absolute), written by `write_records` as
  PNG files in a `<name>.images/` folder beside it.
* Parquet and `datasets` folders (`save_to_disk`): images are embedded as bytes (`datasets.Image` feature).

Every record is validated on read (`common.schema`): with ``on_bad_record="raise"`` the first bad record raises a
`RecordError` naming it and the field; with ``on_bad_record="skip"`` bad records are dropped and counted per reason
in `SkipLog`, which the jobs print in their run report. A UTF-8 byte-order mark at the start of a JSONL file is read
as such, not as part of the first record.

Columns are the union of every record's fields, typed by `RECORD_FEATURES` (fields of the record schema) or, for any
other field, by what Arrow infers over all records: an optional field (`margin`, `answer`, `choices`...) that the
first record lacks is kept for the others, and is null where a record lacks it.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset

from common.errors import InputError, InputNotFound
from common.images import image_bytes
from common.schema import RecordError, validate_preference_record, validate_prompt_record

VALIDATORS: dict[str, Callable[..., dict]] = {
    "preference": validate_preference_record,
    "prompt": validate_prompt_record,
}

_MESSAGES = datasets.List(
    {"role": datasets.Value("string"),
     "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})}
)  # fmt: skip
# The typed columns of both record kinds (`common.schema`); any of them may be missing from a record (null there).
RECORD_FEATURES: dict[str, datasets.features.FeatureType] = {
    "id": datasets.Value("string"),
    "prompt": _MESSAGES,
    "chosen": _MESSAGES,
    "rejected": _MESSAGES,
    "images": datasets.List(datasets.Image()),
    "source": datasets.Value("string"),
    "margin": datasets.Value("float64"),
    "chosen_score": datasets.Value("float64"),
    "rejected_score": datasets.Value("float64"),
    "meta": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "choices": datasets.List(datasets.Value("string")),
    "judge": datasets.Value("string"),
}


@dataclass
class SkipLog:
    """Counts of skipped records per reason (`"<field>: <problem>"`), with the first few examples kept."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": list(self.examples)}


def _file_format(path: Path) -> str:
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    return "folder"


BAD_JSON = "__bad_json__"  # key of the row `iter_raw_rows` yields for a JSONL line that does not parse


def iter_raw_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of a `.jsonl` file, a `.json` file (JSONL, or one JSON list of rows), a `.parquet` file, a `save_to_disk`
    folder (a `DatasetDict`: its one split, or `test` / `filtered` / `train`) or a folder of one split's Parquet
    shards (a hub snapshot's `data/`), images left undecoded.

    A JSONL line that does not parse is yielded as `{BAD_JSON: "line N: ..."}` so that callers can count it
    against its position; `check_row_parsed` turns it into a `RecordError`.
    """
    path = Path(path)
    fmt = _file_format(path)
    if path.suffix == ".json" and (text := path.read_text()).lstrip().startswith("["):
        yield from json.loads(text)
        return
    if fmt == "jsonl":
        with open(path, encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark is read, not kept
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    yield {BAD_JSON: f"line {lineno}: {e}"}
        return
    if fmt == "parquet":
        yield from _parquet_rows([path])
        return
    if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        yield from _parquet_rows(_parquet_shards(path))
        return
    # Arrow batches as Python rows: image columns come as their stored `{"bytes", "path"}`, undecoded, and nothing is
    # written (a `cast_column` would put a `cache-*.arrow` file into the user's folder, and fail where it is read-only)
    for batch in _load_folder(path).with_format("arrow").iter(batch_size=256):
        yield from batch.to_pylist()


def _parquet_rows(paths: list[Path]) -> Iterator[dict]:
    """Rows of Parquet files, one record batch at a time: memory bounded by a batch, no Arrow cache copy on disk
    (image columns come as their stored `{"bytes", "path"}`, undecoded)."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            yield from batch.to_pylist()


def _parquet_shards(path: Path) -> list[Path]:
    """The Parquet files of a folder holding one split's shards (a hub snapshot's `data/`)."""
    shards = sorted(path.rglob("*.parquet"))
    if not shards:
        raise InputNotFound(f"{path}: neither a datasets folder nor a folder of .parquet files")
    # hub shards are named <split>-00000-of-00001.parquet; never mix splits (RewardBench ships `raw` too)
    splits = sorted({re.sub(r"-\d{5}-of-\d{5}$", "", s.stem) for s in shards})
    if len(splits) > 1 and all(re.search(r"-\d{5}-of-\d{5}$", s.stem) for s in shards):
        raise InputError(f"{path}: shards of several splits {splits}; point at one split's file")
    return shards


def _load_folder(path: Path) -> Dataset:
    """A `save_to_disk` folder: a `Dataset`, or one split of a `DatasetDict`."""
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = next((s for s in ("test", "filtered", "train") if s in ds), None)
        if split is None and len(ds) != 1:
            raise InputError(f"{path}: several splits {sorted(ds)}; point at one of them")
        ds = ds[split or next(iter(ds))]
    return ds


def check_row_parsed(row: Mapping, index: int) -> None:
    """Raise the `RecordError` of a JSONL line that `iter_raw_rows` could not parse."""
    if BAD_JSON in row:
        raise RecordError(f"#{index}", "<line>", "invalid JSON", row[BAD_JSON])


def read_records(
    path: str | os.PathLike,
    kind: Literal["preference", "prompt"] = "preference",
    on_bad_record: Literal["raise", "skip"] = "raise",
    skipped: SkipLog | None = None,
) -> Dataset:
    """Read and validate records into a `datasets.Dataset` whose `images` column decodes to PIL images.

    Args:
        path: a `.jsonl` file, a `.parquet` file or a folder written by `Dataset.save_to_disk`.
        kind: `"preference"` (prompt/chosen/rejected/images) or `"prompt"` (prompt/images/answer).
        on_bad_record: `"raise"` stops at the first bad record; `"skip"` drops it and counts it in `skipped`.
        skipped: where skips are counted (required with `on_bad_record="skip"`).

    Raises:
        RecordError: a bad record, with `on_bad_record="raise"`.
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"no such dataset: {path}")
    if on_bad_record == "skip" and skipped is None:
        raise ValueError("on_bad_record='skip' needs a SkipLog to count the skipped records")
    records = validate_rows(iter_raw_rows(path), VALIDATORS[kind], str(path), on_bad_record, skipped, str(path.parent))
    return records_to_dataset(records)


def validate_rows(
    rows: Iterable[Mapping],
    validate: Callable[..., dict],
    source: str,
    on_bad_record: Literal["raise", "skip"],
    skipped: SkipLog | None,
    base_dir: str | None,
    limit: int | None = None,
) -> list[dict]:
    """`validate(row, index=, base_dir=)` over raw rows, raising or counting each `RecordError` per `on_bad_record`.

    `validate` may convert as well (the prompt readers turn public formats into records with it). Stops after
    `limit` valid records. Errors re-raised here also name `source`, the file they came from.
    """
    records = []
    for index, raw in enumerate(rows):
        try:
            check_row_parsed(raw, index)
            records.append(validate(raw, index=index, base_dir=base_dir))
        except RecordError as e:
            if on_bad_record == "raise":
                raise RecordError(
                    e.record_ref, e.field, e.problem, f"{e.detail + '; ' if e.detail else ''}in {source}"
                ) from e
            skipped.add(e.reason, str(e))
        if limit is not None and len(records) >= limit:
            break
    return records


def records_to_dataset(records: list[Mapping[str, Any]]) -> Dataset:
    """Validated records as a `Dataset`: every field any record has, typed by `RECORD_FEATURES` where it is a schema
    field, images embedded as a `List(Image())` column (empty lists for text-only records)."""
    rows = [{**r, "images": [image_bytes(im) for im in r.get("images") or []]} for r in records]
    names = list(dict.fromkeys(k for r in rows for k in r)) or ["id", "prompt", "images"]
    columns = {k: [r.get(k) for r in rows] for k in names}
    features = {}
    for name, values in columns.items():
        if name in RECORD_FEATURES:
            features[name] = RECORD_FEATURES[name]
            continue
        try:  # a field outside the schema: the type Arrow infers over every record
            features[name] = datasets.Features.from_arrow_schema(pa.schema([(name, pa.array(values).type)]))[name]
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"field {name!r} has values of different types across records: {e}") from e
    return Dataset.from_dict(columns, features=datasets.Features(features))


def atomic_tmp_path(path: Path) -> Path:
    """The hidden sibling a file is written to before `os.replace` moves it into place (`.<name>.tmp-<pid>`)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` so that a killed process leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = atomic_tmp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_records(records: Dataset | list[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write records to `.jsonl` (images as PNG files beside it), `.parquet` or a `datasets` folder.

    The write is atomic: the data goes to a temporary name first and is renamed into place, so a killed job leaves
    either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_tmp_path(path)
    fmt = _file_format(path)
    if fmt == "jsonl":
        image_dir_name = f"{path.stem}.images"
        tmp_images = tmp.with_name(tmp.name + ".images")
        rows = records if isinstance(records, list) else list(
            records.cast_column("images", datasets.List(datasets.Image(decode=False))))  # fmt: skip
        with open(tmp, "w") as f:
            for n, rec in enumerate(rows):
                rec = dict(rec)
                paths = []
                for k, image in enumerate(rec.get("images") or []):
                    stored = image_bytes(image)
                    name = f"{n:07d}_{k}.png"
                    tmp_images.mkdir(parents=True, exist_ok=True)
                    (tmp_images / name).write_bytes(stored["bytes"])
                    paths.append(f"{image_dir_name}/{name}")
                rec["images"] = paths
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        final_images = path.with_name(image_dir_name)
        _replace_dir(tmp_images if tmp_images.exists() else None, final_images)
        os.replace(tmp, path)
        return path
    ds = records if isinstance(records, Dataset) else records_to_dataset(list(records))
    if fmt == "parquet":
        ds.to_parquet(str(tmp))
        os.replace(tmp, path)
    else:
        ds.save_to_disk(str(tmp))
        _replace_dir(tmp, path)
    return path


def _replace_dir(src: Path | None, dst: Path) -> None:
    import shutil

    if dst.exists():
        shutil.rmtree(dst)
    if src is not None:
        os.replace(src, dst)
