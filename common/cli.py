"""Config parsing for the recipes: `--config file.yaml` plus command-line overrides (TRL's `TrlParser`)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trl import TrlParser


def parse_configs(config_classes: Sequence[type], args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `--config x.yaml` (new defaults) then CLI flags (which win) into the given dataclasses.

    Unknown YAML keys or flags are fatal, so a typo never passes silently; prefixes are not expanded either
    (`--num_sample 8` is an error, never taken as `--num_samples 8`). The deepspeed launcher's `--local_rank` is
    accepted by the underlying `HfArgumentParser` when one class is a `TrainingArguments`.
    """
    parser = TrlParser(list(config_classes), allow_abbrev=False)
    return parser.parse_args_and_config(args=args, fail_with_unknown_args=True)


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def write_run_meta(out_dir: str | Path, configs: Sequence[Any], **extra: Any) -> Path:
    """Write `run_meta.json` (resolved configs, git SHA, counts) so each artifact describes itself."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"git_sha": git_sha(), **{k: _jsonable(v) for k, v in extra.items()}}
    for cfg in configs:
        values = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
        meta[type(cfg).__name__] = {k: _jsonable(v) for k, v in values.items()}
    path = out_dir / "run_meta.json"
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path
