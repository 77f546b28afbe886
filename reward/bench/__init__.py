"""The reward benchmarks, one module each (its row reader and its official metric), read from local files.

    examples = read_benchmark("vl_rewardbench", "data/vl_rewardbench.parquet")   # -> [BenchmarkExample]
    rows = [scored_row("vl_rewardbench", e, s) for e, s in zip(examples, scorer.score_groups([e.group ...]))]
    METRICS["vl_rewardbench"](rows)                                                # -> {"overall": ..., ...}

Accepted files (`common.io.iter_raw_rows`): `.jsonl`, `.json` (a list of rows, as Multimodal RewardBench's
`all_data.json`), `.parquet`, a folder of Parquet shards (a hub snapshot's `data/`), or a `datasets.save_to_disk`
folder. Image paths in JSON files are resolved against the file's folder; Parquet and `datasets` images are embedded
bytes. A malformed row raises `common.schema.RecordError` naming the row and the field, or, with `on_bad_record="skip"`,
is dropped and counted per reason in a `common.io.SkipLog`.

Metric functions are pure: they take the per-example rows the evaluation job writes to `predictions.jsonl` and return
plain dicts whose figures are fractions in [0, 1] (None where a group has no example). A pair counts as correct only
when the preferred response scores strictly higher: a tie is wrong, as in the official scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from common.errors import ConfigError, InputNotFound
from common.io import SkipLog, iter_raw_rows, validate_rows
from reward.bench import mm_rewardbench, rewardbench, vl_rewardbench
from reward.bench.base import BenchmarkExample

BENCHMARKS = {"vl_rewardbench": vl_rewardbench, "rewardbench": rewardbench, "mm_rewardbench": mm_rewardbench}
METRICS = {name: module.metrics for name, module in BENCHMARKS.items()}
REFERENCE_ROWS = {name: module.REFERENCE_ROWS for name, module in BENCHMARKS.items()}


def read_benchmark(
    name: str,
    path: str | Path,
    limit: int | None = None,
    on_bad_record: Literal["raise", "skip"] = "raise",
    skipped: SkipLog | None = None,
) -> list[BenchmarkExample]:
    """Read the first `limit` (all by default) valid examples of benchmark `name` from a local file or folder.

    Args:
        on_bad_record: `"raise"` stops at the first malformed row; `"skip"` drops it and counts its reason in `skipped`
            (e.g. Multimodal RewardBench rows whose third-party image could not be downloaded).

    Raises:
        ValueError: unknown benchmark name.
        RecordError: a malformed row (names the row and the field), with `on_bad_record="raise"`.
    """
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"no such benchmark file or folder: {path}")
    if on_bad_record == "skip" and skipped is None:
        raise ValueError("on_bad_record='skip' needs a SkipLog to count the skipped rows")
    read_row = BENCHMARKS[name].read_row

    def example(row: dict, index: int, base_dir: str | None) -> BenchmarkExample:
        rid = row.get("id", row.get("ID"))
        return read_row(row, f"{rid!r} (#{index})" if rid is not None else f"#{index}", base_dir)

    base_dir = str(path.parent) if path.suffix in (".json", ".jsonl") else None  # Parquet images are embedded bytes
    return validate_rows(iter_raw_rows(path), example, str(path), on_bad_record, skipped, base_dir, limit)


def scored_row(name: str, example: BenchmarkExample, scores: list[float]) -> dict[str, Any]:
    """The per-example row the metric functions read: the example's fields plus its scores."""
    return BENCHMARKS[name].scored_row(example, scores)
