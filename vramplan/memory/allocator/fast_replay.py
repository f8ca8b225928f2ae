"""CachingAllocator's replay in one loop, for the default allocator settings (the estimate's hot path).

The same rules as caching.py (``c10/cuda/CUDACachingAllocator.cpp``: round_size, get_pool, get_free_block,
should_split, alloc_found_block, free_block / try_merge_blocks, release_cached_blocks, get_allocation_size),
restricted to what an estimate replays: one stream, no expandable segments, no memory cap,
``max_split_size_mb`` unset. Inlined into one function over integer keys (size << 48 | address, the
BlockComparatorSize order for one stream), each pool with its own branch and the blocks' fields in lists of
integers (no object per block, so nothing for the cyclic garbage collector, which otherwise ran a few ms per 8B
replay), it runs about 2.5 times as fast as the class; the result is the same to the byte
(tests/test_allocator_fast_replay.py replays every shipped run's sequence and random traces through both).
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

    Block b (blocks.Block with what one stream without expandable segments needs) is address[b], size[b], prev[b] and
    next[b] (the neighbouring blocks, -1 for none) and used[b] (allocated). An allocated block of at most kSmallSize
    is a small-pool one: the small pool splits off every remainder (should_split), the large pool serves only larger
    requests."""
    shift, min_block, small_max = _ADDR_BITS, MIN_BLOCK_BYTES, SMALL_SIZE_BYTES
    round_mask = MIN_BLOCK_BYTES - 1  # round_size up to a multiple of kMinBlockSize, a power of two
    small_keys: list[int] = []
    small_blocks: dict[int, int] = {}  # key -> free block
    large_keys: list[int] = []
    large_blocks: dict[int, int] = {}
    address: list[int] = []
    size_of: list[int] = []
    prev: list[int] = []
    nxt: list[int] = []
    used: list[bool] = []
    blocks = [0] * len(sizes)  # tensor -> its block
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
                    b = small_blocks.pop(small_keys.pop(i))
                    remaining = size_of[b] - size
                else:  # alloc_block: a new kSmallBuffer segment where cudaMalloc puts it (addresses.py)
                    b = len(address)
                    address.append(take_address(SMALL_BUFFER_BYTES))
                    size_of.append(SMALL_BUFFER_BYTES)
                    prev.append(-1)
                    nxt.append(-1)
                    used.append(True)
                    reserved += SMALL_BUFFER_BYTES
                    segments += 1
                    if reserved > peak_reserved:
                        peak_reserved, at_peak_allocated = reserved, allocated
                        at_peak = (allocated, reserved - allocated, max(
                            small_keys[-1] >> shift if small_keys else 0, large_keys[-1] >> shift if large_keys else 0
                        ))  # fmt: skip
                    remaining = SMALL_BUFFER_BYTES - size
                if remaining:  # should_split: >= kMinBlockSize left (sizes are multiples of it)
                    rest, after, at = len(address), nxt[b], address[b] + size
                    address.append(at)
                    size_of.append(remaining)
                    prev.append(b)
                    nxt.append(after)
                    used.append(False)
                    if after >= 0:
                        prev[after] = rest
                    nxt[b] = rest
                    size_of[b] = size
                    k = remaining << shift | at
                    insort(small_keys, k)
                    small_blocks[k] = rest
                used[b] = True
                allocated += size
            else:  # the large pool
                i = bisect_left(large_keys, size << shift)
                if i < len(large_keys):
                    b = large_blocks.pop(large_keys.pop(i))
                else:  # get_allocation_size: kLargeBuffer below kMinLargeAlloc, else the request in kRoundLarge steps
                    if size < MIN_LARGE_ALLOC_BYTES:
                        seg = LARGE_BUFFER_BYTES
                    else:
                        seg = -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES
                    b = len(address)
                    address.append(take_address(seg))
                    size_of.append(seg)
                    prev.append(-1)
                    nxt.append(-1)
                    used.append(True)
                    reserved += seg
                    segments += 1
                    if reserved > peak_reserved:
                        peak_reserved, at_peak_allocated = reserved, allocated
                        at_peak = (allocated, reserved - allocated, max(
                            small_keys[-1] >> shift if small_keys else 0, large_keys[-1] >> shift if large_keys else 0
                        ))  # fmt: skip
                remaining = size_of[b] - size
                if remaining > small_max:  # should_split: more than kSmallSize left
                    rest, after, at = len(address), nxt[b], address[b] + size
                    address.append(at)
                    size_of.append(remaining)
                    prev.append(b)
                    nxt.append(after)
                    used.append(False)
                    if after >= 0:
                        prev[after] = rest
                    nxt[b] = rest
                    size_of[b] = size
                    k = remaining << shift | at
                    insort(large_keys, k)
                    large_blocks[k] = rest
                    allocated += size
                else:  # the whole block
                    allocated += size_of[b]
                used[b] = True
            if allocated > peak_allocated:  # noqa: PLR1730 (a branch is faster than max() in this loop)
                peak_allocated = allocated
            if allocated > at_peak_allocated and reserved == peak_reserved:
                at_peak_allocated = allocated
                largest_small = small_keys[-1] >> shift if small_keys else 0  # cacheInfo's largest free block:
                largest_large = large_keys[-1] >> shift if large_keys else 0
                largest = largest_small if largest_small > largest_large else largest_large  # noqa: FURB136 (faster)
                at_peak = (allocated, reserved - allocated, largest)
            blocks[op] = b
        elif op == empty_cache_op:  # release_cached_blocks: cudaFree every unsplit cached block
            for keys, pool in ((large_keys, large_blocks), (small_keys, small_blocks)):
                kept = []
                for k in keys:
                    b = pool[k]
                    if prev[b] < 0 and nxt[b] < 0:
                        del pool[k]
                        reserved -= size_of[b]
                        segments -= 1
                        addresses.give_back(address[b])
                    else:
                        kept.append(k)
                keys[:] = kept
        else:  # free_block: merge with free neighbours (try_merge_blocks), back to the pool
            b = blocks[~op]
            used[b] = False
            size = size_of[b]
            allocated -= size
            if size <= small_max:
                keys, pool = small_keys, small_blocks
            else:
                keys, pool = large_keys, large_blocks
            p = prev[b]
            if p >= 0 and not used[p]:
                k = size_of[p] << shift | address[p]
                del keys[bisect_left(keys, k)]
                del pool[k]
                address[b] = address[p]
                before = prev[b] = prev[p]
                if before >= 0:
                    nxt[before] = b
                size += size_of[p]
            n = nxt[b]
            if n >= 0 and not used[n]:
                k = size_of[n] << shift | address[n]
                del keys[bisect_left(keys, k)]
                del pool[k]
                after = nxt[b] = nxt[n]
                if after >= 0:
                    prev[after] = b
                size += size_of[n]
            size_of[b] = size
            k = size << shift | address[b]
            insort(keys, k)
            pool[k] = b
    return peak_reserved, at_peak, peak_allocated, segments
