"""CachingAllocator's replay in one loop, for the default allocator settings (the estimate's hot path).

The same rules as caching.py (``c10/cuda/CUDACachingAllocator.cpp``: round_size, get_pool, get_free_block,
should_split, alloc_found_block, free_block / try_merge_blocks, release_cached_blocks, get_allocation_size),
restricted to what an estimate replays: no expandable segments, no memory cap, ``max_split_size_mb`` unset.
replay_default is one stream; replay_streams the same loop for a sequence with side streams (DeepSpeed's reduction
stream, Sequence.streams), with a pool of each stream's own, kept apart so that the one-stream loop does no per-tensor
look-up. Inlined into one function over integers (no object per block, so nothing for the cyclic garbage collector,
which otherwise ran a few ms per 8B replay), it takes about 0.5 µs per event on a 7-8B sequence, 2.3 times as fast as
the class (2.1-2.4 times on the ZeRO sequences); the result is the same to the byte (tests/test_allocator_fast_replay.py
replays every shipped run's sequence, every ZeRO-2 / ZeRO-3 one and a grid of synthetic ZeRO setups, hand-built and
random traces, on one stream and on several, through both).

How the loop holds the allocator (sizes and addresses in 512-byte units, kMinBlockSize: every block is a multiple):

* A free block is its key, ``size << SH | address << IB | block``: sorted keys are BlockComparatorSize's order for
  one stream (size, then address; two free blocks never share an address), so best fit is one bisect, and the block
  comes out of the key's low bits. Each pool (each stream's, in replay_streams) keeps its keys in a list between two
  sentinels, 0 (below any request, so ``keys[i - 1]`` always exists and ``keys[-2]`` is the largest free block, 0 if
  none) and INF (above every key: a bisect that lands on it found no block).
* ``key[b]`` is block b's key while it is free and 0 while it is allocated (``taken[i]`` is then the key of
  tensor i's block);
  ``prev[b]`` / ``nxt[b]`` its neighbours in its segment (the sentinel block, key 0, where there is none). A freed
  block merges with a neighbour whose key is not 0.
* A block split for tensor i is block i (the found block keeps its id for the remainder); a block used whole keeps
  its id (no neighbour links to rewrite); segments made by cudaMalloc take ids after the tensors'.
* A split whose remainder still sorts where the found block sat, and a merge whose block still sorts where its
  neighbour sat, overwrite that key in place instead of deleting and inserting one (the same sorted list).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from operator import itemgetter

from .addresses import TOP_ADDRESS, DeviceAddresses
from .blocks import (
    LARGE_BUFFER_BYTES,
    MIN_BLOCK_BYTES,
    MIN_LARGE_ALLOC_BYTES,
    ROUND_LARGE_BYTES,
    SMALL_BUFFER_BYTES,
    SMALL_SIZE_BYTES,
)

#: sizes and addresses in units of kMinBlockSize (512 bytes, a power of two): round_size is a ceiling division
_UNIT_BITS = MIN_BLOCK_BYTES.bit_length() - 1
#: bits of a unit address (addresses.py keeps every address below TOP_ADDRESS)
_ADDRESS_BITS = (TOP_ADDRESS >> _UNIT_BITS).bit_length()


def replay_default(sizes: list[int], ops: list[int], empty_cache_op: int):
    """(peak reserved, (allocated, free in segments, largest free block) when reserved last peaked, peak allocated,
    segments) of replaying `ops` (i >= 0 allocates tensor i of sizes[i] > 0 bytes, ~i frees it, empty_cache_op empties
    the cache; each tensor allocated at most once, freed only while allocated, as ops.Sequence makes them) through
    DeviceCachingAllocator with the default settings. The frees after the last allocation or empty_cache change none
    of the results and are left out.

    The small pool (requests of at most kSmallSize) splits off every remainder, the large pool only one of more than
    kSmallSize (should_split), so an allocated block of at most kSmallSize is a small-pool one."""
    unit = _UNIT_BITS
    round_up = (1 << unit) - 1
    small_max = SMALL_SIZE_BYTES >> unit
    min_large = MIN_LARGE_ALLOC_BYTES >> unit
    round_large = ROUND_LARGE_BYTES >> unit
    n = len(sizes)
    cap = 2 * n + 2  # tensors, at most one segment per allocation, the sentinel
    if ~empty_cache_op < cap:
        raise ValueError(f"empty_cache_op {empty_cache_op}: ~it must be past every block id (ops.EMPTY_CACHE is)")
    sentinel = cap - 1
    ib = cap.bit_length()
    sh = ib + _ADDRESS_BITS
    id_mask = (1 << ib) - 1
    low_mask = (1 << sh) - 1  # a key's address and block
    one = 1 << sh  # a key of one unit
    large_split = small_max << sh | low_mask  # a large-pool remainder above it is split off
    addr_mask = low_mask ^ id_mask  # a key's address bits
    small_top = (small_max + 1) << sh  # a key below it is a small-pool block's
    ab = _ADDRESS_BITS
    inf = 1 << (sh + 64)
    key = [0] * cap  # a free block's key; 0 for an allocated one (and the sentinel)
    taken = [0] * n  # an allocated block's key (allocated blocks are tensors')
    prev = [sentinel] * cap
    nxt = [sentinel] * cap
    small_keys, large_keys = [0, inf], [0, inf]
    allocated = reserved = peak_allocated = peak_reserved = 0
    # allocated and the two pools' largest free keys when reserved last peaked (or allocated last rose while it was)
    at_alloc = at_small = at_large = 0
    at_top = True  # reserved == peak_reserved
    watch = 0  # an allocation above it updates the peaks: at_alloc at the top, else peak_allocated
    new_block, segments = n, 0
    addresses = DeviceAddresses()
    take_address = addresses.take

    end = len(ops)
    while end and ops[end - 1] < 0 and ops[end - 1] != empty_cache_op:
        end -= 1
    for op in ops if end == len(ops) else ops[:end]:
        if op >= 0:
            size = (sizes[op] + round_up) >> unit  # round_size
            sk = size << sh
            if size <= small_max:  # get_pool: the small pool
                i = bisect_left(small_keys, sk)  # get_free_block: best fit on (size, address)
                k = small_keys[i]
                if k is inf:  # alloc_block: a new kSmallBuffer segment where cudaMalloc puts it (addresses.py)
                    b, new_block = new_block, new_block + 1
                    address = take_address(SMALL_BUFFER_BYTES) >> unit
                    k = (SMALL_BUFFER_BYTES >> unit) << sh | address << ib | b
                    small_keys.insert(i, k)
                    reserved += SMALL_BUFFER_BYTES
                    segments += 1
                    peak_allocated = max(peak_allocated, watch)
                    if reserved > peak_reserved:
                        peak_reserved, at_top, watch = reserved, True, allocated
                    else:
                        at_top = reserved == peak_reserved
                        watch = at_alloc if at_top else peak_allocated
                b = k & id_mask
                rest = k - sk
                if rest >= one:  # should_split: >= kMinBlockSize left; the rest starts size units higher
                    rest += sk >> ab
                    if rest > small_keys[i - 1]:
                        small_keys[i] = rest
                    else:
                        del small_keys[i]
                        insort(small_keys, rest, 1, i)
                    key[b] = rest
                    taken[op] = sk + (k & addr_mask) + op
                    p = prev[op] = prev[b]
                    nxt[p] = op
                    nxt[op] = b
                    prev[b] = op
                else:  # the whole block, which keeps its id
                    del small_keys[i]
                    taken[op] = k
                    key[b] = 0
                allocated += size
            else:  # the large pool
                i = bisect_left(large_keys, sk)
                k = large_keys[i]
                if k is inf:  # get_allocation_size: kLargeBuffer below kMinLargeAlloc, else in kRoundLarge steps
                    seg = LARGE_BUFFER_BYTES >> unit if size < min_large else -(-size // round_large) * round_large
                    b, new_block = new_block, new_block + 1
                    address = take_address(seg << unit) >> unit
                    k = seg << sh | address << ib | b
                    large_keys.insert(i, k)
                    reserved += seg << unit
                    segments += 1
                    peak_allocated = max(peak_allocated, watch)
                    if reserved > peak_reserved:
                        peak_reserved, at_top, watch = reserved, True, allocated
                    else:
                        at_top = reserved == peak_reserved
                        watch = at_alloc if at_top else peak_allocated
                b = k & id_mask
                rest = k - sk
                if rest > large_split:  # should_split: more than kSmallSize left
                    rest += sk >> ab
                    if rest > large_keys[i - 1]:
                        large_keys[i] = rest
                    else:
                        del large_keys[i]
                        insort(large_keys, rest, 1, i)
                    key[b] = rest
                    taken[op] = sk + (k & addr_mask) + op
                    p = prev[op] = prev[b]
                    nxt[p] = op
                    nxt[op] = b
                    prev[b] = op
                    allocated += size
                else:  # the whole block, which keeps its id
                    del large_keys[i]
                    taken[op] = k
                    key[b] = 0
                    allocated += k >> sh
            if allocated > watch:
                watch = allocated
                if at_top:
                    at_alloc, at_small, at_large = allocated, small_keys[-2], large_keys[-2]
        else:  # free_block: merge with free neighbours (try_merge_blocks), back to the pool
            try:
                k = taken[~op]
            except IndexError:  # ~empty_cache_op is past every block: release_cached_blocks, cudaFree every
                if op != empty_cache_op:  # unsplit cached block, the large pool's first
                    raise
                for keys in (large_keys, small_keys):
                    kept = [0]
                    for k in keys[1:-1]:
                        b = k & id_mask
                        if prev[b] == sentinel and nxt[b] == sentinel:
                            reserved -= (k >> sh) << unit
                            segments -= 1
                            addresses.give_back(((k & low_mask) >> ib) << unit)
                        else:
                            kept.append(k)
                    kept.append(inf)
                    keys[:] = kept
                peak_allocated = max(peak_allocated, watch)
                at_top = reserved == peak_reserved
                watch = at_alloc if at_top else peak_allocated
                continue
            b = k & id_mask
            allocated -= k >> sh
            keys = small_keys if k < small_top else large_keys
            after = nxt[b]
            k_after = key[after]
            p = prev[b]
            k_prev = key[p]
            if k_after:  # b takes in the free block after it
                k += k_after - (k_after & low_mask)
                after = nxt[b] = nxt[after]
                prev[after] = b
                j = bisect_left(keys, k_after)
                if not k_prev:
                    if keys[j + 1] > k:
                        keys[j] = k
                    else:
                        del keys[j]
                        insort(keys, k, j)
                    key[b] = k
                    continue
                del keys[j]
            if k_prev:  # the free block before b takes b in
                k = k_prev + k - (k & low_mask)
                nxt[p] = after
                prev[after] = p
                j = bisect_left(keys, k_prev)
                if keys[j + 1] > k:
                    keys[j] = k
                else:
                    del keys[j]
                    insort(keys, k, j)
                key[p] = k
            else:
                key[b] = k
                insort(keys, k)
    peak_allocated = max(peak_allocated, watch)
    alloc_bytes = at_alloc << unit
    largest = (max(at_small, at_large) >> sh) << unit  # cacheInfo's largest free block
    return peak_reserved, (alloc_bytes, peak_reserved - alloc_bytes, largest), peak_allocated << unit, segments



def replay_streams(sizes: list[int], ops: list[int], streams: dict[int, int], empty_cache_op: int):
    """replay_default's result for `ops` with tensor i allocated on stream streams.get(i, 0) (ops.Sequence.streams),
    by CachingAllocator's rules for streams: get_free_block looks only among the cached blocks of the request's stream
    (BlockComparatorSize's lower bound on (stream, size, address)); a new segment, and every block split from it,
    belongs to the request's stream; a freed block goes back to its own stream's blocks (it merges only within its
    segment, so with blocks of that stream); release_cached_blocks goes through the large pool, then the small one,
    each in (stream, size, address) order; the largest free block at the peak is the largest of any stream.

    The same loop as replay_default with one sorted key list per (stream, pool) instead of two; replay_default stays
    the one-stream path, with none of the per-tensor list look-ups this one makes."""
    unit = _UNIT_BITS
    round_up = (1 << unit) - 1
    small_max = SMALL_SIZE_BYTES >> unit
    min_large = MIN_LARGE_ALLOC_BYTES >> unit
    round_large = ROUND_LARGE_BYTES >> unit
    n = len(sizes)
    cap = 2 * n + 2  # tensors, at most one segment per allocation, the sentinel
    if ~empty_cache_op < cap:
        raise ValueError(f"empty_cache_op {empty_cache_op}: ~it must be past every block id (ops.EMPTY_CACHE is)")
    sentinel = cap - 1
    ib = cap.bit_length()
    sh = ib + _ADDRESS_BITS
    id_mask = (1 << ib) - 1
    low_mask = (1 << sh) - 1  # a key's address and block
    one = 1 << sh  # a key of one unit
    large_split = small_max << sh | low_mask  # a large-pool remainder above it is split off
    addr_mask = low_mask ^ id_mask  # a key's address bits
    small_top = (small_max + 1) << sh  # a key below it is a small-pool block's
    ab = _ADDRESS_BITS
    inf = 1 << (sh + 64)
    key = [0] * cap  # a free block's key; 0 for an allocated one (and the sentinel)
    taken = [0] * n  # an allocated block's key (allocated blocks are tensors')
    prev = [sentinel] * cap
    nxt = [sentinel] * cap
    # each stream's two key lists, the streams in ascending order (release_cached_blocks' order); small_of[i] and
    # large_of[i] are tensor i's stream's (a list is only ever changed in place, so these stay its stream's)
    order = sorted({0, *streams.values()})
    smalls = [[0, inf] for _ in order]
    larges = [[0, inf] for _ in order]
    released = larges + smalls
    ranks = {s: r for r, s in enumerate(order)}
    small_of = [smalls[ranks[0]]] * n
    large_of = [larges[ranks[0]]] * n
    for i, s in streams.items():
        small_of[i], large_of[i] = smalls[ranks[s]], larges[ranks[s]]
    second_last = itemgetter(-2)  # a key list's largest free block (0 if none)
    allocated = reserved = peak_allocated = peak_reserved = 0
    # allocated and the largest free key of any list when reserved last peaked (or allocated last rose while it was)
    at_alloc = at_largest = 0
    at_top = True  # reserved == peak_reserved
    watch = 0  # an allocation above it updates the peaks: at_alloc at the top, else peak_allocated
    new_block, segments = n, 0
    addresses = DeviceAddresses()
    take_address = addresses.take

    end = len(ops)
    while end and ops[end - 1] < 0 and ops[end - 1] != empty_cache_op:
        end -= 1
    for op in ops if end == len(ops) else ops[:end]:
        if op >= 0:
            size = (sizes[op] + round_up) >> unit  # round_size
            sk = size << sh
            if size <= small_max:  # get_pool: the small pool, of the request's stream
                keys = small_of[op]
                i = bisect_left(keys, sk)  # get_free_block: best fit on (size, address)
                k = keys[i]
                if k is inf:  # alloc_block: a new kSmallBuffer segment where cudaMalloc puts it (addresses.py)
                    b, new_block = new_block, new_block + 1
                    address = take_address(SMALL_BUFFER_BYTES) >> unit
                    k = (SMALL_BUFFER_BYTES >> unit) << sh | address << ib | b
                    keys.insert(i, k)
                    reserved += SMALL_BUFFER_BYTES
                    segments += 1
                    peak_allocated = max(peak_allocated, watch)
                    if reserved > peak_reserved:
                        peak_reserved, at_top, watch = reserved, True, allocated
                    else:
                        at_top = reserved == peak_reserved
                        watch = at_alloc if at_top else peak_allocated
                b = k & id_mask
                rest = k - sk
                if rest >= one:  # should_split: >= kMinBlockSize left; the rest starts size units higher
                    rest += sk >> ab
                    if rest > keys[i - 1]:
                        keys[i] = rest
                    else:
                        del keys[i]
                        insort(keys, rest, 1, i)
                    key[b] = rest
                    taken[op] = sk + (k & addr_mask) + op
                    p = prev[op] = prev[b]
                    nxt[p] = op
                    nxt[op] = b
                    prev[b] = op
                else:  # the whole block, which keeps its id
                    del keys[i]
                    taken[op] = k
                    key[b] = 0
                allocated += size
            else:  # the large pool, of the request's stream
                keys = large_of[op]
                i = bisect_left(keys, sk)
                k = keys[i]
                if k is inf:  # get_allocation_size: kLargeBuffer below kMinLargeAlloc, else in kRoundLarge steps
                    seg = LARGE_BUFFER_BYTES >> unit if size < min_large else -(-size // round_large) * round_large
                    b, new_block = new_block, new_block + 1
                    address = take_address(seg << unit) >> unit
                    k = seg << sh | address << ib | b
                    keys.insert(i, k)
                    reserved += seg << unit
                    segments += 1
                    peak_allocated = max(peak_allocated, watch)
                    if reserved > peak_reserved:
                        peak_reserved, at_top, watch = reserved, True, allocated
                    else:
                        at_top = reserved == peak_reserved
                        watch = at_alloc if at_top else peak_allocated
                b = k & id_mask
                rest = k - sk
                if rest > large_split:  # should_split: more than kSmallSize left
                    rest += sk >> ab
                    if rest > keys[i - 1]:
                        keys[i] = rest
                    else:
                        del keys[i]
                        insort(keys, rest, 1, i)
                    key[b] = rest
                    taken[op] = sk + (k & addr_mask) + op
                    p = prev[op] = prev[b]
                    nxt[p] = op
                    nxt[op] = b
                    prev[b] = op
                    allocated += size
                else:  # the whole block, which keeps its id
                    del keys[i]
                    taken[op] = k
                    key[b] = 0
                    allocated += k >> sh
            if allocated > watch:
                watch = allocated
                if at_top:
                    at_alloc, at_largest = allocated, max(map(second_last, released))
        else:  # free_block: merge with free neighbours (try_merge_blocks), back to its stream's pool
            t = ~op
            try:
                k = taken[t]
            except IndexError:  # ~empty_cache_op is past every block: release_cached_blocks, cudaFree every
                if op != empty_cache_op:  # unsplit cached block, the large pool's first, stream by stream
                    raise
                for keys in released:
                    kept = [0]
                    for k in keys[1:-1]:
                        b = k & id_mask
                        if prev[b] == sentinel and nxt[b] == sentinel:
                            reserved -= (k >> sh) << unit
                            segments -= 1
                            addresses.give_back(((k & low_mask) >> ib) << unit)
                        else:
                            kept.append(k)
                    kept.append(inf)
                    keys[:] = kept
                peak_allocated = max(peak_allocated, watch)
                at_top = reserved == peak_reserved
                watch = at_alloc if at_top else peak_allocated
                continue
            b = k & id_mask
            allocated -= k >> sh
            keys = small_of[t] if k < small_top else large_of[t]
            after = nxt[b]
            k_after = key[after]
            p = prev[b]
            k_prev = key[p]
            if k_after:  # b takes in the free block after it
                k += k_after - (k_after & low_mask)
                after = nxt[b] = nxt[after]
                prev[after] = b
                j = bisect_left(keys, k_after)
                if not k_prev:
                    if keys[j + 1] > k:
                        keys[j] = k
                    else:
                        del keys[j]
                        insort(keys, k, j)
                    key[b] = k
                    continue
                del keys[j]
            if k_prev:  # the free block before b takes b in
                k = k_prev + k - (k & low_mask)
                nxt[p] = after
                prev[after] = p
                j = bisect_left(keys, k_prev)
                if keys[j + 1] > k:
                    keys[j] = k
                else:
                    del keys[j]
                    insort(keys, k, j)
                key[p] = k
            else:
                key[b] = k
                insort(keys, k)
    peak_allocated = max(peak_allocated, watch)
    alloc_bytes = at_alloc << unit
    largest = (at_largest >> sh) << unit  # cacheInfo's largest free block
    return peak_reserved, (alloc_bytes, peak_reserved - alloc_bytes, largest), peak_allocated << unit, segments
