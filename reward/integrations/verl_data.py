"""verl's RL Parquet from the toolkit's prompt records, laid out as verl's `examples/data_preprocess/geo3k.py` writes
it, with what `reward.integrations.verl.compute_score` needs in `extra_info`.

    python recipes/prepare_verl_data.py --prompts outputs/toy/prompts_train --output outputs/verl/train.parquet

Why `extra_info` carries the images: verl's `RLHFDataset.__getitem__` pops the `images` column after building the
policy's messages (volcengine/verl `verl/utils/dataset/rl_dataset.py`, v0.9.1 and main@b178a3c), and its reward
managers (`verl/workers/reward_manager/naive.py`, `batch.py`) hand a reward function only `data_source`, the
response, `reward_model.ground_truth` and `extra_info`. So the reward model's prompt and images travel there.

Columns and Arrow types (the `datasets` features are stored in the file's metadata, as `Dataset.to_parquet` does):

    data_source   string                                   the dataset's name (`--data_source`)
    prompt        list<struct<role: string, content: string>>   the policy's chat; each image is an `<image>` in
                                                           the string, where RLHFDataset puts it back
    images        list<struct<bytes: binary, path: string>>     `List(Image())`, in `<image>` order
    ability       string
    reward_model  struct<style: string, ground_truth: string>   style "model"; the record's answer, or null
    extra_info    struct<split: string, index: int64, id: string, answer: string, question: string,
                         prompt: list<struct<role, content>>, images: list<binary>>

`extra_info.question` is the last user turn's string (geo3k's field), `extra_info.prompt` the whole chat and
`extra_info.images` the image bytes again (verl drops the column; the file holds each image twice).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from common.config_checks import raise_problems
from common.errors import InputError
from common.images import image_bytes
from common.io import SkipLog, atomic_tmp_path
from common.schema import RecordError, record_ref

# What verl's RLHFDataset splits message strings on (`_build_messages`): a literal one in a text would take an image.
VERL_PLACEHOLDERS = ("<image>", "<video>", "<audio>")
PLACEHOLDER = re.compile("(" + "|".join(re.escape(p) for p in VERL_PLACEHOLDERS) + ")")

_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
FEATURES = datasets.Features(
    {
        "data_source": datasets.Value("string"),
        "prompt": _MESSAGES,
        "images": datasets.List(datasets.Image()),
        "ability": datasets.Value("string"),
        "reward_model": {"style": datasets.Value("string"), "ground_truth": datasets.Value("string")},
        "extra_info": {
            "split": datasets.Value("string"),
            "index": datasets.Value("int64"),
            "id": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "question": datasets.Value("string"),
            "prompt": _MESSAGES,
            "images": datasets.List(datasets.Value("binary")),
        },
    }
)


def verl_messages(prompt: Iterable[Mapping[str, Any]], ref: str) -> list[dict[str, str]]:
    """Our messages (text / `{"type": "image"}` parts) as verl's: string contents with `<image>` where each image is.

    Raises:
        RecordError: a text holds `<image>`, `<video>` or `<audio>` (verl would take it for a placeholder).
    """
    out = []
    for m, message in enumerate(prompt):
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        pieces = []
        for p, part in enumerate(parts):
            if part.get("type") == "image":
                pieces.append("<image>")
                continue
            text = part.get("text") or ""
            found = PLACEHOLDER.search(text)
            if found:
                raise RecordError(ref, f"prompt[{m}].content[{p}]", "text contains a verl placeholder",
                                  f"{found.group(0)!r}: verl's RLHFDataset would put a media item there")  # fmt: skip
            pieces.append(text)
        out.append({"role": message["role"], "content": "".join(pieces)})
    return out


def verl_row(record: Mapping[str, Any], index: int, data_source: str, split: str, ability: str,
             position: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One prompt record (`common.schema`, validated) as row `index` of verl's Parquet (see the module docstring);
    errors name the record by its id and `position` in the input."""
    messages = verl_messages(record["prompt"], record_ref(record, position))
    images = [image_bytes(im) for im in record.get("images") or []]
    answer = record.get("answer")
    return {
        "data_source": data_source,
        "prompt": messages,
        "images": images,
        "ability": ability,
        "reward_model": {"style": "model", "ground_truth": answer},
        "extra_info": {
            "split": split,
            "index": index,
            "id": record.get("id"),
            "answer": answer,
            "question": messages[-1]["content"],
            "prompt": messages,
            "images": [im["bytes"] for im in images],
        },  # fmt: skip
    }


def write_verl_parquet(records: Iterable[Mapping[str, Any]], path: str | os.PathLike, data_source: str,
                       split: str = "train", ability: str = "vqa", on_bad_record: str = "raise",
                       skipped: SkipLog | None = None, rows_per_group: int = 256) -> int:  # fmt: skip
    """Write prompt records as verl's Parquet at `path` (atomically: a killed run leaves no half file).

    Args:
        records: validated prompt records (`data_builders.sources.read_prompts`).
        path: the `.parquet` file to write.
        data_source / split / ability: the `data_source`, `extra_info.split` and `ability` fields.
        on_bad_record: `"raise"`, or `"skip"` counting each refused record in `skipped` by reason.
        rows_per_group: rows held in memory and written as one Parquet row group.

    Returns:
        The number of rows written (`extra_info.index` numbers them from 0, as geo3k's `with_indices`).

    Raises:
        RecordError: a record verl cannot take (see `verl_messages`), with `on_bad_record="raise"`.
        InputError: no record left to write (nothing is written).
    """
    path = Path(path)
    if on_bad_record == "skip" and skipped is None:
        raise ValueError("on_bad_record='skip' needs a SkipLog to count the skipped records")
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = FEATURES.arrow_schema
    tmp = atomic_tmp_path(path)
    written, batch = 0, []
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for position, record in enumerate(records):
                try:
                    batch.append(verl_row(record, written, data_source, split, ability, position))
                except RecordError as e:
                    if on_bad_record == "raise":
                        raise
                    skipped.add(e.reason, str(e))
                    continue
                written += 1
                if len(batch) == rows_per_group:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        if not written:  # an empty split would fail in verl's trainer, far from the cause
            counts = dict(skipped.counts) if skipped is not None else {}
            raise InputError(f"no record left to write to {path} (skipped: {counts})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


@dataclass
class VerlDataConfig:
    """Prompt records (any format `data_builders.sources` reads) -> one split of verl's Parquet."""

    prompts: str = field(default=None, metadata={"help": "Prompt file or folder (.jsonl, .parquet or datasets dir)."})
    prompt_format: str = field(default="auto", metadata={"help": "Prompt format (data_builders.sources.FORMATS)."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder relative image paths resolve against (default: the file's folder)."}
    )
    output: str = field(default=None, metadata={"help": "The .parquet file to write (e.g. ~/data/toy/train.parquet)."})
    data_source: str | None = field(
        default=None, metadata={"help": "The rows' data_source (verl's reward_fn_key; default: the prompts' name)."}
    )
    split: str = field(default="train", metadata={"help": "extra_info.split (geo3k writes train and test)."})
    ability: str = field(default="vqa", metadata={"help": "The rows' ability field."})
    max_prompts: int | None = field(default=None, metadata={"help": "Write only the first N valid prompts."})
    on_bad_record: str = field(
        default="skip", metadata={"help": "A bad record: 'skip' counts it (printed), 'raise' stops naming it."}
    )

    def validate(self) -> None:
        problems = [] if self.prompts else ["prompts is required (--prompts ...)"]
        if self.prompts and not Path(self.prompts).exists():
            problems.append(f"prompts: {self.prompts!r} does not exist")
        if not self.output or not self.output.endswith(".parquet"):
            problems.append(f"output={self.output!r}: give a .parquet file (verl reads data.train_files=*.parquet)")
        if self.on_bad_record not in ("raise", "skip"):
            problems.append(f"on_bad_record={self.on_bad_record!r}: choose one of ('raise', 'skip')")
        raise_problems("VerlDataConfig", problems)


def prepare_verl_data(cfg: VerlDataConfig) -> tuple[int, SkipLog]:
    """Read `cfg.prompts`, write `cfg.output`; return the rows written and the records skipped (by reason)."""
    from data_builders.sources import read_prompts

    cfg.validate()
    skipped = SkipLog()
    records = read_prompts(cfg.prompts, cfg.prompt_format, cfg.image_root, skipped, cfg.on_bad_record,
                           max_prompts=cfg.max_prompts)  # fmt: skip
    records = records.cast_column("images", datasets.List(datasets.Image(decode=False)))  # the files' own bytes
    data_source = cfg.data_source or Path(cfg.prompts).stem
    n = write_verl_parquet(records, cfg.output, data_source, cfg.split, cfg.ability, cfg.on_bad_record, skipped)
    return n, skipped
