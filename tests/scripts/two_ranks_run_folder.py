"""Run-folder locks and checkpoint choice across 2 ranks (gloo), for `tests/common/test_run_folder.py`.

    torchrun --nproc_per_node 2 tests/scripts/two_ranks_run_folder.py BASE

Each rank writes `BASE/rank{R}.json` with what it saw:
- `one_node`: both ranks claim `BASE/one_node` (local ranks 0 and 1: the node's local rank 0 holds the lock);
- `shared_two_nodes`: both ranks claim `BASE/shared` as two nodes' local rank 0 on a shared filesystem;
- `busy`: both ranks claim `BASE/busy`, whose lock another live process holds (every rank must refuse);
- `checkpoint`: each rank, as its own node, picks the checkpoint of its node-local folder `BASE/node{R}`.
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from common import run_folder
from common.checkpoints import last_complete_checkpoint
from common.run_folder import RunFolderError, claim_output_dir, release_output_dir


@dataclass
class HeldConfig:  # as tests/common/test_run_folder.py's
    lr: float = 0.1


def claim(folder: Path) -> dict:
    try:
        resumed = claim_output_dir(folder, [HeldConfig()], {})
    except RunFolderError as err:
        return {"error": str(err)}
    held = os.path.realpath(folder) in run_folder._LOCKS
    release_output_dir(folder)
    return {"resumed": resumed, "holds_lock": held}


def main(base: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen = {"one_node": claim(base / "one_node")}
    os.environ["LOCAL_RANK"] = "0"  # from here on each rank plays a node of its own
    seen["shared_two_nodes"] = claim(base / "shared")
    seen["busy"] = claim(base / "busy")
    seen["checkpoint"] = last_complete_checkpoint(base / f"node{rank}")
    seen["left"] = sorted(p.name for p in (base / f"node{rank}").iterdir())
    (base / f"rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
