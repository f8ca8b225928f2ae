"""CachingAllocator's replay in one loop, for the default allocator settings (the estimate's hot path).

The same rules as caching.py (``c10/cuda/CUDACachingAllocator.cpp``: round_size, get_pool, get_free_block,
should_split, alloc_found_block, free_block / try_merge_blocks, release_cached_blocks, get_allocation_size),
restricted to what an estimate replays: one stream, no expandable segments, no memory cap,
``max_split_size_mb`` unset. Inlined into one function over integer keys (size << 48 | address, the
BlockComparatorSize order for one stream) it runs about twice as fast as the class; the result is the same to the
byte (tests/test_allocator_fast_replay.py replays every shipped run's sequence and random traces through both).
"""

from __future__ import annotations

from bisect import bisect_left, insort

from .addresses import DeviceAddresses
from .blocks import (
    LARGE_BUFFER_BYTES,
    MIN_BLOCK_BYTES,
    MIN_LARGE_ALLOC_BYTES,
    ROUND_LARGE_BYTES,
    SMALL_BUFFER_BYTES,
    SMALL_SIZE_BYTES,
)

#: a free block's key: its size above this many bits, its (virtual) address below
_ADDR_BITS = 48


class _Block:
    """blocks.Block with only what one stream without expandable segments needs."""

    __slots__ = ("addr", "allocated", "next", "prev", "size", "small")

    def __init__(self, addr: int, size: int, small: bool, prev, nxt):
        self.addr, self.size, self.small, self.allocated, self.prev, self.next = addr, size, small, False, prev, nxt


def replay_default(sizes: list[int], ops: list[int], empty_cache_op: int):
    """(peak reserved, (allocated, free in segments, largest free block) when reserved last peaked, peak allocated,
    segments) of replaying `ops` (i >= 0 allocates tensor i of sizes[i], ~i frees it, empty_cache_op empties the
    cache) through DeviceCachingAllocator with the default settings."""
    shift = _ADDR_BITS
    small_keys: list[int] = []
    small_blocks: dict[int, _Block] = {}
    large_keys: list[int] = []
    large_blocks: dict[int, _Block] = {}
    blocks: list[_Block | None] = [None] * len(sizes)
    allocated = reserved = peak_allocated = peak_reserved = 0
    at_peak = (0, 0, 0)
    segments = 0
    addresses = DeviceAddresses()
    take_address = addresses.take

    for op in ops:
        if op >= 0:
            nbytes = sizes[op]
            size = MIN_BLOCK_BYTES if nbytes < MIN_BLOCK_BYTES else -(-nbytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES
            small = size <= SMALL_SIZE_BYTES
            keys, pool = (small_keys, small_blocks) if small else (large_keys, large_blocks)
            i = bisect_left(keys, size << shift)
            if i < len(keys):  # get_free_block: best fit on (size, address)
                block = pool.pop(keys.pop(i))
            else:  # alloc_block: a new segment (get_allocation_size) where cudaMalloc puts it (addresses.py)
                if small:
                    seg = SMALL_BUFFER_BYTES
                elif size < MIN_LARGE_ALLOC_BYTES:
                    seg = LARGE_BUFFER_BYTES
                else:
                    seg = -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES
                block = _Block(take_address(seg), seg, small, None, None)
                reserved += seg
                segments += 1
                if reserved > peak_reserved:
                    peak_reserved = reserved
                    at_peak = (allocated, reserved - allocated, _largest(small_keys, large_keys, shift))
            remaining = block.size - size
            if remaining >= MIN_BLOCK_BYTES if small else remaining > SMALL_SIZE_BYTES:  # should_split
                rest = _Block(block.addr + size, remaining, small, block, block.next)
                if rest.next is not None:
                    rest.next.prev = rest
                block.next = rest
                block.size = size
                k = remaining << shift | rest.addr
                insort(keys, k)
                pool[k] = rest
            block.allocated = True
            allocated += block.size
            if allocated > peak_allocated:  # noqa: PLR1730 (a branch is faster than max() in this loop)
                peak_allocated = allocated
            if reserved == peak_reserved and allocated > at_peak[0]:
                at_peak = (allocated, reserved - allocated, _largest(small_keys, large_keys, shift))
            blocks[op] = block
        elif op == empty_cache_op:  # release_cached_blocks: cudaFree every unsplit cached block
            for keys, pool in ((large_keys, large_blocks), (small_keys, small_blocks)):
                kept = []
                for k in keys:
                    b = pool[k]
                    if b.prev is None and b.next is None:
                        del pool[k]
                        reserved -= b.size
                        segments -= 1
                        addresses.give_back(b.addr)
                    else:
                        kept.append(k)
                keys[:] = kept
        else:  # free_block: merge with free neighbours, back to the pool
            block = blocks[~op]
            block.allocated = False
            allocated -= block.size
            keys, pool = (small_keys, small_blocks) if block.small else (large_keys, large_blocks)
            prev, nxt = block.prev, block.next
            if prev is not None and not prev.allocated:
                k = prev.size << shift | prev.addr
                del keys[bisect_left(keys, k)]
                del pool[k]
                block.addr, block.prev = prev.addr, prev.prev
                if block.prev is not None:
                    block.prev.next = block
                block.size += prev.size
            if nxt is not None and not nxt.allocated:
                k = nxt.size << shift | nxt.addr
                del keys[bisect_left(keys, k)]
                del pool[k]
                block.next = nxt.next
                if block.next is not None:
                    block.next.prev = block
                block.size += nxt.size
            k = block.size << shift | block.addr
            insort(keys, k)
            pool[k] = block
    return peak_reserved, at_peak, peak_allocated, segments


def _largest(small_keys: list[int], large_keys: list[int], shift: int) -> int:
    """cacheInfo's largest free block: the last key of each pool."""
    return max(small_keys[-1] >> shift if small_keys else 0, large_keys[-1] >> shift if large_keys else 0)
