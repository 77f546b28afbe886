"""Checks the jobs' config `validate()` methods share. Each returns a list of problems (empty when all is well), so
that a config collects them all and `raise_problems` reports every one at once, before anything is loaded."""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.errors import ConfigError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name", as `huggingface_hub` accepts repo ids


def raise_problems(title: str, problems: list[str]) -> None:
    """Raise one `ConfigError` (a `ValueError`) listing every problem (one line when there is one), or nothing when
    the list is empty."""
    if len(problems) == 1:
        raise ConfigError(f"invalid {title}: {problems[0]}")
    if problems:
        raise ConfigError(f"invalid {title}:\n  " + "\n  ".join(problems))


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` as `huggingface_hub` reads it (1/ON/YES/TRUE), at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def output_dir_problems(output_dir: str | None, name: str = "output_dir") -> list[str]:
    """`output_dir` must be given (no silent `./trainer_output`) and must not be an existing file."""
    if not output_dir:
        return [f"{name}: required (--{name} FOLDER); there is no default folder"]
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        return [f"{name}: {output_dir!r} is an existing file, not a folder"]
    return []


def model_path_problems(path: str | None, name: str, required: bool = True) -> list[str]:
    """A model given as a local folder must exist; a hub id (`org/name`) passes only when the hub may be used."""
    if not path:
        return [f"{name}: required (a local model folder or a hub id 'org/name')"] if required else []
    if Path(path).exists():
        return []
    if HUB_ID.match(path) and not hub_offline():
        return []  # downloaded by from_pretrained
    why = "and HF_HUB_OFFLINE=1 forbids downloading it as a hub id" if HUB_ID.match(path) else "nor is it a hub id"
    return [f"{name}: the local path {path!r} does not exist, {why}"]
