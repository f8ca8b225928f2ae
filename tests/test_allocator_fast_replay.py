"""fast_replay.replay_default (the estimate's inlined loop) gives the same result as the CachingAllocator class,
to the byte: on every shipped single-GPU run's predicted sequence and on random traces with empty_cache."""

import random

import pytest

from gpu_catalog import find_gpu
from vramplan.estimator import CALIBRATED_DEFAULTS, _terms
from vramplan.memory.allocator.caching import CachingAllocator
from vramplan.memory.allocator.fast_replay import replay_default
from vramplan.memory.allocator.replay import apply_op
from vramplan.memory.allocator.sequence import EMPTY_CACHE, training_sequence
from vramplan.models import resolve_model
from vramplan.runs import load_runs, shipped_runs_dir

RUNS = [r for r in load_runs([shipped_runs_dir()]) if r.environment.num_gpus == 1 and not r.setup.expandable_segments]
H100 = find_gpu("h100-sxm")


def _by_class(sizes: list[int], ops: list[int]):
    a = CachingAllocator()
    blocks = [None] * len(sizes)
    for op in ops:
        apply_op(a, blocks, sizes, op)
    return a.peak_reserved, a.at_peak_reserved, a.peak_allocated, a.num_segments


@pytest.mark.parametrize("run", RUNS[::4], ids=[r.run_id for r in RUNS[::4]])
def test_fast_replay_equals_the_class_on_shipped_sequences(run):
    model = resolve_model(run.model_source or run.model)
    seq = training_sequence(model, run.setup, _terms(model, run.setup, H100, dict(CALIBRATED_DEFAULTS)))
    assert replay_default(seq.sizes, seq.ops, EMPTY_CACHE) == _by_class(seq.sizes, seq.ops)


@pytest.mark.parametrize("seed", range(20))
def test_fast_replay_equals_the_class_on_random_traces(seed):
    rng = random.Random(seed)
    sizes: list[int] = []
    ops: list[int] = []
    live: list[int] = []
    for _ in range(3000):
        r = rng.random()
        if r < 0.01:
            ops.append(EMPTY_CACHE)
        elif r < 0.55 or not live:
            # small-pool, 1..10 MiB (20 MiB segments) and oversize requests, some exactly on the boundaries
            n = rng.choice([rng.randint(1, 2**20), rng.randint(2**20, 10 * 2**20), rng.randint(10 * 2**20, 300 * 2**20),
                            2**20, 10 * 2**20, 512])  # fmt: skip
            sizes.append(n)
            ops.append(len(sizes) - 1)
            live.append(len(sizes) - 1)
        else:
            ops.append(~live.pop(rng.randrange(len(live))))
    assert replay_default(sizes, ops, EMPTY_CACHE) == _by_class(sizes, ops)



MIB = 2**20
KIB = 2**10


def _both(sizes: list[int], ops: list[int]):
    fast = replay_default(sizes, ops, EMPTY_CACHE)
    assert fast == _by_class(sizes, ops)
    return fast


def test_a_large_remainder_smaller_than_another_free_block_is_sorted_before_it():
    # one 20 MiB segment: 5 MiB freed behind a live 4 MiB block, 11 MiB free after it; 8 MiB splits the 11 MiB block
    # (the 5 MiB one is too small), its 3 MiB rest now sorts below the 5 MiB block: 3 MiB takes it, 5 MiB the other
    sizes = [5 * MIB, 4 * MIB, 8 * MIB, 3 * MIB, 5 * MIB]
    assert _both(sizes, [0, 1, ~0, 2, 3, 4]) == (20 * MIB, (20 * MIB, 0, 0), 20 * MIB, 1)


def test_a_small_remainder_smaller_than_another_free_block_is_sorted_before_it():
    # the same in one 2 MiB small-pool segment: 512 KiB freed behind 256 KiB, 1 MiB splits the 1.25 MiB block
    sizes = [512 * KIB, 256 * KIB, MIB, 256 * KIB, 512 * KIB]
    assert _both(sizes, [0, 1, ~0, 2, 3, 4]) == (2 * MIB, (2 * MIB, 0, 0), 2 * MIB, 1)


def test_neighbours_freed_in_any_order_merge_into_one_block_as_the_class_merges_them():
    sizes = [3 * MIB, 4 * MIB, 5 * MIB, 7 * MIB, 12 * MIB, 6 * MIB]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0], [0, 2, 1], [2, 0, 1]):
        # the 7 MiB request takes the segment's last 8 MiB whole; once all four are free, 12 and 6 MiB split the
        # merged 20 MiB block
        assert _both(sizes, [0, 1, 2, 3, ~3, *[~i for i in order], 4, 5]) == (20 * MIB, (20 * MIB, 0, 0), 20 * MIB, 1)


def test_allocations_at_a_reserved_peak_reached_again_after_empty_cache_move_its_snapshot():
    # 20 + 30 + 20 MiB reserved at 55 MiB allocated; the 30 MiB segment freed and released, then made again: reserved
    # is back at its peak, and the 6 MiB request (split from the 15 MiB left in a 20 MiB segment) is the last rise
    sizes = [20 * MIB, 30 * MIB, 5 * MIB, 30 * MIB, 6 * MIB]
    assert _both(sizes, [0, 1, 2, ~1, EMPTY_CACHE, 3, 4]) == (70 * MIB, (61 * MIB, 9 * MIB, 9 * MIB), 61 * MIB, 3)


def test_an_empty_cache_op_that_could_be_a_free_is_refused():
    with pytest.raises(ValueError, match="empty_cache_op"):
        replay_default([512], [0, -2], -2)
