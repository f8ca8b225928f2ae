"""Caching-allocator rounding, cuBLAS workspaces, CUDA context and fragmentation."""

from .constants import (
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
    two_mib = 2 * 1024**2
    reserved = int(peak_allocated_bytes * (1.0 + fragmentation) + fragmentation_logits * logits_bytes)
    return -(-reserved // two_mib) * two_mib


#: loss buffers of a steady step that need segments of their own (snapshot replays, H100, torch 2.11): the
#: fp32 upcast of the logits, the log_softmax output and its gradient, 4 N V bytes each
STEADY_LOSS_FRESH_BUFFERS = 3
#: cudaMalloc granularity of the large pool: requests above 10 MiB get a segment of their size in 2 MiB steps
#: (c10/cuda/CUDACachingAllocator.cpp, kRoundLarge)
SEGMENT_ROUND_BYTES = 2 * 1024**2


def steady_loss_reserved(persistent_bytes: int, logits_fp32_bytes: int, state_bytes: int) -> int:
    """Reserved bytes once a steady step's loss buffers are allocated, when none of them can reuse the cache.

    torch optimizers create their states lazily, in the first ``optimizer.step()``, after step 0's loss
    buffers were freed: best-fit puts states (and step 0's gradients) into those freed segments, so no
    4 N V-byte hole is left when the next step computes its loss, and each of its three 4 N V buffers gets
    a new segment (``scripts/allocator_replay.py`` on ``--memory-snapshot`` runs: llama-3.2-1b full FT,
    s2048, 3 fresh 0.98 GiB segments in step 1, reserved 9.29 -> 12.22 GiB while allocated stays below
    its step-0 peak; the same for 3B, and for 1B at s1024 with 0.49 GiB segments).

    ``persistent_bytes``: what the pool holds, tightly packed, after step 0's optimizer step (weights,
    states and gradients; the step's own temporaries are freed as whole tensors and do get reused). For
    ``state_bytes``: optimizer states the allocator holds (paged states live outside it). States smaller
    than the three loss segments (LoRA, paged optimizers: llama-3.2-1b full FT with paged_adamw_8bit
    reserves 5.84 GiB, below this bound's 6.2) leave room for the next loss: the bound is 0 then."""
    if logits_fp32_bytes <= 0 or state_bytes < STEADY_LOSS_FRESH_BUFFERS * logits_fp32_bytes:
        return 0
    segment = -(-logits_fp32_bytes // SEGMENT_ROUND_BYTES) * SEGMENT_ROUND_BYTES
    base = -(-persistent_bytes // SEGMENT_ROUND_BYTES) * SEGMENT_ROUND_BYTES
    return base + STEADY_LOSS_FRESH_BUFFERS * segment


def _cc_major(compute_capability: str | None) -> int | None:
    if not compute_capability:
        return None
    try:
        return int(compute_capability.split(".")[0])
    except ValueError:
        return None
