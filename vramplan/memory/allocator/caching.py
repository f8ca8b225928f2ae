"""A pure-Python model of PyTorch's CUDA caching allocator (``DeviceCachingAllocator``), no torch.

Read from ``c10/cuda/CUDACachingAllocator.cpp`` (pytorch/pytorch at 001074d25084, the 2.11 line); each
rule below names the function it comes from. One device, any number of streams (an int each); the
default ``PYTORCH_CUDA_ALLOC_CONF`` (``max_split_size_mb`` unlimited, no ``roundup_power2_divisions``,
no garbage-collection threshold) unless told otherwise. Not modelled: CUDA graphs / private pools,
cross-stream ``record_stream`` events (a free completes at once), garbage collection.

Segment addresses follow what the CUDA driver did in recorded H200 histories (addresses.py: 32 MiB chunks taken
top-down, the room in earlier segments' chunks used first): they only break ties between equally sized free
blocks in best fit, but those decide which segment a request splits.
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
    UNLIMITED,
    AllocatorOOM,
    Block,
    _expandable_size,
    _Pool,
)
from .expandable import ExpandableSegments


class CachingAllocator(ExpandableSegments):
    """DeviceCachingAllocator for one device.

    ``allowed_bytes``: ``torch.cuda.set_per_process_memory_fraction`` (allowed_memory_maximum = fraction x
    total); ``device_free_bytes``: what cudaMalloc can get at most (None: unlimited); ``total_memory_bytes``
    sizes an expandable segment's address space (1 1/8 of it, ExpandableSegment's constructor); ``addresses``:
    where cudaMalloc puts segments (anything with ``take(nbytes)`` / ``give_back(addr)``; default addresses.py's
    model of the driver, a recorded history's own addresses to replay it exactly).
    """

    def __init__(
        self,
        *,
        expandable_segments: bool = False,
        max_split_size_bytes: int | None = None,
        allowed_bytes: int | None = None,
        device_free_bytes: int | None = None,
        total_memory_bytes: int = 80 * 1024**3,
        addresses: DeviceAddresses | None = None,
    ):
        self.expandable_segments = expandable_segments
        self.max_split = UNLIMITED if max_split_size_bytes is None else max_split_size_bytes
        self.allowed = allowed_bytes
        self.device_free = device_free_bytes
        self.address_space = total_memory_bytes + total_memory_bytes // 8
        self.small_pool, self.large_pool = _Pool(True), _Pool(False)
        self.addresses = DeviceAddresses() if addresses is None else addresses
        self.allocated = self.reserved = 0
        self.peak_allocated = self.peak_reserved = 0
        #: allocated bytes, free bytes inside segments and the largest free block when reserved last peaked
        self.at_peak_reserved: tuple[int, int, int] = (0, 0, 0)
        self.num_alloc_retries = self.num_segments = 0

    # ------------------------------------------------------------------ malloc / free
    def malloc(self, nbytes: int, stream: int = 0) -> Block:
        """DeviceCachingAllocator::malloc: best fit from the cache, else a new segment, else free the cache
        and retry, else AllocatorOOM."""
        # round_size, inline
        size = MIN_BLOCK_BYTES if nbytes < MIN_BLOCK_BYTES else -(-nbytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES
        pool = self.small_pool if size <= SMALL_SIZE_BYTES else self.large_pool  # get_pool
        block = self._get_free_block(pool, size, stream)
        if block is None:
            alloc_size = allocation_size(size)
            block = (
                self._alloc_block(pool, size, alloc_size, stream)
                or (self._release_available_cached_blocks(pool, size, stream)
                    and self._alloc_block(pool, size, alloc_size, stream))
                or (self._release_cached_blocks() and self._alloc_block(pool, size, alloc_size, stream, retry=True))
            )  # fmt: skip
            if not block:
                raise AllocatorOOM(size, self.allocated, self.reserved)
        return self._alloc_found_block(pool, block, size)

    def free(self, block: Block) -> None:
        """free -> free_block: merge with free neighbours (try_merge_blocks) and return to the pool."""
        block.allocated = False
        self.allocated -= block.size
        pool = self.small_pool if block.small else self.large_pool
        for other in (block.prev, block.next):
            if other is not None and not other.allocated:
                self._try_merge(block, other, pool)
        pool.insert(block)

    def empty_cache(self) -> None:
        """emptyCache -> release_cached_blocks."""
        self._release_cached_blocks()

    # ------------------------------------------------------------------ the pieces of malloc
    def _get_free_block(self, pool: _Pool, size: int, stream: int) -> Block | None:
        """get_free_block: the smallest cached block of the stream with size >= request (lower_bound on
        (stream, size, address)); expandable tails count at the size they can grow to; oversize blocks
        (>= max_split_size) only serve requests >= max_split_size and at most kLargeBuffer smaller."""
        keys = pool.keys
        i = bisect_left(keys, (stream, size, -1))
        if i == len(keys) or keys[i][0] != stream:
            return None
        b = pool.blocks[keys[i]]
        if b.expandable:
            if not self.expandable_segments:  # expandable blocks left from when the option was on: skip them
                while b.expandable:
                    i += 1
                    if i == len(keys) or keys[i][0] != stream:
                        return None
                    b = pool.blocks[keys[i]]
            else:
                grow = _expandable_size
                while b.expandable and i + 1 < len(keys) and keys[i + 1][0] == stream:
                    nxt = pool.blocks[keys[i + 1]]
                    if grow(nxt) >= grow(b):
                        break
                    i, b = i + 1, nxt
        if size < self.max_split <= b.size:
            return None
        if size >= self.max_split and b.size >= size + LARGE_BUFFER_BYTES:
            return None
        del keys[i]  # pool.erase(b), at the index found
        del pool.blocks[(b.stream, b.size, b.addr)]
        return b

    def _alloc_block(self, pool: _Pool, size: int, alloc_size: int, stream: int, retry: bool = False) -> Block | None:
        """alloc_block: a new segment of alloc_size (cudaMalloc), or pages mapped into the pool's expandable
        segment; fails past the memory fraction (total_allocated_memory + size > allowed_memory_maximum)."""
        if retry:
            self.num_alloc_retries += 1
        if self.allowed is not None and self.reserved + alloc_size > self.allowed:
            return None
        if self.expandable_segments:
            return self._try_allocate_expandable_block(pool, size, stream)
        if self.device_free is not None and self.reserved + alloc_size > self.device_free:
            return None
        block = Block(self._take_address(alloc_size), alloc_size, stream, pool.small)
        self._add_reserved(alloc_size)
        self.num_segments += 1
        return block

    def _alloc_found_block(self, pool: _Pool, block: Block, size: int) -> Block:
        """should_split + alloc_found_block: split off the rest as a new free block when it is worth it."""
        remaining = block.size - size
        if pool.small or self.expandable_segments:
            split = remaining >= MIN_BLOCK_BYTES
        else:
            split = size < self.max_split and remaining > SMALL_SIZE_BYTES
        if split:
            rest = Block(block.addr + size, remaining, block.stream, block.small, block.expandable)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            k = (rest.stream, remaining, rest.addr)  # pool.insert(rest)
            insort(pool.keys, k)
            pool.blocks[k] = rest
        block.allocated = True
        self.allocated += block.size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        if self.reserved == self.peak_reserved and self.allocated > self.at_peak_reserved[0]:
            self._note_peak()
        return block

    def _try_merge(self, dst: Block, src: Block | None, pool: _Pool) -> int:
        """try_merge_blocks: absorb a free neighbour with the same mapped state."""
        if src is None or src.allocated or src.mapped != dst.mapped:
            return 0
        if src.mapped:
            pool.erase(src)
        else:
            del pool.unmapped[(src.stream, src.addr)]
        if dst.prev is src:
            dst.addr, dst.prev = src.addr, src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        return src.size

    def _release_available_cached_blocks(self, pool: _Pool, size: int, stream: int) -> bool:
        """release_available_cached_blocks: only with max_split_size set: free one oversize cached block
        >= the request, else the largest oversize ones until enough is freed."""
        if self.max_split == UNLIMITED:
            return False
        want = max(size, self.max_split)
        keys = pool.keys
        i = bisect_left(keys, (stream, want, -1))
        if i < len(keys) and keys[i][0] == stream:
            self._release_block(pool, pool.blocks[keys[i]])
            return True
        released, j = 0, i - 1
        while released < want and j >= 0 and keys[j][0] == stream and keys[j][1] >= self.max_split:
            b = pool.blocks[keys[j]]
            if b.is_split():  # release_block asserts unsplit blocks only
                j -= 1
                continue
            released += b.size
            self._release_block(pool, b)
            j -= 1
        return released >= want

    def _release_cached_blocks(self) -> bool:
        """release_cached_blocks -> release_blocks for both pools: cudaFree every unsplit cached block;
        expandable segments unmap their free pages (unmap_block) and go when wholly unmapped."""
        for pool in (self.large_pool, self.small_pool):
            for key in list(pool.keys):
                b = pool.blocks.get(key)
                if b is None:
                    continue
                if b.expandable:
                    self._unmap_block(pool, b)
                elif not b.is_split():
                    self._release_block(pool, b)
        return True

    def _release_block(self, pool: _Pool, b: Block) -> None:
        """release_block: cudaFree a whole unsplit segment (its address range goes back to the driver)."""
        pool.erase(b)
        self.reserved -= b.size
        self.num_segments -= 1
        self.addresses.give_back(b.addr)

    # ------------------------------------------------------------------ bookkeeping
    def _take_address(self, nbytes: int) -> int:
        """cudaMalloc's address for a new segment (addresses.py)."""
        return self.addresses.take(nbytes)

    def _add_reserved(self, nbytes: int) -> None:
        self.reserved += nbytes
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
            self._note_peak()

    def _note_peak(self) -> None:
        self.at_peak_reserved = (self.allocated, self.reserved - self.allocated, self.largest_free_block())

    def largest_free_block(self) -> int:
        """cacheInfo: the largest cached (free, mapped) block (keys sort by stream, then size)."""
        best = 0
        for pool in (self.small_pool, self.large_pool):
            keys = pool.keys
            if not keys:
                continue
            if keys[0][0] == keys[-1][0]:  # one stream: the last key is the largest
                best = max(best, keys[-1][1])
            else:
                best = max(best, max(k[1] for k in keys))
        return best


def round_size(nbytes: int) -> int:
    """round_size: at least 512 bytes, then up to a multiple of 512 (no roundup_power2_divisions)."""
    if nbytes < MIN_BLOCK_BYTES:
        return MIN_BLOCK_BYTES
    return -(-nbytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES


def allocation_size(size: int) -> int:
    """get_allocation_size: 2 MiB for small requests, 20 MiB up to 10 MiB, else the request in 2 MiB steps."""
    if size <= SMALL_SIZE_BYTES:
        return SMALL_BUFFER_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_BUFFER_BYTES
    return -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES
