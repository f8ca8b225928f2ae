"""expandable_segments:True in the caching-allocator model: one growing mapping per pool and stream.

Note [Expandable Segments] in CUDACachingAllocator.cpp: a segment reserves address space for 1 1/8 of the
GPU's memory and maps physical pages into it as needed (20 MiB pages for the large pool, 2 MiB for the small
one), at the lowest address with room, so a free block at the end of the mapping grows instead of a new
segment being made.
"""

from __future__ import annotations

from .blocks import LARGE_BUFFER_BYTES, SMALL_BUFFER_BYTES, Block, _Pool


class ExpandableSegments:
    """The expandable-segment half of CachingAllocator (which provides the pools and the counters)."""

    address_space: int
    reserved: int
    device_free: int | None

    def _try_allocate_expandable_block(self, pool: _Pool, size: int, stream: int) -> Block | None:
        """try_allocate_expandable_block: the lowest free/unmapped run with room (find_expandable_block),
        pages mapped (map_block) until the free block at its head holds the request."""
        cand = self._find_expandable_block(pool, size, stream)
        if not cand.mapped and not self._map_block(pool, cand, min(cand.size, size)):
            return None
        while cand.size < size:
            nxt = cand.next
            assert nxt is not None and not nxt.mapped
            if not self._map_block(pool, nxt, min(size - cand.size, nxt.size)):
                return None
            cand = nxt
        pool.erase(cand)
        return cand

    def _find_expandable_block(self, pool: _Pool, size: int, stream: int) -> Block:
        """find_expandable_block: by address, the first unmapped range (with the free block before it) whose
        run of free + unmapped blocks holds size; else a new segment of address space, all unmapped."""
        for (s, _), c in sorted(pool.unmapped.items()):
            if s != stream:
                continue
            if c.prev is not None and not c.prev.allocated:
                c = c.prev
            room, b = 0, c
            while room < size and b is not None and not b.allocated:
                room, b = room + b.size, b.next
            if room >= size:
                return c
        cand = Block(self._take_address(self.address_space), self.address_space, stream, pool.small, expandable=True)
        cand.mapped = False
        pool.unmapped[(stream, cand.addr)] = cand
        return cand

    def _map_block(self, pool: _Pool, b: Block, size: int) -> bool:
        """map_block: map whole pages (kSmallBuffer / kLargeBuffer, ExpandableSegment::map) at the start of an
        unmapped range; the rest stays unmapped; merge with free mapped neighbours."""
        page = SMALL_BUFFER_BYTES if pool.small else LARGE_BUFFER_BYTES
        mapped = min(-(-size // page) * page, b.size)
        if self.device_free is not None and self.reserved + mapped > self.device_free:
            return False
        del pool.unmapped[(b.stream, b.addr)]
        b.mapped = True
        if mapped < b.size:
            rest = Block(b.addr + mapped, b.size - mapped, b.stream, b.small, expandable=True)
            rest.mapped = False
            rest.prev, rest.next = b, b.next
            if b.next is not None:
                b.next.prev = rest
            b.next = rest
            b.size = mapped
            pool.unmapped[(rest.stream, rest.addr)] = rest
        self._try_merge(b, b.prev, pool)
        self._try_merge(b, b.next, pool)
        pool.insert(b)
        self._add_reserved(mapped)
        return True

    def _unmap_block(self, pool: _Pool, b: Block) -> None:
        """unmap_block: give back the whole pages inside a free expandable block (ExpandableSegment::unmap)."""
        page = SMALL_BUFFER_BYTES if pool.small else LARGE_BUFFER_BYTES
        base = self._segment_base(b)
        lo = base + -(-(b.addr - base) // page) * page
        hi = base + (b.addr + b.size - base) // page * page
        if hi <= lo:
            return
        pool.erase(b)
        if lo > b.addr:
            before = Block(b.addr, lo - b.addr, b.stream, b.small, expandable=True)
            before.prev, before.next = b.prev, b
            if b.prev is not None:
                b.prev.next = before
            b.prev = before
            pool.insert(before)
        end = b.addr + b.size
        if end > hi:
            after = Block(hi, end - hi, b.stream, b.small, expandable=True)
            after.prev, after.next = b, b.next
            if b.next is not None:
                b.next.prev = after
            b.next = after
            pool.insert(after)
        b.addr, b.size, b.mapped = lo, hi - lo, False
        self._try_merge(b, b.prev, pool)
        self._try_merge(b, b.next, pool)
        pool.unmapped[(b.stream, b.addr)] = b
        self.reserved -= hi - lo

    def _segment_base(self, b: Block) -> int:
        while b.prev is not None:
            b = b.prev
        return b.addr
