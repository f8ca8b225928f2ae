"""Rank 0 of an N-GPU launch, alone on one GPU, with torch's fake process group.

The fake process group (``torch.testing._internal.distributed.fake_pg``) answers every collective
at once without moving a byte: an all-gather leaves its output as allocated, a reduce-scatter its
output, an all-reduce its input. Everything else rank 0 does is what it does in a real launch of
``world_size`` processes: accelerate shards the model over the world size, FSDP2 allocates its
all-gather and reduce-scatter buffers at their full size on its own streams, DDP its gradient
buckets, and the caching allocator sees the same requests in the same order. So a fake rank
records the allocator history of a multi-GPU run on the one GPU that is lent, which is what the
allocator simulation needs to be checked against.

What it does not record: NCCL's own memory (its buffers live outside the caching allocator), the
collectives' time, and anything that depends on the values exchanged. Its record says so
(``extra["process_group"] = "fake"``) and is an allocator history, not a multi-GPU measurement:
it is never shipped with the measured runs.
"""

from __future__ import annotations

import os

from .errors import MeasurementError

#: ``extra["process_group"]`` of a fake rank's record
FAKE_PROCESS_GROUP = "fake"
FAKE_RANK_NOTE = (
    "rank 0 alone with torch's fake process group (no communication): the allocator history of a "
    "{world}-GPU run, without NCCL's memory; not a multi-GPU measurement"
)


def fake_rank_env(world_size: int) -> dict[str, str]:
    """The torchrun variables of rank 0 in a launch of ``world_size`` processes on one host."""
    if world_size < 2:
        raise MeasurementError(f"a fake rank stands in for a launch of 2 or more processes, got {world_size}")
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": os.environ.get("MASTER_PORT", "29517"),
    }


def start_fake_world(world_size: int) -> None:
    """Set rank 0's torchrun variables and open the fake default process group.

    accelerate keeps a process group that is already open (``PartialState`` only calls
    ``init_process_group`` when none is), so the Trainer runs its DDP / FSDP over this one.
    """
    os.environ.update(fake_rank_env(world_size))
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    if dist.is_initialized():
        raise MeasurementError("a process group is already open: a fake rank must start its own")
    dist.init_process_group(backend="fake", store=FakeStore(), rank=0, world_size=world_size)
    _ddp_reduces_in_place(world_size)


def _ddp_reduces_in_place(world_size: int) -> None:
    """Give every DistributedDataParallel a comm hook that does in place what its built-in all-reduce does.

    The fake group's all-reduce future holds None where the Reducer expects the bucket, and the Reducer refuses
    it. The built-in hook (``reducer.cpp``: ``_AllReduceBySumCommHook``) reduces the bucket in place after the
    gradients were copied into it divided by the world size (``copy_grad_to_bucket``: ``mul_out`` into the bucket
    view); with a hook the Reducer copies them undivided and this hook divides the bucket in place. Neither makes
    a tensor, so the allocator sees the same requests.
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    def reduce_in_place(_state, bucket):
        buffer = bucket.buffer()
        buffer.div_(world_size)
        done = torch.futures.Future()
        done.set_result(buffer)
        return done

    built = DistributedDataParallel.__init__

    def init_with_hook(self, *args, **kwargs):
        built(self, *args, **kwargs)
        self.register_comm_hook(None, reduce_in_place)

    DistributedDataParallel.__init__ = init_with_hook
