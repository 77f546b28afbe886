"""The collectives of common.distributed: identities in one process, the right values across 2 gloo processes."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.distributed import (
    all_gather_objects,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    free_port,
    rank_and_world,
    shard,
    zero3_gathered,
)


def test_single_process_identities():
    assert rank_and_world() == (0, 1)
    assert list(shard(5)) == [0, 1, 2, 3, 4]
    assert all_reduce_sum([1.0, 2.5], torch.device("cpu")) == [1.0, 2.5]
    value = torch.tensor(3.0)
    assert all_reduce_mean(value) is value
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    assert broadcast_object("x") == "x"
    barrier()  # no process group: returns at once
    p = torch.nn.Parameter(torch.ones(2))
    with zero3_gathered([p], modifier_rank=0):  # no ZeRO-3: nothing is gathered, the weights are the local ones
        assert p.shape == (2,)


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {
            "rank_world": list(rank_and_world()),
            "shard": list(shard(7)),
            "sum": all_reduce_sum([rank + 1.0, 10.0], torch.device("cpu")),
            "mean": all_reduce_mean(torch.tensor(float(rank))).item(),
            "gathered": all_gather_objects({"rank": rank}),
            "broadcast": broadcast_object(f"from {rank}"),
        }
        barrier()
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes(tmp_path):
    # fork: the children inherit the imported modules (spawn would re-import torch in each, ~10 s)
    mp.start_processes(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["rank_world"] == [rank, 2]
        assert got["shard"] == list(range(rank, 7, 2))
        assert got["sum"] == [3.0, 20.0]
        assert got["mean"] == 0.5
        assert got["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert got["broadcast"] == "from 0"
