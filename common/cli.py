"""What every recipe shares: `run_recipe` (its entry point), config parsing (`--config file.yaml` plus command-line
overrides, TRL's `TrlParser`) and `run_meta.json`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from trl import TrlParser

from common.errors import ConfigError, exit_code_of

DEBUG_ENV = "VLRM_DEBUG"  # =1: expected errors print their traceback too (`--debug` is TrainingArguments' own flag)
# Under a launcher, ranks other than 0 wait this long before reporting an expected error: when rank 0 fails the same
# way (a refusal every rank reaches), the launcher ends them meanwhile and the message prints once; when the error is
# theirs alone, they print it after the wait.
OTHER_RANKS_REPORT_AFTER_S = 10.0


def run_recipe(main: Callable[..., Any], config_classes: Sequence[type] | None = None) -> None:
    """Run a recipe's `main` (with its configs parsed from the command line when `config_classes` is given).

    An expected error (`common.errors`) prints `error: <message>` alone on stderr and exits with its status (2 for
    usage, config and data errors, 1 otherwise); with `VLRM_DEBUG=1` its traceback comes first. Unexpected errors
    propagate with their traceback. Under a launcher every rank exits with the status and rank 0 alone prints (see
    `OTHER_RANKS_REPORT_AFTER_S`).
    """
    try:
        main() if config_classes is None else main(*parse_configs(config_classes))
    except Exception as error:
        code = exit_code_of(error)
        if code is None:
            raise
        _report_and_exit(error, code)


def _report_and_exit(error: Exception, code: int) -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and rank != 0:
        time.sleep(OTHER_RANKS_REPORT_AFTER_S)
    if os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes", "on"}:
        traceback.print_exception(error)
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        os._exit(code)  # other ranks may sit in a collective: a normal exit could hang or abort in gloo's threads
    raise SystemExit(code) from error


def parse_configs(config_classes: Sequence[type], args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `--config x.yaml` (new defaults) then CLI flags (which win) into the given dataclasses.

    Unknown YAML keys or flags are fatal, so a typo never passes silently; prefixes are not expanded either
    (`--num_sample 8` is an error, never taken as `--num_samples 8`). The deepspeed launcher's `--local_rank` is
    accepted by the underlying `HfArgumentParser` when one class is a `TrainingArguments`.
    """
    parser = TrlParser(list(config_classes), allow_abbrev=False)
    try:
        return parser.parse_args_and_config(args=args, fail_with_unknown_args=True)
    except (ValueError, OSError, yaml.YAMLError) as e:  # unknown keys, a class's own checks, a bad --config file
        if exit_code_of(e) is not None:
            raise
        raise ConfigError(str(e)) from e


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
