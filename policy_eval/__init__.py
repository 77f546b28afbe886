"""Policy benchmarks read from their hub layouts, each with its official answer rule (no API judge).

    items = read_benchmark("mathvista_testmini", "data/MathVista")        # -> [BenchmarkItem]: prompt record + fields
    extracted, correct = BENCHMARKS["mathvista_testmini"].score(response, items[0])
    breakdown(rows, BENCHMARKS["mathvista_testmini"].BREAKDOWN)            # overall + official category breakdown

Modules: `mmstar` (Lin-Chen/MMStar), `mmmu` (MMMU/MMMU validation), `mathvista` (AI4Math/MathVista testmini),
`ai2d` (lmms-lab/ai2d); `base` says what each defines. `evaluate` is the job behind `recipes/eval_policy.py`,
`external` the rounds' `eval_command:` hook.

`path` is a `.parquet` / `.jsonl` file, a folder holding the evaluation split's shards (a hub snapshot or its
`data/`: the module's `SHARD_GLOB`, searched recursively, so MMMU's 30 subject folders are read together and
MathVista's `test` shards are left out), or a hub dataset id (fetched with `huggingface_hub.snapshot_download`,
only those shards; from the local cache under `HF_HUB_OFFLINE=1`). Rows stream one Parquet batch at a time
(`common.io.iter_raw_rows`); images stay embedded `{bytes, path}` structs. A malformed row raises a
`common.schema.RecordError` naming the row and the field, or with `on_bad_record="skip"` is dropped and counted per
reason in a `common.io.SkipLog`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Literal

from common.config_checks import HUB_ID
from common.errors import ConfigError, InputError, InputNotFound
from common.io import SkipLog, iter_raw_rows, validate_rows
from common.schema import validate_prompt_record
from policy_eval import ai2d, mathvista, mmmu, mmstar
from policy_eval.base import BenchmarkItem, breakdown

BENCHMARKS = {"mmstar": mmstar, "mmmu_val": mmmu, "mathvista_testmini": mathvista, "ai2d": ai2d}

__all__ = ["BENCHMARKS", "BenchmarkItem", "breakdown", "read_benchmark", "shards"]


def shards(name: str, path: str | Path) -> list[Path]:
    """The files of benchmark `name`'s evaluation split at `path` (a file, a folder or a hub id; module docstring)."""
    glob = BENCHMARKS[name].SHARD_GLOB
    path = Path(path)
    if not path.exists() and HUB_ID.match(str(path)):
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(path), repo_type="dataset", allow_patterns=[glob, f"**/{glob}"]))
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputNotFound(f"{name}: no such file or folder, nor a hub dataset id: {path}")
    found = sorted(path.rglob(glob))
    if not found:
        raise InputNotFound(f"{name}: no {glob} file under {path} (the {name} evaluation split's shards)")
    return found


def read_benchmark(
    name: str,
    path: str | Path,
    limit: int | None = None,
    on_bad_record: Literal["raise", "skip"] = "raise",
    skipped: SkipLog | None = None,
) -> list[BenchmarkItem]:
    """The first `limit` (all by default) valid items of benchmark `name` at `path`.

    Raises:
        ConfigError: unknown benchmark. InputNotFound: no data at `path`. InputError: a repeated item id.
        RecordError: a malformed row (names the row and the field), with `on_bad_record="raise"`.
    """
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown policy benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    if on_bad_record == "skip" and skipped is None:
        raise ValueError("on_bad_record='skip' needs a SkipLog to count the skipped rows")
    files = shards(name, path)
    read_row = BENCHMARKS[name].read_row

    def item(row: dict, index: int, base_dir: str | None) -> BenchmarkItem:
        rid = next((row[k] for k in ("id", "pid", "index") if row.get(k) is not None), None)
        ref = f"{rid!r} (#{index})" if rid is not None else f"#{index}"
        read = read_row(row, index, ref)
        read.record = validate_prompt_record(read.record, index, base_dir)
        return read

    rows = itertools.chain.from_iterable(iter_raw_rows(f) for f in files)
    base_dir = str(files[0].parent) if files[0].suffix in (".json", ".jsonl") else None
    items = validate_rows(rows, item, f"{name} at {path}", on_bad_record, skipped, base_dir, limit)
    ids = [i.record["id"] for i in items]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InputError(f"{name} at {path}: repeated item ids {repeated} (the same shard read twice?)")
    return items
