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
