"""Reports beside a run's outputs: matplotlib figures written headless, and wandb runs opened and closed once.

* `pyplot()`: `matplotlib.pyplot` on the file-only Agg backend (no display on a training node).
* `wandb_run(...)`: a wandb run for a job's own report (evaluation, pair building), logged into `dir` (its
  `wandb/offline-run-*` beside the outputs it describes with `WANDB_MODE=offline`) and always finished.
* `finish_wandb()`: finish the run a `Trainer` opened (it never does; without it an offline run has no summary).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any


def pyplot():
    """`matplotlib.pyplot`, with the Agg backend selected first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    """Lay out, write as PNG (100 dpi) and close `fig`."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


@contextlib.contextmanager
def wandb_run(name: str, config: Mapping[str, Any], dir: str, **init_kwargs) -> Iterator[Any]:
    """`wandb.init(name=..., config=..., dir=...)` for the block, finished on exit (also on an error)."""
    import wandb

    run = wandb.init(name=name, config=dict(config), dir=str(dir), **init_kwargs)
    try:
        yield run
    finally:
        run.finish()


def finish_wandb() -> None:
    """Finish the active wandb run, if wandb is installed and a run is open."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
