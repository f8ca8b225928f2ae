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


def _cc_major(compute_capability: str | None) -> int | None:
    if not compute_capability:
        return None
    try:
        return int(compute_capability.split(".")[0])
    except ValueError:
        return None
