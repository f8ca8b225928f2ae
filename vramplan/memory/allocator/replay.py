"""Replay an allocation sequence through the caching-allocator model: the reserved peak and what is free then."""

from __future__ import annotations

from dataclasses import dataclass

from .caching import AllocatorOOM, CachingAllocator
from .fast_expandable import replay_expandable
from .fast_replay import replay_default, replay_streams
from .ops import EMPTY_CACHE, Sequence


@dataclass(frozen=True)
class ReplayResult:
    peak_reserved_bytes: int
    #: allocated bytes, free bytes inside segments and the largest free block when reserved last rose to its peak
    allocated_at_peak_bytes: int
    free_in_segments_at_peak_bytes: int
    largest_free_block_at_peak_bytes: int
    #: the allocator's own peak allocated (request sizes rounded to 512 bytes, large blocks not split)
    peak_allocated_bytes: int
    num_segments: int
    #: the sequence ran out of memory under `allowed_bytes` (op index where it did), else None
    oom_at_op: int | None = None


def apply_op(allocator, blocks: list, sizes: list[int], op: int) -> None:
    """One Sequence op on `allocator`: allocate tensor op, free tensor ~op, or empty the cache (blocks[i] holds
    tensor i's block). replay() inlines the same dispatch in its loop."""
    if op >= 0:
        blocks[op] = allocator.malloc(sizes[op])
    elif op == EMPTY_CACHE:
        allocator.empty_cache()
    else:
        allocator.free(blocks[~op])


def replay(
    seq: Sequence,
    *,
    expandable_segments: bool = False,
    allowed_bytes: int | None = None,
    total_memory_bytes: int = 80 * 1024**3,
) -> ReplayResult:
    """Feed every allocation and free of `seq` to a CachingAllocator, each allocation on its stream (Sequence.streams);
    the default settings take fast_replay.py's inlined loop (same rules, same result): replay_default on one stream,
    replay_streams with side streams (DeepSpeed ZeRO's reduction stream); expandable segments with no cap
    fast_expandable.py's. The class replays the rest (a memory cap, which can run out of memory)."""
    if not expandable_segments and allowed_bytes is None:
        if seq.streams:
            fast = replay_streams(seq.sizes, seq.ops, seq.streams, EMPTY_CACHE)
        else:
            fast = replay_default(seq.sizes, seq.ops, EMPTY_CACHE)
        peak, (alloc, free_bytes, largest), peak_alloc, segments = fast
        return ReplayResult(peak, alloc, free_bytes, largest, peak_alloc, segments)
    if expandable_segments and allowed_bytes is None:
        try:
            peak, (alloc, free_bytes, largest), peak_alloc = replay_expandable(
                seq.sizes, seq.ops, seq.streams, EMPTY_CACHE, total_memory_bytes
            )
        except ValueError:  # off the 512-byte grid: the class below
            pass
        else:  # (expandable segments map pages into segments that are never cudaMalloc'd: no segment is counted)
            return ReplayResult(peak, alloc, free_bytes, largest, peak_alloc, 0)
    a = CachingAllocator(
        expandable_segments=expandable_segments, allowed_bytes=allowed_bytes, total_memory_bytes=total_memory_bytes
    )
    sizes, blocks, streams = seq.sizes, [None] * len(seq.sizes), seq.streams
    malloc, free = a.malloc, a.free
    oom_at = None
    try:
        for n, op in enumerate(seq.ops):
            if op >= 0:
                blocks[op] = malloc(sizes[op], streams.get(op, 0))
            elif op == EMPTY_CACHE:
                a.empty_cache()
            else:
                free(blocks[~op])
    except AllocatorOOM:
        oom_at = n
    alloc, free_bytes, largest = a.at_peak_reserved
    return ReplayResult(a.peak_reserved, alloc, free_bytes, largest, a.peak_allocated, a.num_segments, oom_at)
