"""Blocks, pools and sizes of the caching-allocator model (CUDACachingAllocator.cpp's Block, BlockPool, constants)."""

from __future__ import annotations

from bisect import bisect_left, insort

from .rules import SEGMENT_ROUND_BYTES, SMALL_POOL_MAX_BYTES

#: kMinBlockSize: every request is rounded up to a multiple of 512 bytes (round_size)
MIN_BLOCK_BYTES = 512
#: kSmallSize: requests up to 1 MiB come from the small pool (get_pool)
SMALL_SIZE_BYTES = SMALL_POOL_MAX_BYTES
#: kSmallBuffer: the small pool's segments, and its expandable-segment page (get_allocation_size)
SMALL_BUFFER_BYTES = 2 * 1024**2
#: kLargeBuffer: segment for 1..10 MiB requests, and the large pool's expandable page (get_allocation_size)
LARGE_BUFFER_BYTES = 20 * 1024**2
#: kMinLargeAlloc: from here on a request gets a segment of its own size (get_allocation_size)
MIN_LARGE_ALLOC_BYTES = 10 * 1024**2
#: kRoundLarge: such a segment is rounded up to 2 MiB (get_allocation_size)
ROUND_LARGE_BYTES = SEGMENT_ROUND_BYTES
#: CUDAAllocatorConfig::max_split_size() when max_split_size_mb is not set
UNLIMITED = 2**64 - 1


class AllocatorOOM(Exception):
    """The request could not be served even after freeing every cached block (malloc's OOM path)."""

    def __init__(self, size: int, allocated: int, reserved: int):
        super().__init__(f"out of memory allocating {size} bytes ({allocated} allocated, {reserved} reserved)")
        self.size, self.allocated, self.reserved = size, allocated, reserved


class Block:
    """One block of a segment (struct Block): free or allocated, linked to its neighbours."""

    __slots__ = ("addr", "size", "stream", "small", "allocated", "prev", "next", "expandable", "mapped")

    def __init__(self, addr: int, size: int, stream: int, small: bool, expandable: bool = False):
        self.addr, self.size, self.stream, self.small = addr, size, stream, small
        self.allocated = False
        self.prev: Block | None = None
        self.next: Block | None = None
        self.expandable = expandable
        self.mapped = True

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None

    def key(self) -> tuple[int, int, int]:
        """BlockComparatorSize: stream, then size, then address."""
        return (self.stream, self.size, self.addr)


class _Pool:
    """BlockPool: the free (cached) blocks sorted by (stream, size, address), and unmapped expandable ranges."""

    __slots__ = ("small", "keys", "blocks", "unmapped")

    def __init__(self, small: bool):
        self.small = small
        self.keys: list[tuple[int, int, int]] = []
        self.blocks: dict[tuple[int, int, int], Block] = {}
        self.unmapped: dict[tuple[int, int], Block] = {}  # (stream, addr) -> unmapped range (BlockComparatorAddress)

    def insert(self, b: Block) -> None:
        k = (b.stream, b.size, b.addr)
        insort(self.keys, k)
        self.blocks[k] = b

    def erase(self, b: Block) -> None:
        k = (b.stream, b.size, b.addr)
        i = bisect_left(self.keys, k)
        del self.keys[i]
        del self.blocks[k]


def _expandable_size(b: Block) -> int:
    """get_free_block's expandable_size: a free block followed by unmapped space counts as that much bigger."""
    nxt = b.next
    return b.size + (nxt.size if nxt is not None and not nxt.mapped else 0)
