"""CachingAllocator's replay with ``expandable_segments:True`` in one loop over integers (the planner's near-miss tries).

The same rules as caching.py and expandable.py (``c10/cuda/CUDACachingAllocator.cpp``: get_free_block with its
expandable_size, should_split, alloc_found_block, try_allocate_expandable_block / find_expandable_block /
map_block, free_block / try_merge_blocks, release_cached_blocks / unmap_block), restricted to what an estimate
replays: no memory cap, no device limit, ``max_split_size_mb`` unset, any number of streams. The class builds a
Block object per block and looks pools up by tuples; this loop keeps parallel lists per block id and one sorted
list of integer keys per (pool, stream), so a replay takes about 60 % of the class's time (a 70B ZeRO-3 LoRA
rank: 110 -> 67 ms; the default settings' loop takes 43 ms, as expandable segments split every block). The result
is the class's to the byte (tests/test_allocator_fast_expandable.py replays the shipped runs' sequences, ZeRO and
FSDP ranks, hand-built and random traces with empty_cache through both).

How the loop holds the allocator (sizes and addresses in 512-byte units, kMinBlockSize):

* Block b: ``addr[b]``, ``size_of[b]``, ``state[b]`` (ALLOCATED, FREE: mapped and cached, UNMAPPED: address space
  with no pages), ``prev[b]`` / ``nxt[b]`` its neighbours in its segment (block 0, a sentinel that is ALLOCATED,
  where there is none). An allocated block is exactly its rounded request (every remainder is split off), so its
  size says its pool; the rare paths (mapping, unmapping) are told theirs.
* A FREE block is in its pool's keys as ``size << SH | addr << IB | b`` (BlockComparatorSize: size, then
  address), between the sentinels 0 and INF; an UNMAPPED one in its pool's unmapped ranges as ``addr << IB | b``
  (BlockComparatorAddress, find_expandable_block's order). A pool is one (small or large, stream).
* A split's remainder and a merged block overwrite the key they replace where they still sort there (as in
  fast_replay.py).
"""

from __future__ import annotations

from bisect import bisect_left, insort

from .addresses import DeviceAddresses
from .blocks import LARGE_BUFFER_BYTES, MIN_BLOCK_BYTES, SMALL_BUFFER_BYTES, SMALL_SIZE_BYTES

_UNIT_BITS = MIN_BLOCK_BYTES.bit_length() - 1
ALLOCATED, FREE, UNMAPPED = 0, 1, 2
#: bits of a block id in a key (more blocks than 2**IB raise ValueError: replay then takes the class)
_IB = 40
_ID_MASK = (1 << _IB) - 1
_SH = _IB + 48  # addresses in units stay below 2**(46 - 9)
_INF = 1 << (_SH + 64)


def replay_expandable(sizes: list[int], ops: list[int], streams: dict[int, int], empty_cache_op: int,
                      total_memory_bytes: int):  # fmt: skip
    """(peak reserved, (allocated, free in segments, largest free block) when reserved last peaked, peak allocated)
    of replaying `ops` (as replay_default takes them; tensor i on stream streams.get(i, 0)) through
    DeviceCachingAllocator with expandable segments, each segment's address space 1 1/8 of `total_memory_bytes`
    (ExpandableSegment's constructor). Raises ValueError where the loop does not apply (an address space or a segment
    address off the 512-byte grid)."""
    unit = _UNIT_BITS
    round_up = (1 << unit) - 1
    small_max = SMALL_SIZE_BYTES >> unit
    space_bytes = total_memory_bytes + total_memory_bytes // 8
    if space_bytes & round_up:
        raise ValueError(f"an expandable segment of {space_bytes} bytes is off the {MIN_BLOCK_BYTES}-byte grid")
    space = space_bytes >> unit
    sh, ib, id_mask, inf = _SH, _IB, _ID_MASK, _INF
    # blocks: the sentinel 0 (ALLOCATED, so nothing merges with it or walks past it), then ids from 1 (`top` the next)
    room = 2 * len(sizes) + 64  # a split per allocation, a few ranges: grown when not enough
    arrays = addr, size_of, state, prev, nxt = tuple([0] * room for _ in range(5))
    top = 1
    # pools by index: (small, stream) -> index; each with its free keys, unmapped ranges and page size
    pool_index: dict[tuple[bool, int], int] = {}
    pool_keys: list[list[int]] = []
    pool_unmapped: list[list[int]] = []
    pool_page: list[int] = []
    pool_order: list[tuple[bool, int]] = []
    block_of = [0] * len(sizes)
    addresses = DeviceAddresses()
    allocated = reserved = peak_allocated = peak_reserved = 0
    at_alloc = at_largest = 0  # allocated and the largest free key when reserved last peaked (or allocated rose at it)

    def pool_for(small: bool, stream: int) -> int:
        p = pool_index.get((small, stream))
        if p is None:
            p = pool_index[(small, stream)] = len(pool_keys)
            pool_keys.append([0, inf])
            pool_unmapped.append([0, inf])
            pool_page.append((SMALL_BUFFER_BYTES if small else LARGE_BUFFER_BYTES) >> unit)
            pool_order.append((small, stream))
        return p

    def new_block(a: int, n: int, st: int) -> int:
        nonlocal top
        b, top = top, top + 1
        if b == len(addr):
            grow_arrays()
        addr[b], size_of[b], state[b], prev[b], nxt[b] = a, n, st, 0, 0
        return b

    def grow_arrays() -> None:  # twice the room
        for a in arrays:
            a.extend([0] * len(a))
        if len(addr) > id_mask:
            raise ValueError("more blocks than the loop's keys hold")

    def free_key(b: int) -> int:
        return size_of[b] << sh | addr[b] << ib | b

    def erase(b: int, p: int) -> None:
        keys = pool_keys[p]
        del keys[bisect_left(keys, free_key(b))]

    def absorb(b: int, other: int, kind: int, p: int) -> None:
        """try_merge_blocks: b takes in its neighbour `other` (of pool p) when it is `kind` (FREE: out of the keys;
        UNMAPPED: out of the unmapped ranges)."""
        if state[other] != kind:
            return
        if kind == FREE:
            erase(other, p)
        else:
            ranges = pool_unmapped[p]
            del ranges[bisect_left(ranges, addr[other] << ib | other)]
        if prev[b] == other:
            addr[b] = addr[other]
            p = prev[b] = prev[other]
            if p:
                nxt[p] = b
        else:
            q = nxt[b] = nxt[other]
            if q:
                prev[q] = b
        size_of[b] += size_of[other]

    def insert_after(b: int, r: int) -> None:
        prev[r], nxt[r] = b, nxt[b]
        if nxt[b]:
            prev[nxt[b]] = r
        nxt[b] = r

    def insert_before(b: int, r: int) -> None:
        prev[r], nxt[r] = prev[b], b
        if prev[b]:
            nxt[prev[b]] = r
        prev[b] = r

    def map_block(b: int, need: int, p: int) -> None:
        """map_block: whole pages at the start of pool p's unmapped range b, the rest left unmapped; merge; reserved
        grows."""
        nonlocal reserved, peak_reserved, at_alloc, at_largest
        page = pool_page[p]
        mapped = min(-(-need // page) * page, size_of[b])
        ranges = pool_unmapped[p]
        del ranges[bisect_left(ranges, addr[b] << ib | b)]
        state[b] = FREE
        if mapped < size_of[b]:
            r = new_block(addr[b] + mapped, size_of[b] - mapped, UNMAPPED)
            insert_after(b, r)
            size_of[b] = mapped
            insort(ranges, addr[r] << ib | r)
        absorb(b, prev[b], FREE, p)
        absorb(b, nxt[b], FREE, p)
        insort(pool_keys[p], free_key(b))
        reserved += mapped
        if reserved > peak_reserved:
            peak_reserved, at_alloc, at_largest = reserved, allocated, max(k[-2] for k in pool_keys)

    def expandable_block(p: int, size: int) -> int:
        """try_allocate_expandable_block: find_expandable_block (the lowest unmapped range whose run of free and
        unmapped blocks, from the free block before it, holds size; else a new segment), pages mapped until the free
        block at its head holds the request; the block out of the keys."""
        c = 0
        for k in pool_unmapped[p][1:-1]:
            c = k & id_mask
            if state[prev[c]] != ALLOCATED:
                c = prev[c]
            room, x = 0, c
            while room < size and state[x] != ALLOCATED:
                room, x = room + size_of[x], nxt[x]
            if room >= size:
                break
        else:
            a_bytes = addresses.take(space << unit)
            if a_bytes & round_up:
                raise ValueError(f"a segment at {a_bytes} is off the {MIN_BLOCK_BYTES}-byte grid")
            c = new_block(a_bytes >> unit, space, UNMAPPED)
            insort(pool_unmapped[p], addr[c] << ib | c)
        if state[c] == UNMAPPED:
            map_block(c, min(size_of[c], size), p)
        while size_of[c] < size:
            x = nxt[c]
            map_block(x, min(size - size_of[c], size_of[x]), p)
            c = x
        erase(c, p)
        return c

    def unmap_block(b: int, p: int) -> None:
        """unmap_block: the whole pages inside pool p's free block b (counted from its segment's start) unmapped."""
        nonlocal reserved
        first = b
        while prev[first]:
            first = prev[first]
        page, seg = pool_page[p], addr[first]
        start, end = addr[b], addr[b] + size_of[b]
        lo = seg + -(-(start - seg) // page) * page
        hi = seg + (end - seg) // page * page
        if hi <= lo:
            return
        erase(b, p)
        keys = pool_keys[p]
        if lo > start:
            before = new_block(start, lo - start, FREE)
            insert_before(b, before)
            insort(keys, free_key(before))
        if end > hi:
            after = new_block(hi, end - hi, FREE)
            insert_after(b, after)
            insort(keys, free_key(after))
        addr[b], size_of[b], state[b] = lo, hi - lo, UNMAPPED
        absorb(b, prev[b], UNMAPPED, p)
        absorb(b, nxt[b], UNMAPPED, p)
        insort(pool_unmapped[p], addr[b] << ib | b)
        reserved -= hi - lo

    default_small, default_large = pool_for(True, 0), pool_for(False, 0)
    stream_pools = {0: (default_small, default_large)}
    for stream in sorted(set(streams.values())):
        stream_pools[stream] = (pool_for(True, stream), pool_for(False, stream))
    get_stream = streams.get
    small_keys, large_keys = pool_keys[default_small], pool_keys[default_large]
    for op in ops:
        if op >= 0:
            size = (sizes[op] + round_up) >> unit  # round_size
            if streams:
                pools = stream_pools[get_stream(op, 0)]
                p = pools[0] if size <= small_max else pools[1]
            else:
                p = default_small if size <= small_max else default_large
            keys = pool_keys[p]
            i = bisect_left(keys, size << sh)  # get_free_block: best fit on (size, address)
            k = keys[i]
            if k != inf:
                b = k & id_mask
                after = nxt[b]
                if state[after] == UNMAPPED:  # its expandable_size: it can grow into the range after it
                    grow = size_of[b] + size_of[after]
                    while keys[i + 1] != inf:  # a later block that can grow to less is the better fit
                        b2 = keys[i + 1] & id_mask
                        a2 = nxt[b2]
                        grow2 = size_of[b2] + (size_of[a2] if state[a2] == UNMAPPED else 0)
                        if grow2 >= grow:
                            break
                        i, b, grow = i + 1, b2, grow2
            else:
                b = expandable_block(p, size)  # out of the keys already
                i = 0
            rest = size_of[b] - size
            if rest:  # should_split with expandable segments: at least kMinBlockSize left; the rest is block r
                r, top = top, top + 1
                if r == len(addr):
                    grow_arrays()
                a = addr[r] = addr[b] + size
                size_of[r] = rest
                state[r] = FREE
                q = nxt[r] = nxt[b]
                if q:
                    prev[q] = r
                prev[r], nxt[b] = b, r
                size_of[b] = size
                rk = rest << sh | a << ib | r
                if not i:
                    insort(keys, rk)
                elif rk > keys[i - 1]:  # it sorts where the block it was split from sat
                    keys[i] = rk
                else:
                    del keys[i]
                    insort(keys, rk, 1, i)
            elif i:
                del keys[i]
            state[b] = ALLOCATED
            block_of[op] = b
            allocated += size
            if allocated > peak_allocated:
                peak_allocated = allocated
            if allocated > at_alloc and reserved == peak_reserved:
                at_alloc = allocated
                at_largest = max(k[-2] for k in pool_keys) if streams else max(small_keys[-2], large_keys[-2])
        elif op == empty_cache_op:  # release_cached_blocks: the large pools, then the small ones, streams in order
            for small in (False, True):
                for stream in sorted(s for sm, s in pool_order if sm == small):
                    p = pool_index[(small, stream)]
                    for k in pool_keys[p][1:-1]:
                        b = k & id_mask
                        if state[b] == FREE and free_key(b) == k:
                            unmap_block(b, p)
        else:  # free_block: merge with its free neighbours (try_merge_blocks), back to its pool
            b = block_of[~op]
            n = size_of[b]  # the request as rounded (every remainder was split off), so n decides its pool
            allocated -= n
            if streams:
                pools = stream_pools[get_stream(~op, 0)]
                keys = pool_keys[pools[0] if n <= small_max else pools[1]]
            else:
                keys = small_keys if n <= small_max else large_keys
            p, q = prev[b], nxt[b]
            q_free = state[q] == FREE
            if state[p] == FREE:  # b takes in the free block before it
                j = bisect_left(keys, size_of[p] << sh | addr[p] << ib | p)
                addr[b] = addr[p]
                n += size_of[p]
                pp = prev[b] = prev[p]
                if pp:
                    nxt[pp] = b
                if q_free:
                    del keys[j]
                else:  # the merged block sorts at or after the absorbed one's key
                    size_of[b] = n
                    state[b] = FREE
                    k = n << sh | addr[b] << ib | b
                    if keys[j + 1] > k:
                        keys[j] = k
                    else:
                        del keys[j]
                        insort(keys, k, j)
                    continue
            if q_free:  # and the free block after it
                j = bisect_left(keys, size_of[q] << sh | addr[q] << ib | q)
                n += size_of[q]
                qq = nxt[b] = nxt[q]
                if qq:
                    prev[qq] = b
                size_of[b] = n
                state[b] = FREE
                k = n << sh | addr[b] << ib | b
                if keys[j + 1] > k:
                    keys[j] = k
                else:
                    del keys[j]
                    insort(keys, k, j)
            else:
                size_of[b] = n
                state[b] = FREE
                insort(keys, n << sh | addr[b] << ib | b)
    at = (at_alloc << unit, (peak_reserved - at_alloc) << unit, (at_largest >> sh) << unit)
    return peak_reserved << unit, at, peak_allocated << unit
