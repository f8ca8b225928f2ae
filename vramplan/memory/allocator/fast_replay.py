"""CachingAllocator's replay in one loop, for the default allocator settings (the estimate's hot path).

The same rules as caching.py (``c10/cuda/CUDACachingAllocator.cpp``: round_size, get_pool, get_free_block,
should_split, alloc_found_block, free_block / try_merge_blocks, release_cached_blocks, get_allocation_size),
restricted to what an estimate replays: one stream, no expandable segments, no memory cap,
``max_split_size_mb`` unset. Inlined into one function over integer keys (size << 48 | address, the
BlockComparatorSize order for one stream), each pool with its own branch and a block as a plain list, it runs
about 2.5 times as fast as the class; the result is the same to the byte (tests/test_allocator_fast_replay.py
replays every shipped run's sequence and random traces through both).
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


def replay_default(sizes: list[int], ops: list[int], empty_cache_op: int):
    """(peak reserved, (allocated, free in segments, largest free block) when reserved last peaked, peak allocated,
    segments) of replaying `ops` (i >= 0 allocates tensor i of sizes[i], ~i frees it, empty_cache_op empties the
    cache) through DeviceCachingAllocator with the default settings.

    A block (blocks.Block with what one stream without expandable segments needs) is a list
    [address, size, previous block, next block, allocated]. An allocated block of at most kSmallSize is a small-pool
    one: the small pool splits off every remainder (should_split), the large pool serves only larger requests."""
    shift, min_block, small_max = _ADDR_BITS, MIN_BLOCK_BYTES, SMALL_SIZE_BYTES
    round_mask = MIN_BLOCK_BYTES - 1  # round_size up to a multiple of kMinBlockSize, a power of two
    small_keys: list[int] = []
    small_blocks: dict[int, list] = {}
    large_keys: list[int] = []
    large_blocks: dict[int, list] = {}
    blocks: list[list | None] = [None] * len(sizes)
    allocated = reserved = peak_allocated = peak_reserved = 0
    at_peak = (0, 0, 0)
    at_peak_allocated = 0  # at_peak[0]
    segments = 0
    addresses = DeviceAddresses()
    take_address = addresses.take
    end = len(ops)  # the frees after the last allocation or empty_cache change none of the results: left out
    while end and ops[end - 1] < 0 and ops[end - 1] != empty_cache_op:
        end -= 1

    for op in ops if end == len(ops) else ops[:end]:
        if op >= 0:
            nbytes = sizes[op]
            size = nbytes + (-nbytes & round_mask) if nbytes > min_block else min_block  # round_size
            if size <= small_max:  # get_pool: the small pool
                i = bisect_left(small_keys, size << shift)
                if i < len(small_keys):  # get_free_block: best fit on (size, address)
                    block = small_blocks.pop(small_keys.pop(i))
                    remaining = block[1] - size
                else:  # alloc_block: a new kSmallBuffer segment where cudaMalloc puts it (addresses.py)
                    block = [take_address(SMALL_BUFFER_BYTES), SMALL_BUFFER_BYTES, None, None, True]
                    reserved += SMALL_BUFFER_BYTES
                    segments += 1
                    if reserved > peak_reserved:
                        peak_reserved, at_peak_allocated = reserved, allocated
                        at_peak = (allocated, reserved - allocated, max(
                            small_keys[-1] >> shift if small_keys else 0, large_keys[-1] >> shift if large_keys else 0
                        ))  # fmt: skip
                    remaining = SMALL_BUFFER_BYTES - size
                if remaining:  # should_split: >= kMinBlockSize left (sizes are multiples of it)
                    nxt = block[3]
                    rest = [block[0] + size, remaining, block, nxt, False]
                    if nxt is not None:
                        nxt[2] = rest
                    block[3] = rest
                    block[1] = size
                    k = remaining << shift | rest[0]
                    insort(small_keys, k)
                    small_blocks[k] = rest
                block[4] = True
                allocated += size
            else:  # the large pool
                i = bisect_left(large_keys, size << shift)
                if i < len(large_keys):
                    block = large_blocks.pop(large_keys.pop(i))
                else:  # get_allocation_size: kLargeBuffer below kMinLargeAlloc, else the request in kRoundLarge steps
                    if size < MIN_LARGE_ALLOC_BYTES:
                        seg = LARGE_BUFFER_BYTES
                    else:
                        seg = -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES
                    block = [take_address(seg), seg, None, None, True]
                    reserved += seg
                    segments += 1
                    if reserved > peak_reserved:
                        peak_reserved, at_peak_allocated = reserved, allocated
                        at_peak = (allocated, reserved - allocated, max(
                            small_keys[-1] >> shift if small_keys else 0, large_keys[-1] >> shift if large_keys else 0
                        ))  # fmt: skip
                remaining = block[1] - size
                if remaining > small_max:  # should_split: more than kSmallSize left
                    nxt = block[3]
                    rest = [block[0] + size, remaining, block, nxt, False]
                    if nxt is not None:
                        nxt[2] = rest
                    block[3] = rest
                    block[1] = size
                    k = remaining << shift | rest[0]
                    insort(large_keys, k)
                    large_blocks[k] = rest
                    allocated += size
                else:  # the whole block
                    allocated += block[1]
                block[4] = True
            if allocated > peak_allocated:  # noqa: PLR1730 (a branch is faster than max() in this loop)
                peak_allocated = allocated
            if allocated > at_peak_allocated and reserved == peak_reserved:
                at_peak_allocated = allocated
                largest_small = small_keys[-1] >> shift if small_keys else 0  # cacheInfo's largest free block:
                largest_large = large_keys[-1] >> shift if large_keys else 0
                largest = largest_small if largest_small > largest_large else largest_large  # noqa: FURB136 (faster)
                at_peak = (allocated, reserved - allocated, largest)
            blocks[op] = block
        elif op == empty_cache_op:  # release_cached_blocks: cudaFree every unsplit cached block
            for keys, pool in ((large_keys, large_blocks), (small_keys, small_blocks)):
                kept = []
                for k in keys:
                    b = pool[k]
                    if b[2] is None and b[3] is None:
                        del pool[k]
                        reserved -= b[1]
                        segments -= 1
                        addresses.give_back(b[0])
                    else:
                        kept.append(k)
                keys[:] = kept
        else:  # free_block: merge with free neighbours (try_merge_blocks), back to the pool
            block = blocks[~op]
            block[4] = False
            size = block[1]
            allocated -= size
            if size <= small_max:
                keys, pool = small_keys, small_blocks
            else:
                keys, pool = large_keys, large_blocks
            prev = block[2]
            if prev is not None and not prev[4]:
                k = prev[1] << shift | prev[0]
                del keys[bisect_left(keys, k)]
                del pool[k]
                block[0] = prev[0]
                before = block[2] = prev[2]
                if before is not None:
                    before[3] = block
                size += prev[1]
            nxt = block[3]
            if nxt is not None and not nxt[4]:
                k = nxt[1] << shift | nxt[0]
                del keys[bisect_left(keys, k)]
                del pool[k]
                after = block[3] = nxt[3]
                if after is not None:
                    after[2] = block
                size += nxt[1]
            block[1] = size
            k = size << shift | block[0]
            insort(keys, k)
            pool[k] = block
    return peak_reserved, at_peak, peak_allocated, segments
