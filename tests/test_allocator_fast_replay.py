"""fast_replay's inlined loops give the same result as the CachingAllocator class, to the byte: replay_default on
every shipped single-GPU run's predicted sequence and on random traces with empty_cache; replay_streams (sequences
with side streams) on every DeepSpeed ZeRO-2 / ZeRO-3 sequence of the shipped runs, a grid of synthetic ZeRO setups
and random traces over several streams; replay() takes them and gives the class's ReplayResult."""

import random

import pytest

from gpu_catalog import find_gpu
from vramplan.estimator import CALIBRATED_DEFAULTS, _terms
from vramplan.memory.allocator.caching import CachingAllocator
from vramplan.memory.allocator.fast_replay import replay_default, replay_streams
from vramplan.memory.allocator.ops import Sequence
from vramplan.memory.allocator.replay import ReplayResult, apply_op, replay
from vramplan.memory.allocator.sequence import EMPTY_CACHE, training_sequence
from vramplan.memory.allocator.zero_steps import zero_sequence_applies
from vramplan.models import resolve_model
from vramplan.runs import load_runs, shipped_runs_dir
from vramplan.specs import TrainingSetup

RUNS = [r for r in load_runs([shipped_runs_dir()]) if r.environment.num_gpus == 1 and not r.setup.expandable_segments]
H100 = find_gpu("h100-sxm")


def _by_class(sizes: list[int], ops: list[int]):
    a = CachingAllocator()
    blocks = [None] * len(sizes)
    for op in ops:
        apply_op(a, blocks, sizes, op)
    return a.peak_reserved, a.at_peak_reserved, a.peak_allocated, a.num_segments


def _by_class_on_streams(sizes: list[int], ops: list[int], streams: dict[int, int]):
    """The class with each allocation on its stream (replay()'s loop for the other settings)."""
    a = CachingAllocator()
    blocks = [None] * len(sizes)
    for op in ops:
        if op >= 0:
            blocks[op] = a.malloc(sizes[op], streams.get(op, 0))
        elif op == EMPTY_CACHE:
            a.empty_cache()
        else:
            a.free(blocks[~op])
    return a.peak_reserved, a.at_peak_reserved, a.peak_allocated, a.num_segments


def _class_result(seq: Sequence) -> ReplayResult:
    peak, (alloc, free_bytes, largest), peak_alloc, segments = _by_class_on_streams(seq.sizes, seq.ops, seq.streams)
    return ReplayResult(peak, alloc, free_bytes, largest, peak_alloc, segments)


def _fast_and_class_agree_on_streams(seq: Sequence) -> None:
    assert seq.streams  # a sequence with a side stream: replay() takes replay_streams
    fast = replay_streams(seq.sizes, seq.ops, seq.streams, EMPTY_CACHE)
    assert fast == _by_class_on_streams(seq.sizes, seq.ops, seq.streams)
    assert replay(seq) == _class_result(seq)


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


ZERO_RUNS = [
    r for r in load_runs([shipped_runs_dir()])
    if r.environment.num_gpus == 1 and r.setup.parallel in ("zero2", "zero3")
    and zero_sequence_applies(resolve_model(r.model_source or r.model), r.setup)
]  # fmt: skip
#: the models of the ZeRO histories and hold-outs, at three sequence lengths, in the three engines the sequence models
ZERO_GRID = [
    (name, TrainingSetup(method="full", grad_ckpt=True, seq_len=seq_len, parallel=parallel, offload=offload,
                         optimizer="adamw_torch_fused"))
    for name in ("llama-3.2-1b", "qwen2.5-0.5b", "qwen2.5-3b", "tinyllama-1.1b-chat-v1.0", "qwen3-1.7b")
    for seq_len in (1024, 2048, 4096)
    for parallel, offload in (("zero2", "none"), ("zero2", "optimizer"), ("zero3", "none"))
]  # fmt: skip


def test_every_covered_shipped_zero_run_is_compared():
    assert len(ZERO_RUNS) >= 19  # the ZeRO-2 / ZeRO-3 runs of 2026-12-02 and the two hold-outs


@pytest.mark.parametrize("run", ZERO_RUNS, ids=[r.run_id for r in ZERO_RUNS])
def test_stream_replay_equals_the_class_on_shipped_zero_sequences(run):
    model = resolve_model(run.model_source or run.model)
    _fast_and_class_agree_on_streams(
        training_sequence(model, run.setup, _terms(model, run.setup, H100, dict(CALIBRATED_DEFAULTS)))
    )


@pytest.mark.parametrize(
    ("name", "setup"), ZERO_GRID, ids=[f"{n}-{s.parallel}-{s.offload}-s{s.seq_len}" for n, s in ZERO_GRID]
)
def test_stream_replay_equals_the_class_on_synthetic_zero_sequences(name, setup):
    model = resolve_model(name)
    assert zero_sequence_applies(model, setup)
    _fast_and_class_agree_on_streams(training_sequence(model, setup, _terms(model, setup, H100,
                                                                               dict(CALIBRATED_DEFAULTS))))  # fmt: skip


@pytest.mark.parametrize("seed", range(20))
def test_stream_replay_equals_the_class_on_random_traces_over_several_streams(seed):
    rng = random.Random(seed)
    seq = Sequence()
    live: list[int] = []
    for _ in range(3000):
        r = rng.random()
        if r < 0.01:
            seq.empty_cache()
        elif r < 0.55 or not live:
            n = rng.choice([rng.randint(1, 2**20), rng.randint(2**20, 10 * 2**20), rng.randint(10 * 2**20, 300 * 2**20),
                            2**20, 10 * 2**20, 512])  # fmt: skip
            # the default stream most, DeepSpeed's reduction stream, and stream ids on either side of it
            live.append(seq.alloc_on(n, rng.choice([0, 0, 0, 1, 1, 2, 7, -3])))
        else:
            seq.free(live.pop(rng.randrange(len(live))))
    _fast_and_class_agree_on_streams(seq)


def test_stream_replay_without_side_streams_is_replay_default():
    rng = random.Random(5)
    sizes = [rng.randint(1, 30 * 2**20) for _ in range(400)]
    ops = [op for i in range(400) for op in ((i, ~(i - 3)) if i >= 3 and i % 2 else (i,))]
    assert replay_streams(sizes, ops, {}, EMPTY_CACHE) == replay_default(sizes, ops, EMPTY_CACHE)


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


def _on_streams(sizes: list[int], ops: list[int], streams: dict[int, int]):
    fast = replay_streams(sizes, ops, streams, EMPTY_CACHE)
    assert fast == _by_class_on_streams(sizes, ops, streams)
    return fast


def test_a_block_cached_on_a_side_stream_does_not_serve_the_default_stream():
    # 4 MiB on stream 1 is freed into its 20 MiB segment; the same request on stream 0 needs a segment of its own
    sizes = [4 * MIB, 4 * MIB]
    assert _on_streams(sizes, [0, ~0, 1], {0: 1}) == (40 * MIB, (4 * MIB, 36 * MIB, 20 * MIB), 4 * MIB, 2)
    assert _on_streams(sizes, [0, ~0, 1], {0: 1, 1: 1}) == (20 * MIB, (4 * MIB, 16 * MIB, 16 * MIB), 4 * MIB, 1)


def test_a_side_streams_segment_is_split_only_for_its_own_stream():
    # stream 1's 20 MiB segment holds 4 MiB; 3 MiB on stream 0 makes a second segment, 3 MiB on stream 1 splits the first
    sizes = [4 * MIB, 3 * MIB, 3 * MIB]
    assert _on_streams(sizes, [0, 1, 2], {0: 1, 2: 1}) == (40 * MIB, (10 * MIB, 30 * MIB, 17 * MIB), 10 * MIB, 2)


def test_empty_cache_releases_every_streams_unsplit_cached_segments():
    # a 2 MiB small-pool and a 20 MiB segment on stream 1, a 20 MiB one on stream 0, all free: empty_cache frees all
    sizes = [512 * KIB, 4 * MIB, 4 * MIB, 4 * MIB]
    assert _on_streams(sizes, [0, 1, 2, ~0, ~1, ~2, EMPTY_CACHE, 3], {0: 1, 1: 1}) == (
        42 * MIB, (9 * MIB - 512 * KIB, 33 * MIB + 512 * KIB, 16 * MIB), 9 * MIB - 512 * KIB, 1)  # fmt: skip


def test_the_largest_free_block_at_the_peak_is_the_largest_of_any_stream():
    # at the peak (the 4 MiB request's segment on stream 0) stream 1's 18 MiB block is the largest free one
    sizes = [2 * MIB, 4 * MIB]
    assert _on_streams(sizes, [0, 1], {0: 1}) == (40 * MIB, (6 * MIB, 34 * MIB, 18 * MIB), 6 * MIB, 2)
