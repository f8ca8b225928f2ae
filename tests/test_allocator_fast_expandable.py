"""fast_expandable's loop gives the class's result with expandable_segments:True, to the byte: on the shipped
single-GPU runs' sequences, on ZeRO-3 and FSDP ranks (side streams, gathers), on random traces with empty_cache over
several streams and address spaces small enough that a pool needs a second segment, and on hand-built traces for
each expandable rule (growth into the unmapped tail, best fit's expandable_size, unmapping whole pages)."""

import random

import pytest

from gpu_catalog import find_gpu
from vramplan.estimator import CALIBRATED_DEFAULTS, _terms, fsdp_rank_terms
from vramplan.memory.allocator.caching import CachingAllocator
from vramplan.memory.allocator.fast_expandable import replay_expandable
from vramplan.memory.allocator.ops import EMPTY_CACHE, Sequence
from vramplan.memory.allocator.replay import ReplayResult, replay
from vramplan.memory.allocator.simulated import EXPANDABLE_REPLAY_MEMORY_BYTES, rank_sequence
from vramplan.models import resolve_model
from vramplan.runs import load_runs, shipped_runs_dir
from vramplan.specs import LoraSpec, TrainingSetup

MIB = 1024**2
RUNS = [r for r in load_runs([shipped_runs_dir()]) if r.environment.num_gpus == 1]


def _class(seq: Sequence, total: int) -> ReplayResult:
    a = CachingAllocator(expandable_segments=True, total_memory_bytes=total)
    blocks = [None] * len(seq.sizes)
    for op in seq.ops:
        if op >= 0:
            blocks[op] = a.malloc(seq.sizes[op], seq.streams.get(op, 0))
        elif op == EMPTY_CACHE:
            a.empty_cache()
        else:
            a.free(blocks[~op])
    alloc, free_bytes, largest = a.at_peak_reserved
    return ReplayResult(a.peak_reserved, alloc, free_bytes, largest, a.peak_allocated, a.num_segments)


def _agree(seq: Sequence, total: int = EXPANDABLE_REPLAY_MEMORY_BYTES) -> ReplayResult:
    own = _class(seq, total)
    peak, at, peak_alloc = replay_expandable(seq.sizes, seq.ops, seq.streams, EMPTY_CACHE, total)
    at_peak = (own.allocated_at_peak_bytes, own.free_in_segments_at_peak_bytes, own.largest_free_block_at_peak_bytes)
    assert (peak, at, peak_alloc) == (own.peak_reserved_bytes, at_peak, own.peak_allocated_bytes)
    assert replay(seq, expandable_segments=True, total_memory_bytes=total) == own  # replay() takes the loop
    return own


@pytest.mark.parametrize("run", RUNS[::6], ids=[r.run_id for r in RUNS[::6]])
def test_the_loop_equals_the_class_on_shipped_sequences(run):
    model = resolve_model(run.model_source or run.model)
    setup = run.setup.model_copy(update={"expandable_segments": True})
    gpu = find_gpu("h100-sxm")
    _agree(rank_sequence(model, setup, _terms(model, setup, gpu, dict(CALIBRATED_DEFAULTS))))


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "lora", "lora": LoraSpec(), "num_gpus": 2, "parallel": "zero3"},
        {"method": "full", "num_gpus": 4, "parallel": "zero3", "offload": "all"},
        {"method": "full", "num_gpus": 2, "parallel": "zero2", "offload": "optimizer"},
        {"method": "full", "num_gpus": 8, "parallel": "fsdp"},
    ],
    ids=["zero3-lora-x2", "zero3-offall-x4", "zero2-offopt-x2", "fsdp-x8"],
)
def test_the_loop_equals_the_class_on_multi_gpu_ranks(kw):
    model = resolve_model("llama-3.2-1b")
    setup = TrainingSetup(grad_ckpt=True, expandable_segments=True, **kw)
    gpu, constants = find_gpu("h100-sxm"), dict(CALIBRATED_DEFAULTS)
    t = fsdp_rank_terms(model, setup, gpu, constants) if setup.parallel == "fsdp" else _terms(model, setup, gpu, constants)
    seq = rank_sequence(model, setup, t)
    assert seq.streams or setup.parallel == "fsdp"
    _agree(seq)


def _random_trace(rng: random.Random, n: int) -> Sequence:
    seq, live = Sequence(), []
    for _ in range(n):
        x = rng.random()
        if x < 0.5 or not live:
            size = rng.choice([rng.randint(1, 4096), rng.randint(1, MIB), rng.randint(MIB, 12 * MIB),
                               rng.randint(MIB, 300 * MIB)])  # fmt: skip
            i = seq.alloc(size)
            live.append(i)
            if rng.random() < 0.2:
                seq.streams[i] = rng.choice([1, 2])
        elif x < 0.97:
            seq.free(live.pop(rng.randrange(len(live))))
        else:
            seq.empty_cache()
    return seq


@pytest.mark.parametrize("seed", range(60))
def test_the_loop_equals_the_class_on_random_traces(seed):
    rng = random.Random(seed)
    total = rng.choice([1024**3, 80 * 1024**3, EXPANDABLE_REPLAY_MEMORY_BYTES])  # 1 GiB: pools outgrow a segment
    _agree(_random_trace(rng, rng.choice([30, 200, 800])), total)


def test_a_request_grows_the_free_block_at_the_end_of_the_mapping_by_whole_pages():
    seq = Sequence()
    a = seq.alloc(30 * MIB)  # two 20 MiB pages
    seq.free(a)
    seq.alloc(50 * MIB)  # the free 40 MiB at the end grows by one page, not a new 60 MiB
    r = _agree(seq)
    assert r.peak_reserved_bytes == 60 * MIB and r.num_segments == 0


def test_best_fit_passes_over_the_growable_block_for_a_fixed_one_that_holds_the_request():
    seq = Sequence()
    x = seq.alloc(12 * MIB)
    seq.alloc(4 * MIB), seq.alloc(2 * MIB)  # one 20 MiB page: 12 | 4 | 2 | 2 free at the end of the mapping
    seq.free(x)
    # best fit by size is the 2 MiB at the end, but it counts as what it can grow to: the 12 MiB block is split
    seq.alloc(2 * MIB)
    seq.alloc(12 * MIB)  # so no free block holds 12 MiB: the end grows by a page (had the end been taken: no page)
    r = _agree(seq)
    assert r.peak_reserved_bytes == 40 * MIB


def test_empty_cache_unmaps_only_whole_pages_and_the_range_is_mapped_again_later():
    seq = Sequence()
    a, b = seq.alloc(25 * MIB), seq.alloc(10 * MIB)  # two pages mapped: a at 0-25 MiB, b at 25-35, 35-40 free
    seq.free(a)
    seq.empty_cache()  # the one whole page in 0-25 goes (0-20); 20-25 stays mapped and free, as does 35-40
    r = _agree(seq)
    assert r.peak_reserved_bytes == 40 * MIB
    seq.alloc(22 * MIB)  # the lowest unmapped range with the free 20-25 after it holds it: 0-20 mapped again
    seq.free(b)
    r = _agree(seq)
    assert r.peak_reserved_bytes == 40 * MIB  # (from the end of the mapping it would have taken a third page)
