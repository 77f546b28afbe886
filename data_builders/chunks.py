"""What the chunked, resumable data jobs share (the pair builder, the reward-data job): chunk file names, and the
chunks folder cleared of what a killed run left half-written.

A chunk counts as finished once its statistics file `chunks/chunk-NNNNNN.json` exists; it is written last, and every
file is renamed into place atomically (`common.io`), so a killed job loses at most the chunks it was working on.
Whether a rerun may resume in `output_dir` at all is `common.run_folder`'s call.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def chunk_paths(out_dir: Path, chunk: int) -> tuple[Path, Path]:
    """(the chunk's data folder, its statistics file)."""
    base = out_dir / "chunks" / f"chunk-{chunk:06d}"
    return base, base.with_suffix(".json")


def prepare_chunks_dir(out_dir: Path) -> Path:
    """Create `out_dir/chunks` and delete the half-written files (`.<name>.tmp-<pid>`) of a killed run."""
    chunks = out_dir / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    for leftover in chunks.glob(".*.tmp-*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return chunks
