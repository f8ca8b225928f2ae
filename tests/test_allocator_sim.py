"""The caching-allocator model against hand-worked traces (CUDACachingAllocator.cpp's rules)."""

import pytest

from vramplan.memory.allocator import AllocatorOOM, CachingAllocator, allocation_size, round_size

MIB = 2**20


def test_requests_round_to_512_bytes_and_get_the_segment_size_of_their_class():
    assert round_size(1) == 512 and round_size(513) == 1024
    assert allocation_size(round_size(1000)) == 2 * MIB  # small pool segment
    assert allocation_size(3 * MIB) == 20 * MIB  # 1..10 MiB share a 20 MiB segment
    assert allocation_size(31 * MIB - 7) == 32 * MIB  # large: own segment in 2 MiB steps


def test_small_requests_share_one_2mib_segment():
    a = CachingAllocator()
    for _ in range(3):
        a.malloc(1000)
    assert a.reserved == 2 * MIB and a.allocated == 3 * 1024


def test_mid_size_requests_share_a_20mib_segment():
    a = CachingAllocator()
    a.malloc(3 * MIB)
    a.malloc(3 * MIB)
    assert a.reserved == 20 * MIB and a.allocated == 6 * MIB


def test_a_cached_large_block_is_split_when_more_than_1mib_remains():
    a = CachingAllocator()
    a.free(a.malloc(30 * MIB))
    a.malloc(10 * MIB)
    assert (a.reserved, a.allocated, a.largest_free_block()) == (30 * MIB, 10 * MIB, 20 * MIB)


def test_a_cached_large_block_is_handed_out_whole_when_at_most_1mib_remains():
    a = CachingAllocator()
    a.free(a.malloc(30 * MIB))
    a.malloc(29 * MIB + 512)
    assert a.allocated == 30 * MIB and a.largest_free_block() == 0


def test_freed_neighbours_coalesce_and_serve_a_larger_request():
    a = CachingAllocator()
    a.free(a.malloc(100 * MIB))
    x, y = a.malloc(40 * MIB), a.malloc(40 * MIB)
    a.free(y)
    a.free(x)
    a.malloc(70 * MIB)
    assert a.reserved == 100 * MIB


def test_free_blocks_that_are_not_neighbours_strand_a_larger_request_in_a_new_segment():
    a = CachingAllocator()
    a.free(a.malloc(100 * MIB))
    x, _, z = a.malloc(40 * MIB), a.malloc(40 * MIB), a.malloc(20 * MIB)
    a.free(x)
    a.free(z)
    a.malloc(50 * MIB)
    assert a.reserved == 150 * MIB
    assert a.at_peak_reserved == (90 * MIB, 60 * MIB, 40 * MIB)  # allocated, free in segments, largest free


def test_best_fit_takes_the_smallest_block_that_holds_the_request():
    a = CachingAllocator()
    big, small = a.malloc(64 * MIB), a.malloc(32 * MIB)
    a.free(big)
    a.free(small)
    b = a.malloc(30 * MIB)
    assert b.addr == small.addr and a.largest_free_block() == 64 * MIB


def test_oversize_blocks_serve_only_large_requests_and_are_never_split():
    a = CachingAllocator(max_split_size_bytes=64 * MIB)
    a.free(a.malloc(100 * MIB))
    a.malloc(30 * MIB)  # may not take the 100 MiB oversize block
    assert a.reserved == 130 * MIB
    a.malloc(90 * MIB)  # >= max_split and within kLargeBuffer of 100: takes it whole
    assert a.reserved == 130 * MIB and a.allocated == 130 * MIB


def test_oversize_block_too_much_bigger_than_the_request_is_not_used():
    a = CachingAllocator(max_split_size_bytes=64 * MIB)
    a.free(a.malloc(100 * MIB))
    a.malloc(70 * MIB)  # 100 >= 70 + 20: a new segment
    assert a.reserved == 170 * MIB


def test_a_capped_allocator_frees_its_cache_and_retries_before_running_out():
    a = CachingAllocator(allowed_bytes=100 * MIB)
    a.free(a.malloc(60 * MIB))
    a.malloc(80 * MIB)  # 60 + 80 > 100: release the cached 60 MiB segment, retry
    assert (a.reserved, a.num_alloc_retries, a.peak_reserved) == (80 * MIB, 1, 80 * MIB)
    with pytest.raises(AllocatorOOM):
        a.malloc(40 * MIB)


def test_split_segments_are_not_released_by_the_retry():
    a = CachingAllocator(allowed_bytes=100 * MIB)
    a.free(a.malloc(60 * MIB))
    a.malloc(20 * MIB)  # splits the 60 MiB segment: its 40 MiB rest cannot be given back
    with pytest.raises(AllocatorOOM):
        a.malloc(50 * MIB)


def test_expandable_segments_map_20mib_pages_and_grow_the_free_tail():
    a = CachingAllocator(expandable_segments=True)
    a.malloc(30 * MIB)
    assert a.reserved == 40 * MIB  # two 20 MiB pages; the 10 MiB rest stays free in the mapping
    a.malloc(15 * MIB)  # the free 10 MiB tail plus one more page
    assert (a.reserved, a.allocated) == (60 * MIB, 45 * MIB)


def test_expandable_segments_reuse_freed_space_that_a_default_allocator_strands():
    def run(a: CachingAllocator) -> int:
        a.free(a.malloc(30 * MIB))
        a.malloc(40 * MIB)
        return a.reserved

    assert run(CachingAllocator()) == 70 * MIB
    assert run(CachingAllocator(expandable_segments=True)) == 40 * MIB


def test_expandable_small_pool_uses_2mib_pages():
    a = CachingAllocator(expandable_segments=True)
    a.malloc(600 * 1024)
    assert a.reserved == 2 * MIB


def test_empty_cache_unmaps_free_expandable_pages():
    a = CachingAllocator(expandable_segments=True)
    x = a.malloc(50 * MIB)
    a.free(x)
    a.empty_cache()
    assert a.reserved == 0 and a.peak_reserved == 60 * MIB
    a.malloc(10 * MIB)
    assert a.reserved == 20 * MIB
