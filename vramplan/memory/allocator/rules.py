"""Caching-allocator rounding, cuBLAS workspaces, CUDA context and fragmentation."""

from ..constants import (
    ALLOC_BLOCK_BYTES,
    CUBLAS_HANDLES_IN_TRAINING,
    CUBLAS_WORKSPACE_OLDER_BYTES,
    CUBLAS_WORKSPACE_SM90_BYTES,
)


def block_bytes(nbytes: int) -> int:
    """Bytes the caching allocator hands out for one tensor: ceil(nbytes / 512) * 512 (0 stays 0)."""
    return -(-nbytes // ALLOC_BLOCK_BYTES) * ALLOC_BLOCK_BYTES


def tensors_bytes(count: int, nbytes_each: int) -> int:
    """`count` equal tensors, each rounded to allocator blocks."""
    return count * block_bytes(nbytes_each)


def workspace_bytes(compute_capability: str | None) -> int:
    """cuBLAS workspaces allocated through the caching allocator during training.

    2 handles (main thread + autograd device thread) x 32 MiB on sm90+ (8.125 MiB before),
    per CublasHandlePool.cpp. Unknown GPU -> the Hopper size (the larger, so no under-estimate).
    """
    major = _cc_major(compute_capability)
    per_handle = CUBLAS_WORKSPACE_SM90_BYTES if major is None or major >= 9 else CUBLAS_WORKSPACE_OLDER_BYTES
    return CUBLAS_HANDLES_IN_TRAINING * per_handle


def reserved_from_allocated(peak_allocated_bytes: int, fragmentation: float, logits_bytes: int = 0,
                            fragmentation_logits: float = 0.0) -> int:
    """max_memory_reserved ~= allocated x (1 + fragmentation) + fragmentation_logits x 4 N V, in 2 MiB segments.

    The caching allocator strands freed blocks it cannot reuse for a later, differently sized request; the
    largest such blocks are the fp32 logits/loss buffers (4 N V bytes each), so the gap grows with them
    (H100 campaign: gap ~ 1.0 x 4NV + 1 % of allocated).
    """
    reserved = int(peak_allocated_bytes * (1.0 + fragmentation) + fragmentation_logits * logits_bytes)
    return _round_to_segment(reserved)


#: cudaMalloc granularity of the large pool: requests above 10 MiB get a segment of their size in 2 MiB steps
#: (c10/cuda/CUDACachingAllocator.cpp, kRoundLarge)
SEGMENT_ROUND_BYTES = 2 * 1024**2


#: requests up to 1 MiB come from the small pool's own 2 MiB segments and never split a large segment
#: (CUDACachingAllocator.cpp, kSmallSize)
SMALL_POOL_MAX_BYTES = 1024**2


def steady_loss_reserved(
    persistent_bytes: int, loss_chain_bytes: int, logits_fp32_bytes: int, state_bytes: int, largest_state_tensor_bytes: int
) -> int:
    """Reserved bytes once a steady step's loss buffers are allocated, when none of them can reuse the cache.

    torch optimizers create their states lazily, in the first ``optimizer.step()``, after step 0's loss
    buffers were freed: best-fit puts states (and step 0's gradients) into those freed segments, so no
    loss-sized hole is left when the next step computes its loss, and its loss buffers get new segments
    (``scripts/allocator_replay.py`` on ``--memory-snapshot`` runs, H100, torch 2.11: llama-3.2-1b full FT
    s2048 gets three new 0.98 GiB segments in step 1, reserved 9.29 -> 12.22 GiB while allocated stays
    below its step-0 peak; at s4096 the bf16 logits need a new segment too, four in all).

    ``persistent_bytes``: what the pool holds, tightly packed, after step 0's optimizer step (weights,
    states and gradients; the step's own temporaries are freed as whole tensors and do get reused).
    ``loss_chain_bytes``: every loss buffer of one step (bf16 logits, fp32 upcast, log_softmax output and
    its gradient: 14 N V bytes; more with softcapping).

    The bound is 0 (the freed loss segments stay whole for the next step) when the optimizer puts no
    state into them: states smaller than one 4 N V buffer (paged optimizers keep them outside the pool:
    llama-3.2-1b full FT with paged_adamw_8bit reserves 5.84 GiB, below this bound), or state tensors
    of at most 1 MiB, which the small pool serves (LoRA adapters: no new loss segment in any LoRA replay).
    ``logits_fp32_bytes``: one 4 N V buffer. ``state_bytes`` / ``largest_state_tensor_bytes``: the
    allocator-held optimizer states, and the largest single state tensor."""
    if loss_chain_bytes <= 0 or largest_state_tensor_bytes <= SMALL_POOL_MAX_BYTES:
        return 0
    if state_bytes < logits_fp32_bytes:
        return 0
    return _round_to_segment(persistent_bytes) + _round_to_segment(loss_chain_bytes)


def _round_to_segment(nbytes: int) -> int:
    return -(-nbytes // SEGMENT_ROUND_BYTES) * SEGMENT_ROUND_BYTES


def _cc_major(compute_capability: str | None) -> int | None:
    if not compute_capability:
        return None
    try:
        return int(compute_capability.split(".")[0])
    except ValueError:
        return None
