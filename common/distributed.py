"""What DeepSpeed needs from our code on any accelerator, CPU included, in one place.

* `init_distributed_early()`: under a launcher (`deepspeed`, `torchrun`), initialise the process group before any
  `from_pretrained`, or ZeRO-3's `zero.Init` sizes its batch for one rank and fails on several.
* `shutdown(trainer)`: destroy the engine, then barrier and destroy the process group. Without it, gloo's async
  all-gather threads race interpreter exit and a multi-rank run aborts (exit -6) about half the time.
"""

from __future__ import annotations

import gc
import os
import socket

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
