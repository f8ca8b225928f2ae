"""Where cudaMalloc puts segments (addresses.py), hand-worked, and the best-fit ties those addresses decide."""

import random

import pytest

from vramplan.memory.allocator import CachingAllocator
from vramplan.memory.allocator.addresses import CHUNK_BYTES, FIRST_RUN_BYTES, PAGE_BYTES, DeviceAddresses

MIB = 2**20


def _after_first(first_bytes: int = 2 * MIB) -> tuple[DeviceAddresses, int]:
    """An address space whose first segment (start_cuda's, say) is taken, with its run's room filled."""
    va = DeviceAddresses()
    top = va.take(first_bytes)
    va.take(FIRST_RUN_BYTES - first_bytes)  # the whole room below it
    return va, top


def test_segments_take_32mib_chunks_top_down():
    va, _ = _after_first()
    a, b, c = va.take(20 * MIB), va.take(20 * MIB), va.take(112 * MIB)
    assert a - b == CHUNK_BYTES  # a 20 MiB segment keeps its whole chunk
    assert b - c == 4 * CHUNK_BYTES  # 112 MiB: four chunks, below the last


def test_a_segment_takes_the_room_left_in_earlier_chunks_before_new_ones():
    va, _ = _after_first()
    big = va.take(112 * MIB)  # 128 MiB of chunks: 16 MiB room above it
    twenty = va.take(20 * MIB)  # 12 MiB room above it, lower than the 112's
    assert va.take(16 * MIB) == big + 112 * MIB  # only the 112's room holds 16 MiB
    assert va.take(2 * MIB) == twenty + 20 * MIB  # the lowest room that holds 2 MiB, from its bottom
    assert va.take(2 * MIB) == twenty + 22 * MIB


def test_the_first_segment_sits_on_top_of_448mib_whose_room_fills_from_the_bottom():
    va = DeviceAddresses()
    first = va.take(2 * MIB)
    load = va.take(752 * MIB)  # too big for the room: its own chunks below the first run
    assert first + 2 * MIB - (load + 752 * MIB) == FIRST_RUN_BYTES + 16 * MIB  # run + the 752's 16 MiB tail
    small = va.take(18 * MIB)
    assert small == first + 2 * MIB - FIRST_RUN_BYTES  # the room's bottom
    assert va.take(20 * MIB) == small + 18 * MIB  # stacked on it, not chunk-aligned


def test_freed_chunks_are_reused_from_the_top_of_the_highest_free_range():
    va, _ = _after_first()
    big = va.take(576 * MIB)
    below = va.take(600 * MIB)
    va.give_back(big)
    assert va.take(64 * MIB) == big + 512 * MIB  # the top of the freed range
    assert va.take(1000 * MIB) < below  # does not fit what is left of it: new chunks below


def test_a_freed_segment_sharing_chunks_becomes_room():
    va, _ = _after_first()
    big = va.take(112 * MIB)
    small = va.take(16 * MIB)  # the 112's room
    va.give_back(big)  # the chunks still hold the 16 MiB segment: the 112's place is room now
    assert va.take(100 * MIB) == big
    assert small == big + 112 * MIB


def test_best_fit_breaks_a_size_tie_by_address_so_the_later_segment_is_split():
    # BlockComparatorSize orders free blocks by (stream, size, ptr): of two free 40 MiB blocks a 24 MiB request
    # takes the one at the lower address, here the later segment's (it was placed in the room below the first)
    a = CachingAllocator()
    first = a.malloc(60 * MIB)
    second = a.malloc(40 * MIB)
    assert second.addr < first.addr
    a.free(first)
    a.malloc(20 * MIB)  # splits the first segment: 20 live, 40 free
    a.free(second)  # a whole free 40 MiB segment
    c = a.malloc(24 * MIB)
    assert c.addr == second.addr
    a.empty_cache()  # both segments are split now: nothing to release (with the first's free 40 taken, 40 would go)
    assert a.reserved == 100 * MIB


def test_a_room_is_used_from_its_bottom_up_and_room_freed_next_to_it_joins_it():
    va, _ = _after_first()
    twenty = va.take(20 * MIB)  # 12 MiB room above it
    smalls = [va.take(2 * MIB) for _ in range(3)]
    assert smalls == [twenty + 20 * MIB, twenty + 22 * MIB, twenty + 24 * MIB]  # the room shrinks from below
    va.give_back(smalls[1])  # 2 MiB of room below the 6 MiB left: two rooms of one run, apart
    assert va.take(4 * MIB) == twenty + 26 * MIB  # the 2 MiB hole does not hold it
    va.give_back(smalls[2])  # joins the hole below it: 4 MiB of room, below the 2 MiB left at the chunk's top
    assert va.take(4 * MIB) == twenty + 22 * MIB


class _ByThePieces(DeviceAddresses):
    """take() through _take_chunks and _new_room for every new run (the steps that take() inlines for a run cut from
    the top of the highest free range), as the reference for the inlined path."""

    def take(self, nbytes: int) -> int:
        size = -(-nbytes // PAGE_BYTES) * PAGE_BYTES
        if (self._room_sizes and self._room_sizes[-1] >= size) or self._first:
            return super().take(nbytes)
        chunks = -(-size // CHUNK_BYTES) * CHUNK_BYTES
        base = self._take_chunks(chunks)
        if chunks > size:
            self._new_room(base + size, chunks - size, base)
        self._runs[base] = [base + chunks, 1]
        self._segments[base] = (base, size)
        return base


@pytest.mark.parametrize("seed", range(40))
def test_take_gives_the_addresses_of_taking_chunks_and_room_step_by_step(seed):
    rng = random.Random(seed)
    fast, plain, live = DeviceAddresses(), _ByThePieces(), []
    for _ in range(300):
        if live and rng.random() < 0.35:
            addr = live.pop(rng.randrange(len(live)))
            fast.give_back(addr)
            plain.give_back(addr)
        else:  # pages, a room's worth, whole chunks, several (a freed range of exactly the run's size included)
            nbytes = rng.choice([2 * MIB, 20 * MIB, 32 * MIB, 64 * MIB, rng.randrange(1, 300) * MIB])
            addr = fast.take(nbytes)
            assert plain.take(nbytes) == addr
            live.append(addr)
        assert fast._free == plain._free and fast._rooms == plain._rooms and fast._room_sizes == plain._room_sizes
