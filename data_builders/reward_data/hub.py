"""Sources named by hub id: `path: openbmb/RLAIF-V-Dataset` is the dataset repo's snapshot in the local Hugging Face
cache, found by `huggingface_hub.snapshot_download(repo_id, repo_type="dataset", revision=..., allow_patterns=...,
local_files_only=True)`. The job never downloads: a missing snapshot is an error that gives the download command.

`data_files` (or `subset`, the name of a config whose files sit in a folder of that name, as LLaVA-Critic-113k's
`pairwise/`) picks a file or folder inside the snapshot; `image_root`, when relative and not a local path, is taken
inside the snapshot too (VLFeedback's `merged_images.zip`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from common.config_checks import HUB_ID
from common.errors import InputError


class _Source(Protocol):
    name: str
    path: str
    revision: str | None
    data_files: str | None
    subset: str | None
    image_root: str | None


class HubSnapshotError(InputError):
    """A hub source whose snapshot (or the file asked for in it) is not in the local cache."""


def is_hub_id(path: str) -> bool:
    """`owner/name` that is not an existing local path."""
    return bool(HUB_ID.match(path)) and not Path(path).exists()


def _download_command(spec: _Source, inside: str | None) -> str:
    command = f"huggingface-cli download --repo-type dataset {spec.path}"
    if spec.revision:
        command += f" --revision {spec.revision}"
    if inside:
        command += f" --include '{inside}/*' '{inside}'"
    return command


def snapshot_folder(spec: _Source) -> Path:
    """The local snapshot of the hub dataset `spec.path` (at `spec.revision`), from the cache only."""
    from huggingface_hub import snapshot_download

    inside = spec.data_files or spec.subset
    try:
        folder = snapshot_download(spec.path, repo_type="dataset", revision=spec.revision,
                                   allow_patterns=[inside, f"{inside}/*"] if inside else None,
                                   local_files_only=True)  # fmt: skip
    except OSError as e:  # LocalEntryNotFoundError: no such snapshot (or revision) in the cache
        at = f" at revision {spec.revision!r}" if spec.revision else ""
        raise HubSnapshotError(
            f"sources[{spec.name}].path: {spec.path!r} is neither a local path nor a dataset in the local Hugging Face "
            f"cache{at} ({type(e).__name__}); download it with: {_download_command(spec, inside)}"
        ) from e
    return Path(folder)


def source_files(spec: _Source) -> tuple[Path, Path | None]:
    """(the file or folder the reader reads, the image root or None) of a source given by local path or hub id."""
    if not is_hub_id(spec.path):
        return Path(spec.path), Path(spec.image_root) if spec.image_root else None
    snapshot = snapshot_folder(spec)
    inside = spec.data_files or spec.subset
    path = snapshot / inside if inside else snapshot
    if not path.exists():
        raise HubSnapshotError(f"sources[{spec.name}].data_files: {inside!r} is not in the snapshot of {spec.path} "
                               f"({snapshot}); download it with: {_download_command(spec, inside)}")  # fmt: skip
    image_root = None
    if spec.image_root:
        image_root = Path(spec.image_root)
        if not image_root.exists() and not image_root.is_absolute():
            image_root = snapshot / spec.image_root
    return path, image_root
