"""zero3_fetch against the recorded all-gather stream (stream 1) of two DeepSpeed ZeRO-3 offload histories."""

import gzip
import json
from pathlib import Path

import pytest

from vramplan.memory.allocator.ops import EMPTY_CACHE
from vramplan.memory.allocator.zero3_fetch import (
    ALLGATHER,
    COMPLETE,
    allgather_ops,
    coordinator_events,
    decoder_modules,
    head_free_lag,
    hf_zero3_events,
    pool_peak,
)
from vramplan.models import resolve_model

TRACES = Path(__file__).resolve().parent.parent / "docs" / "allocator_traces" / "deepspeed"
MIB = 2**20
HISTORIES = {
    # model, history, recorded stream-1 pool (reserved) and live peaks in MiB
    "llama-3.2-1b": ("h-l1-zero3-full-gc-offall-x1", 2450.0, 2293.0),
    "qwen2.5-0.5b": ("h2-q05-zero3-full-gc-offall-x1", 992.0, 942.15625),
}
#: the zero3-offload hold-out's histories (2026-12-03, predicted before they ran): each one's stream-1 requests
HOLDOUT_HISTORIES = {
    "z3o-tiny-zero3-full-gc-offall-x1": "tinyllama-1.1b-chat-v1.0", "z3o-q15-zero3-full-gc-offall-x1": "qwen2.5-1.5b",
    "z3o-q3-17-zero3-full-gc-offall-x1": "qwen3-1.7b", "z3o-q3b-zero3-full-gc-offall-x1": "qwen2.5-3b",
    "z3o-l1-zero3-full-gc-offall-x1": "llama-3.2-1b", "z3o-l1-zero3-full-gc-offall-s4096-x1": "llama-3.2-1b",
}


def recorded_allgather(name: str) -> list[tuple[str, int, int]]:
    """The history's stream-1 ("A"|"F", tensor, bytes) after its last empty_cache (the training steps)."""
    doc = json.load(gzip.open(TRACES / f"{name}.events.json.gz"))
    sizes, ops = doc["sizes"], doc["ops"]
    stream = dict(map(tuple, doc["alloc_streams"]))
    start = max(k for k, op in enumerate(ops) if op == EMPTY_CACHE) + 1
    out = []
    for op in ops[start:]:
        t = op if op >= 0 else ~op
        if stream.get(t, 0) == 1:
            out.append(("A" if op >= 0 else "F", t, sizes[t]))
    return out


@pytest.fixture(scope="module", params=sorted(HISTORIES))
def case(request):
    model = request.param
    name, pool, live = HISTORIES[model]
    return model, hf_zero3_events(resolve_model(model)), recorded_allgather(name), pool, live


def test_allocation_sizes_per_step_match(case):
    _, steps, rec, _, _ = case
    rec_sizes = [n for k, _, n in rec if k == "A"]
    pos = 0
    for evs in steps:
        pred = [n for k, _, n in allgather_ops(evs) if k == "A"]
        assert pred == rec_sizes[pos:pos + len(pred)]
        pos += len(pred)
    assert pos == len(rec_sizes)


def test_step0_sizes_match(case):
    _, steps, rec, _, _ = case
    pred = [n for k, _, n in allgather_ops(steps[0]) if k == "A"]
    assert pred == [n for k, _, n in rec if k == "A"][:len(pred)]
    assert len(pred) > 300  # RECORD step: every module fetched on use, again in recompute and backward


def _free_lags(steps, rec):
    """For each recorded free: stream-1 allocations between the predicted release and the recorded free."""
    released_after, n, ordinal = {}, 0, {}
    for k, b, _ in (op for s in steps for op in allgather_ops(s)):
        if k == "A":
            ordinal[b] = n
            n += 1
        else:
            released_after[ordinal[b]] = n
    n, rec_ord, lags = 0, {}, []
    for k, t, _ in rec:
        if k == "A":
            rec_ord[t] = n
            n += 1
        else:
            lags.append(n - released_after[rec_ord[t]])
    return lags


def test_frees_never_precede_release_and_mostly_at_once(case):
    model, steps, rec, _, _ = case
    lags = _free_lags(steps, rec)
    assert len(lags) == sum(1 for k, _, _ in rec if k == "F")
    assert min(lags) == 0
    assert sum(1 for x in lags if x) <= 3  # only the tied lm_head weight's free lags (record_stream timing)


def test_pool_peak_matches_recorded(case):
    _, steps, rec, pool, live = case
    assert pool_peak(rec) == (pool * MIB, live * MIB)
    ops = [op for s in steps for op in allgather_ops(s, free_lag=head_free_lag(1))]
    reserved, live_peak = pool_peak(ops)
    assert live_peak == live * MIB
    assert reserved == pool * MIB


def test_qwen_sequence_identical():
    steps = hf_zero3_events(resolve_model("qwen2.5-0.5b"))
    rec = recorded_allgather(HISTORIES["qwen2.5-0.5b"][0])

    def canon(seq):
        ordinal, out = {}, []
        for k, b, _ in seq:
            if k == "A":
                ordinal[b] = len(ordinal)
            out.append((k, ordinal[b]))
        return out

    assert canon([op for s in steps for op in allgather_ops(s)]) == canon(rec)


def test_trace_modes_and_persistence():
    spec = resolve_model("llama-3.2-1b")
    h = spec.hidden_size
    steps, c = coordinator_events(decoder_modules(spec), prefetch_bucket=int(0.9 * h * h),
                                  persistence_threshold=10 * h)
    assert c.mode == COMPLETE and c.invalidations == 0
    norm = 2 * h
    fetched = [[e for e in s if e.kind == "fetch" and e.stream == ALLGATHER] for s in steps]
    assert sum(e.nbytes == norm for e in fetched[0]) == 33 + 1 + 2 * 2 * spec.num_layers  # fwd, bwd, recompute
    assert all(e.nbytes != norm for s in fetched[1:] for e in s)  # re-gathered on stream 0 after each step
    assert [e.where for e in fetched[1][:1]] == ["pre_fwd:root"]  # COMPLETE: the root's prefetch takes embed


@pytest.mark.parametrize("name", sorted(HOLDOUT_HISTORIES))
def test_every_holdout_history_fetches_what_the_coordinator_predicts_and_never_frees_early(name):
    # the all-gather stream's requests in order and size, steps 0-2, on models the coordinator was not read from
    # (an untied head, biases, q/k norms, 36 layers, 4096 tokens); a free lands at its release or later
    steps = hf_zero3_events(resolve_model(HOLDOUT_HISTORIES[name]))
    rec = recorded_allgather(name)
    assert [n for s in steps for k, _, n in allgather_ops(s) if k == "A"] == [n for k, _, n in rec if k == "A"]
    assert min(_free_lags(steps, rec)) == 0


ALL_LINEAR = (16, frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}))


@pytest.mark.parametrize("name, model, world, lora", [("l1-zero3-full-gc-x2", "llama-3.2-1b", 2, None),
                                                      ("zq-q3-17-zero3-full-gc-x4", "qwen3-1.7b", 4, None),
                                                      ("zq-q7-zero3-full-gc-x4", "qwen2.5-7b", 4, None),
                                                      ("l8-zero3-lora-gc-x2", "llama-3.1-8b", 2, ALL_LINEAR),
                                                      ("l3-zero3-full-gc-offall-x2", "llama-3.2-3b", 2, "offloaded"),
                                                      ("l8-zero3-full-gc-offall-x2", "llama-3.1-8b", 2, "offloaded")])  # fmt: skip
def test_over_more_ranks_every_all_gather_buffer_is_the_recorded_one(name, model, world, lora):
    # ZeRO-3 over 2 and 4 ranks without offload (fake ranks on one H200, 2026-12-04): a single parameter's fetch is
    # _all_gather_sequential's padded buffer, a coalesced prefetch one flat buffer of the partitions and then a
    # torch.cat per parameter; three steps, every allocation on the all-gather stream in the recorded order and size
    from vramplan.memory.allocator.rules import block_bytes

    doc = json.load(gzip.open(TRACES.parent / "fake_rank" / f"{name}.events.json.gz"))
    sizes, ops, stream = doc["sizes"], doc["ops"], dict(map(tuple, doc["alloc_streams"]))
    start = max(k for k, op in enumerate(ops) if op == EMPTY_CACHE) + 1
    recorded = [block_bytes(sizes[op]) for op in ops[start:] if op >= 0 and stream.get(op) == 1]
    # (offloaded: each partition is copied to the GPU after the all-gather's buffer is made, and freed at once)
    offloaded = lora == "offloaded"
    events = hf_zero3_events(resolve_model(model), world=world, lora=None if offloaded else lora, offloaded=offloaded)
    made = [block_bytes(e.nbytes) for step in events for e in step if e.kind == "fetch" and e.stream == ALLGATHER]
    assert len(made) == len(recorded) > 700
    assert made == recorded
    # at world size 1 the same coordinator makes one copy per parameter, no flat buffer
    one = hf_zero3_events(resolve_model(model))
    assert not any(e.param.startswith("flat:") for step in one for e in step)


def test_one_coordinator_run_serves_every_world_size_above_one():
    # the coordinator's decisions count elements, so 4 and 8 ranks are 2 ranks' events with other bytes (sized_for);
    # a direct run at 4 ranks makes the same events
    from vramplan.memory.allocator.zero3_fetch import _events

    model = resolve_model("qwen3-1.7b")
    for offloaded in (False, True):
        assert hf_zero3_events(model, world=4, offloaded=offloaded) == _events(model, 3, 4, None, offloaded)
    # (offloaded, each staged partition is a quarter of a parameter on 4 ranks, a half on 2)
    assert hf_zero3_events(model, world=4, offloaded=True) != hf_zero3_events(model, world=2, offloaded=True)
