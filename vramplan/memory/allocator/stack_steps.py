"""Steps of the predicted sequence that a stack or a strategy adds (sequence.py's _Builder mixes them in): DDP's
construction (its broadcast's flat copies, then the Reducer's buckets), Unsloth's staging buffers for offloaded
checkpoints and its kept buffers.

A mixin of sequence._Builder (it uses the builder's m, s, t, seq, profile, staging, first_pass and double_buffered);
kept apart so that sequence.py stays the training step's builder.
"""

from __future__ import annotations

from .ddp_broadcast import DDP_BROADCAST_IN_FLIGHT, ddp_flat_copies

BF16 = 2
#: DDP's Reducer buckets (torch/nn/parallel/distributed.py: _DEFAULT_FIRST_BUCKET_BYTES, bucket_cap_mb=25)
DDP_FIRST_BUCKET_BYTES = 1024**2
DDP_BUCKET_BYTES = 25 * 1024**2
#: unsloth_zoo gradient_checkpointing.py INITIAL_GPU_BUFFER_SIZE: 2 * 256 * 2048 bf16 elements per staging buffer
UNSLOTH_STAGING_INITIAL_BYTES = 2 * 256 * 2048 * BF16


def ddp_bucket_sizes(t) -> list[int]:
    """The Reducer's bucket buffers (_Builder.ddp_buckets) for terms `t`: none without DDP."""
    total = sum(t.parallel_persistent.values())
    sizes = []
    for cap in (DDP_FIRST_BUCKET_BYTES, *[DDP_BUCKET_BYTES] * (total // DDP_BUCKET_BYTES + 1)):
        if total <= 0:
            break
        sizes.append(min(cap, total))
        total -= sizes[-1]
    return sizes


def ddp_broadcast_flat_bytes(m, s, t) -> list[int]:
    """The flat copies DDP's construction broadcasts the module's states through (ddp_broadcast.py), in order; none
    without DDP on more than one GPU."""
    return ddp_flat_copies(m, s, t.weights) if s.parallel == "ddp" and s.num_gpus > 1 else []


class StackSteps:
    def ddp_broadcast(self) -> None:
        """DDP's _sync_module_states, before its Reducer is built (ddp_broadcast.py): each bucket's flat copy made,
        the oldest freed once DDP_BROADCAST_IN_FLIGHT are in flight, the last ones freed at the end."""
        seq, in_flight = self.seq, []
        for nbytes in ddp_broadcast_flat_bytes(self.m, self.s, self.t):  # 0: a one-tensor bucket, a view (no op)
            if len(in_flight) == DDP_BROADCAST_IN_FLIGHT:
                seq.free(in_flight.pop(0))
            in_flight.append(seq.alloc(nbytes))
        seq.free(*in_flight)

    def ddp_buckets(self) -> None:
        """DDP (--parallel ddp): accelerator.prepare wraps the model after free_memory(); torch's Reducer
        (torch/csrc/distributed/c10d/reducer.cpp, initialize_buckets) allocates each bucket's contiguous gradient
        buffer, first bucket 1 MiB, the others up to bucket_cap_mb = 25 MiB (distributed.py
        _DEFAULT_FIRST_BUCKET_BYTES, bucket_cap_mb), together the trainable gradients' bytes (estimator's
        ddp.gradient_buckets), kept to the end. Modelled in order of size caps, not of the parameters' dtypes."""
        if self.s.parallel == "ddp":
            self.seq.mark("ddp.broadcast")
            self.ddp_broadcast()
            self.seq.mark("ddp.buckets")
            self.seq.alloc_all(ddp_bucket_sizes(self.t))

    def _staging_buffers(self) -> None:
        """Unsloth's offloaded checkpointing (unsloth_zoo/gradient_checkpointing.py): at the first offload,
        _ensure_device_buffers makes GPU_BUFFERS' and GPU_BUFFERS_B's staging buffers (INITIAL_GPU_BUFFER_SIZE, 2 MiB
        of bf16 each) and the first grows to the checkpoint's size (``GPU_BUFFER.resize_``: a new storage, the old one
        freed); the second grows in the first forward after a backward, when double buffering is switched on (free
        memory above DOUBLE_BUFFER_HEADROOM). Both stay to the end; each layer's backward copies its checkpoint back
        into one of them (no allocation). History u-l8-qlora-gc-s4096: +2 +2 +32 -2 MiB before layer 0."""
        if not self.staging:
            self.staging = [self.seq.alloc(UNSLOTH_STAGING_INITIAL_BYTES) for _ in range(2)]
            self._grow_staging(0)
        elif not self.first_pass and not self.double_buffered:
            self.double_buffered = True
            self._grow_staging(1)

    def _grow_staging(self, k: int) -> None:
        """``GPU_BUFFER.resize_(gpu_numel)`` when the checkpoint is larger: the new storage made, the old freed."""
        seq, one = self.seq, self.t.one_checkpoint
        if one > seq.sizes[self.staging[k]]:
            grown = seq.alloc(one)
            seq.free(self.staging[k])
            self.staging[k] = grown

    def _stack_buffers(self) -> None:
        """Buffers the stack keeps from its first forward on (StackProfile.buffers: Unsloth's global dequantization
        buffer), made before layer 0's first matmul."""
        for nbytes in self.profile.buffers(self.m, self.s).values():
            self.seq.alloc(nbytes)
