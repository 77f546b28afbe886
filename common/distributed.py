"""What DeepSpeed needs from our code on any accelerator, CPU included, in one place.

* `init_distributed_early()`: under a launcher (`deepspeed`, `torchrun`), initialise the process group before any
  `from_pretrained`, or ZeRO-3's `zero.Init` sizes its batch for one rank and fails on several.
* `shutdown(trainer)`: destroy the engine, then barrier and destroy the process group. Without it, gloo's async
  all-gather threads race interpreter exit and a multi-rank run aborts (exit -6) about half the time.

And the collectives the jobs use, each a no-op (or the identity) in a single process: `rank_and_world`, `shard`,
`local_device`, `resolve_device`, `barrier`, `all_reduce_sum`, `all_reduce_mean`, `all_gather_objects`, `broadcast_object`, and
`zero3_gathered` (ZeRO-3's `GatheredParameters`, nothing otherwise).
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a launcher's `--master_port` (concurrent launches clash on the default)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_distributed() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed_early() -> None:
    """Initialise DeepSpeed's process group when running under a launcher (no-op otherwise)."""
    if not launched_distributed() or dist.is_initialized():
        return
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int) -> range:
    """This rank's share of `n` items: every `world`-th index from `rank`."""
    rank, world = rank_and_world()
    return range(rank, n, world)


def local_device() -> torch.device:
    """This rank's GPU (`cuda:LOCAL_RANK`, made the current device: NCCL sends from it) when there is one, else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def resolve_device(device: str) -> torch.device:
    """A device option: `"auto"` is `local_device()`, anything else (`"cpu"`, `"cuda:1"`) is taken as given."""
    return local_device() if device == "auto" else torch.device(device)


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of `values` over all ranks (float64 on `device`, which the backend must accept)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all ranks (a new tensor; `value` itself is left alone)."""
    world = rank_and_world()[1]
    if world > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / world
    return value


def all_gather_objects(obj: Any) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def zero3_gathered(params: Iterable[torch.nn.Parameter], modifier_rank: int | None = None):
    """`deepspeed.zero.GatheredParameters(params, modifier_rank)` under ZeRO-3, a null context otherwise.

    `modifier_rank=None`: read-only, every rank sees the full weights; `0`: what rank 0 writes into them is
    broadcast and re-partitioned on exit (how a loaded value head reaches every rank's shard).
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled() and dist.is_initialized():
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)
    return contextlib.nullcontext()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    """`print` on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs, flush=True)


def shutdown(trainer=None) -> None:
    """Tear down the DeepSpeed engine and the process group cleanly (see module docstring)."""
    engine = getattr(trainer, "model_wrapped", None) if trainer is not None else None
    if engine is not None and hasattr(engine, "destroy"):
        engine.destroy()
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
