"""Where cudaMalloc puts a new segment: the device addresses that break best fit's ties.

get_free_block takes the smallest cached block that holds a request, and among equally sized blocks the one at the
lowest address (``BlockComparatorSize``: stream, then size, then ``ptr``), so which segment a request lands in, and
so what is left split and stranded later, depends on the order of the segments' addresses. Those come from the CUDA
driver, not from CUDACachingAllocator.cpp. This is what the driver did in the 15 histories re-recorded with
addresses on the H200 (driver 580.159.04, torch 2.11; docs/allocator_simulation.md, "Device addresses"):

1. Address space is taken in 32 MiB chunks, top-down: a segment that fits nowhere else gets ceil(size / 32 MiB)
   chunks at the top of the highest free range that holds them and sits at their bottom (segments of 20, 48, 112
   MiB were placed 32, 64, 128 MiB apart, each below the last; a same-size run of probes did the same).
2. What its chunks hold beyond the segment (12 MiB after a 20 MiB segment, 16 after a 112) is room, and a later
   segment takes room before new chunks: the lowest room that holds it, from the room's bottom (a 16 MiB segment in
   a 112's tail, 2 MiB small-pool segments in 20 MiB segments' tails).
3. The process's first segment sits at the top of 448 MiB of chunks whose room, below it, is filled from the bottom
   up by later segments: in 14 of the 15 runs the first traced segment ends 414-444 MiB below the segment that
   ``start_cuda``'s 4-byte tensor made (542 in one), with the load's smaller segments stacked between them.
4. A segment freed by cudaFree gives its chunks back once no other segment uses them, and rule 1 reuses them (a
   64 MiB probe placed at the top of a freed 576 MiB range, a 1000 MiB one in a freed 1152 MiB range).

With the recorded addresses the allocator model places every block of those 15 histories where the real one did;
with these rules it gets 95 % of the large-pool segments' order right and every reserved peak of the 47 shipped
histories within 0.03 % (scripts/trace_replay_check.py). Not modelled: the driver's own allocations (kernel code,
the CUDA context) that take address space between segments, and its preference for 64 MiB-aligned places when it
reuses freed ranges (a probe of 32 MiB segments in freed 64 MiB ranges used only the upper halves).
"""

from __future__ import annotations

from bisect import bisect_left, insort

#: rule 1: the driver hands out address space in chunks of this size (recorded H200 histories, see above)
CHUNK_BYTES = 32 * 1024**2
#: rule 2: room is used in pages of this size (segment sizes are multiples of it: kSmallBuffer, kRoundLarge)
PAGE_BYTES = 2 * 1024**2
#: rule 3: the chunks of the process's first segment, itself included (448 MiB: 414-444 MiB of room measured)
FIRST_RUN_BYTES = 448 * 1024**2
#: the top of the modelled address space (addresses stay below 2**46: fast_replay packs them under the size)
TOP_ADDRESS = 1 << 46


class DeviceAddresses:
    """The addresses cudaMalloc gives the segments of one device, by rules 1-4 above.

    ``take(nbytes)`` is a cudaMalloc (returns the segment's address), ``give_back(addr)`` its cudaFree.
    """

    __slots__ = ("_first", "_free", "_room_sizes", "_rooms", "_runs", "_segments")

    def __init__(self) -> None:
        self._free: list[list[int]] = [[0, TOP_ADDRESS]]  # free ranges [start, end), by address
        self._rooms: list[tuple[int, int, int]] = []  # (address, bytes, run start), by address
        self._room_sizes: list[int] = []  # the rooms' bytes, sorted: is there one that holds the request?
        self._runs: dict[int, list[int]] = {}  # run start -> [end, live segments]
        self._segments: dict[int, tuple[int, int]] = {}  # segment address -> (run start, bytes in pages)
        self._first = True

    def take(self, nbytes: int) -> int:
        size = -(-nbytes // PAGE_BYTES) * PAGE_BYTES
        room_sizes = self._room_sizes
        if room_sizes and room_sizes[-1] >= size:  # rule 2: the lowest room that holds it
            rooms = self._rooms
            for i, (addr, room, run) in enumerate(rooms):
                if room >= size:
                    del room_sizes[bisect_left(room_sizes, room)]
                    if room > size:  # the rest stays room, in the same place (no room of its run touches it)
                        rooms[i] = (addr + size, room - size, run)
                        insort(room_sizes, room - size)
                    else:
                        del rooms[i]
                    self._runs[run][1] += 1
                    self._segments[addr] = (run, size)
                    return addr
        if self._first:  # rule 3: at the top of its chunks, room below
            self._first = False
            chunks = -(-max(size, FIRST_RUN_BYTES) // CHUNK_BYTES) * CHUNK_BYTES
            base = self._take_chunks(chunks)
            addr = base + chunks - size
            if addr > base:
                self._new_room(base, addr - base, base)
        else:  # rule 1: new chunks, the segment at their bottom, the rest room
            chunks = -(-size // CHUNK_BYTES) * CHUNK_BYTES
            top = self._free[-1] if self._free else (0, 0)
            if top[1] - top[0] > chunks:  # the highest free range holds them with some left: _take_chunks, inlined
                base = addr = top[1] = top[1] - chunks
            else:
                base = addr = self._take_chunks(chunks)
            if chunks > size:  # _new_room, inlined
                insort(self._rooms, (base + size, chunks - size, base))
                insort(room_sizes, chunks - size)
        self._runs[base] = [base + chunks, 1]
        self._segments[addr] = (base, size)
        return addr

    def give_back(self, addr: int) -> None:
        """cudaFree: the segment's pages become room, or (rule 4) its chunks free address space again."""
        run, size = self._segments.pop(addr)
        end_live = self._runs[run]
        end_live[1] -= 1
        if end_live[1]:
            self._add_room(addr, size, run)
            return
        del self._runs[run]
        kept = [r for r in self._rooms if r[2] != run]
        if len(kept) != len(self._rooms):
            self._rooms = kept
            self._room_sizes = sorted(r[1] for r in kept)
        self._free_range(run, end_live[0])

    # ------------------------------------------------------------------ the pieces
    def _take_chunks(self, nbytes: int) -> int:
        """The top `nbytes` of the highest free range that holds them."""
        for i in range(len(self._free) - 1, -1, -1):
            start, end = self._free[i]
            if end - start >= nbytes:
                if end - start == nbytes:
                    del self._free[i]
                else:
                    self._free[i][1] = end - nbytes
                return end - nbytes
        raise MemoryError("the modelled device address space is exhausted")

    def _free_range(self, start: int, end: int) -> None:
        i = bisect_left(self._free, [start, end])
        if i < len(self._free) and self._free[i][0] == end:  # merge with the range above
            end = self._free.pop(i)[1]
        if i > 0 and self._free[i - 1][1] == start:  # and the one below
            self._free[i - 1][1] = end
        else:
            self._free.insert(i, [start, end])

    def _new_room(self, addr: int, size: int, run: int) -> None:
        """Room in a run just taken (so no other room of it to merge with)."""
        insort(self._rooms, (addr, size, run))
        insort(self._room_sizes, size)

    def _add_room(self, addr: int, size: int, run: int) -> None:
        """Room in `run`, merged with the room of that run right below or above it (rooms of one run never touch)."""
        i = bisect_left(self._rooms, (addr,))
        if i < len(self._rooms) and self._rooms[i][2] == run and self._rooms[i][0] == addr + size:
            size += self._rooms[i][1]
            self._room_sizes.pop(bisect_left(self._room_sizes, self._rooms.pop(i)[1]))
        if i > 0 and self._rooms[i - 1][2] == run and self._rooms[i - 1][0] + self._rooms[i - 1][1] == addr:
            i -= 1
            below = self._rooms.pop(i)
            self._room_sizes.pop(bisect_left(self._room_sizes, below[1]))
            addr, size = below[0], below[1] + size
        self._rooms.insert(i, (addr, size, run))
        insort(self._room_sizes, size)
