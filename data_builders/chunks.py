"""What the chunked, resumable data jobs share (the pair builder, the reward-data job): the chunk file names and the
output folder that either starts fresh or resumes a build made with the same content fields.

A chunk counts as finished once its statistics file `chunks/chunk-NNNNNN.json` exists; it is written last, and every
file is renamed into place atomically, so a killed job loses at most the chunks it was working on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.io import write_text_atomic


def chunk_paths(out_dir: Path, chunk: int) -> tuple[Path, Path]:
    """(the chunk's data folder, its statistics file)."""
    base = out_dir / "chunks" / f"chunk-{chunk:06d}"
    return base, base.with_suffix(".json")


def prepare_output_dir(cfg: Any, rank: int = 0, barrier: Callable[[], None] = lambda: None) -> Path:
    """Create `cfg.output_dir`, or check that the build already there used the same `cfg.content_fields()` (then
    resume); with `cfg.overwrite` a different build is deleted instead.

    Every rank checks (same files, same verdict, so all raise together) before rank 0 changes anything.
    """
    out = Path(cfg.output_dir)
    state = out / "build_config.json"
    wanted = json.loads(json.dumps(cfg.content_fields()))
    old = json.loads(state.read_text()) if state.exists() else None
    stale = (old is not None and old != wanted) or (old is None and out.exists() and any(out.iterdir()))
    if stale and not cfg.overwrite:
        if old is None:
            raise ValueError(f"output_dir {out} is not empty and holds no build of this job: choose another "
                             "output_dir or set --overwrite true")  # fmt: skip
        diff = {k: (old.get(k), v) for k, v in wanted.items() if old.get(k) != v}
        raise ValueError(f"output_dir {out} holds a build with a different config {diff} (old, new): "
                         "choose another output_dir or set --overwrite true")  # fmt: skip
    barrier()
    if rank == 0:
        if stale:
            shutil.rmtree(out)
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        for leftover in (out / "chunks").glob(".*.tmp-*"):  # half-written files of a killed run
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        write_text_atomic(state, json.dumps(wanted, sort_keys=True))
    barrier()
    return out
