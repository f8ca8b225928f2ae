"""DeepSpeed ZeRO-2 and ZeRO-3 on one GPU in the predicted sequence (vramplan/memory/allocator/zero_steps.py,
zero3_steps.py): the engine's hooks worked by hand, the predicted sequences against the recorded histories, and the
default rule's choice."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from vramplan.estimator import CALIBRATED_DEFAULTS, _terms, estimate
from vramplan.memory.allocator.lora_no_grad_layer import lora_no_grad_layer, lora_no_grad_sizes
from vramplan.memory.allocator.ops import EMPTY_CACHE, Sequence
from vramplan.memory.allocator.replay import replay
from vramplan.memory.allocator.rules import block_bytes
from vramplan.memory.allocator.sequence import training_sequence
from vramplan.memory.allocator.zero_steps import (
    REDUCTION_STREAM,
    ZeroPlan,
    ZeroSteps,
    zero_sequence_applies,
)
from vramplan.memory.allocator.zero3_offload import GATHER_STREAM, Zero3OffloadSteps
from vramplan.memory.allocator.zero3_steps import Zero3Steps, sub_groups
from vramplan.memory.parallel import (
    OFFLOAD_MEASURED_NOTE,
    ZERO2_SIMULATED_NOTE,
    ZERO3_OFFLOAD_OPTIMIZER_SIMULATED_NOTE,
    ZERO3_OFFLOAD_SIMULATED_NOTE,
    ZERO3_SIMULATED_NOTE,
    ZERO_LORA_SIMULATED_NOTE,
)
from vramplan.models import resolve_model
from vramplan.runs import load_runs, shipped_runs_dir
from vramplan.specs import LoraSpec, TrainingSetup

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "docs" / "allocator_traces" / "deepspeed"
MIB = 2**20
#: start_cuda's 2 MiB small-pool segment, made before the histories start recording (scripts/trace_replay_check.py)
PRE_RECORDING_SEGMENT = 2 * MIB
#: the four the engine's sequence was read from (2026-12-02), then the zero2-seq hold-out's five (2026-12-03, predicted
#: before they ran: docs/holdout/zero2-seq-compare.txt; TinyLlama's untied lm_head, 4096 tokens, Qwen2.5-3B, Qwen3)
ZERO2_HISTORIES = ("h-q05-zero2-full-gc-x1", "h-l3-zero2-full-gc-offopt-x1", "h2-q15-zero2-full-gc-offopt-x1",
                   "l1-zero2-full-gc-offopt-x1", "z-tiny-zero2-full-gc-offopt-x1", "z-tiny-zero2-full-gc-s4096-x1",
                   "z-q3b-zero2-full-gc-x1", "z-q3-17-zero2-full-gc-x1", "z-l1-zero2-full-gc-s4096-x1")  # fmt: skip
#: the two ZeRO-3 histories without offload the engine's sequence was read from (2026-12-02; l1's has no streams), and
#: the one with the optimizer offloaded (2026-12-04: the fp32 partitions and gradient buffer on the host)
ZERO3_HISTORIES = ("h-q15-zero3-full-gc-x1", "l1-zero3-full-gc-x1", "o-l1-zero3-full-gc-offopt-x1")


class _Engine(ZeroSteps, Zero3Steps):
    """ZeroSteps (and Zero3Steps' reduce) on its own: a sequence, a plan, the loaded parameters (id, no decay)."""

    def __init__(self, plan: ZeroPlan, params: list[tuple[int, bool]], seq: Sequence):
        self.seq, self.zero, self.loaded_params = seq, plan, params


class _Offload(_Engine, Zero3OffloadSteps):
    """_Engine with ZeRO-3's offloaded reduce (zero3_offload.py)."""


def _live(seq: Sequence) -> set[int]:
    live: set[int] = set()
    for op in seq.ops:
        if op == EMPTY_CACHE:
            continue
        live.add(op) if op >= 0 else live.discard(~op)
    return live


def test_hooks_keep_an_extra_large_gradient_until_the_next_hook_and_free_small_ones_at_once():
    seq = Sequence()
    engine = _Engine(ZeroPlan(group_numels=(300, 10), largest_numel=200, bucket_numel=100, offload=False), [], seq)
    engine._zero_reset()
    big = seq.alloc(200 * 2)  # 200 elements > the bucket's 100: kept until the next hook reduces it
    engine.zero_hook(big)
    ipg = engine.zero_ipg
    assert len(ipg) == 2 and all(seq.sizes[i] == 512 for i in ipg)  # setup_buckets: two bf16 buffers (block-rounded)
    assert big in _live(seq) and engine.zero_partition is None
    small = seq.alloc(40 * 2)
    engine.zero_hook(small)  # reduces the big one into grads_in_partition (made now, on the reduction stream)
    live = _live(seq)
    assert big not in live and small not in live
    part = engine.zero_partition
    assert seq.streams == {part: REDUCTION_STREAM} and seq.sizes[part] == 1024  # 310 bf16 elements, block-rounded
    engine.zero_backward_end()
    assert _live(seq) == {part}  # the IPG buffers go at the backward's end; the partition lives until the step


def test_offload_casts_each_gradient_on_the_reduction_stream_and_makes_no_partition():
    seq = Sequence()
    engine = _Engine(ZeroPlan(group_numels=(300,), largest_numel=200, bucket_numel=100, offload=True), [], seq)
    engine._zero_reset()
    for numel in (200, 40, 60):
        engine.zero_hook(seq.alloc(numel * 2))
    engine.zero_backward_end()
    casts = sorted(seq.sizes[i] for i in seq.streams)
    assert casts == sorted([200 * 8, 200 * 4, 40 * 8, 40 * 4, 60 * 8, 60 * 4])  # fp64 norm copy, fp32 host copy
    assert engine.zero_partition is None and not _live(seq) - {i for i in seq.streams}


def test_init_frees_each_group_into_its_flat_buffer_and_makes_masters_without_offload():
    seq = Sequence()
    params = [(seq.alloc(4096), False), (seq.alloc(1024), True), (seq.alloc(4096), False)]
    engine = _Engine(ZeroPlan(group_numels=(4096, 512), largest_numel=2048, bucket_numel=100, offload=False), params,
                     seq)  # fmt: skip
    engine.zero_init()
    live = _live(seq)
    assert not live & {i for i, _ in params}
    # two flat bf16 buffers and two fp32 masters stay; the clones and initialize_optimizer_states' zeros are freed
    assert sorted(seq.sizes[i] for i in live) == sorted([8192, 1024, 16384, 2048])
    assert seq.ops.count(EMPTY_CACHE) == 2


def test_zero3_sub_groups_close_where_their_sum_first_reaches_the_size():
    assert sub_groups([6, 5, 4, 3], size=10) == [11, 7]  # 6+5 reaches 10: closed; the rest at the group's end
    assert sub_groups([6, 4, 4], size=10) == [10, 4]
    assert sub_groups([3, 3], size=10) == [6]  # a group no larger than the size is one sub-group
    assert sub_groups([], size=10) == []


def test_zero3_reduce_concatenates_a_bucket_of_several_gradients_on_the_reduction_stream():
    seq = Sequence()
    engine = _Engine(ZeroPlan(group_numels=(300,), largest_numel=200, bucket_numel=100, offload=False, stage=3), [],
                     seq)  # fmt: skip
    engine._zero_reset()
    for numel in (30, 50, 200, 10):  # 30 + 50 share the bucket; 200 overflows it (cat of 80), then 10 reduces it alone
        engine.zero_hook(seq.alloc(numel * 2))
    engine.zero_backward_end()
    assert engine.zero_ipg == [] and engine.zero_partition is None  # ZeRO-3's bucket and partitions are made at init
    assert [seq.sizes[i] for i in seq.streams] == [512]  # one cat: 80 bf16 elements, block-rounded
    assert not _live(seq)


def _history_run(name: str):
    for r in load_runs([shipped_runs_dir()]):
        if (r.extra or {}).get("memory_snapshot", "").removesuffix(".pickle") == name:
            return r
    raise AssertionError(name)


def _history_sequence(name: str):
    """A recorded history's compact events, its run, and the sequence predicted for the run's setup."""
    doc = json.loads(gzip.decompress((TRACES / f"{name}.events.json.gz").read_bytes()))
    run = _history_run(name)
    model = resolve_model(run.model_source or run.model)
    assert zero_sequence_applies(model, run.setup)
    return doc, run, training_sequence(model, run.setup, _terms(model, run.setup, None, dict(CALIBRATED_DEFAULTS)))


@pytest.mark.parametrize("name", ZERO2_HISTORIES + ZERO3_HISTORIES)
def test_predicted_zero_sequence_reaches_the_recorded_peaks(name):
    # every ZeRO-2 history (no offload, offload_optimizer): reserved within 2 MiB of the run's (the recorded peak plus
    # start_cuda's segment; on all but Qwen2.5-3B to the MiB, there 2 MiB of 69 GiB under), allocated within 0.05 %
    doc, _, seq = _history_sequence(name)
    result = replay(seq)
    assert abs(result.peak_reserved_bytes - (doc["recorded"]["peak_reserved"] + PRE_RECORDING_SEGMENT)) <= 2 * MIB
    assert abs(seq.live_peak() / doc["recorded"]["peak_allocated"] - 1) <= 0.0005


#: DeepSpeed under checkpointed LoRA (2026-12-04), with each one's reserved peak less the recorded one (MiB): ZeRO-2's
#: two 1B histories and ZeRO-3's 1B and 8B ones (the 8B's optimizer offloaded, no streams) the engine's LoRA sequence
#: was read from; zero-lora-holdout's four ZeRO-2 runs (Qwen2.5's biases, TinyLlama's GQA, Qwen3's q/k norms, 3B at
#: 4096 tokens), predicted before the no-grad LoRA layer was read from them; zero-lora-holdout2's six, predicted with it
ZERO_LORA_HISTORIES = {"o-l1-zero2-lora-gc-x1": 0, "o-l1-zero2-lora-gc-offopt-x1": 0, "o-l1-zero3-lora-gc-x1": 0,
                       "l8-zero3-lora-gc-offopt-x1": 0, "hz-q15-zero2-lora-gc-x1": 0, "hz-tiny-zero2-lora-gc-offopt-x1": 0,
                       "hz-q3-17-zero2-lora-gc-x1": 6, "hz-l3-zero2-lora-gc-s4096-x1": 0, "hl-q15-zero3-lora-gc-x1": 0,
                       "hl-tiny-zero3-lora-gc-offopt-x1": 0, "hl-q3-17-zero3-lora-gc-x1": 0,
                       "hl-l3-zero3-lora-gc-s4096-x1": 0, "hl-q05-zero2-lora-gc-offopt-x1": 0,
                       "hl-q3b-zero2-lora-gc-x1": -4}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ZERO_LORA_HISTORIES))
def test_zero_lora_sequence_reaches_the_recorded_peaks(name):
    # reserved to the MiB as listed; allocated within 2.1 MiB (Qwen2.5's: cuBLASLt's workspaces, not modelled) and to
    # 0.1 MiB on the rest. Before the no-grad LoRA layer (lora_no_grad_layer.py) the summary forward made up to 348 MiB
    # (+2.4 %) of 20 MiB segments more; before ZeRO-3's zero.Init load and fp32 adapters, -1.5 GiB allocated
    doc, _, seq = _history_sequence(name)
    assert abs(seq.live_peak() - doc["recorded"]["peak_allocated"]) < 2.1 * MIB
    recorded = doc["recorded"]["peak_reserved"] + PRE_RECORDING_SEGMENT
    assert replay(seq).peak_reserved_bytes - recorded == ZERO_LORA_HISTORIES[name] * MIB


def _op_tokens(doc: dict) -> list[str]:
    """A history's ops as run_pattern tokens: each allocation its block-rounded size, each free how many ops back the
    freed tensor was made (empty_cache points skipped)."""
    ops = [op for op in doc["ops"] if op != EMPTY_CACHE]
    made, out = {}, []
    for j, op in enumerate(ops):
        if op >= 0:
            made[op] = j
            out.append(f"A{block_bytes(doc['sizes'][op])}")
        else:
            out.append(f"-{j - made.get(~op, -(10**9))}")
    return out


#: how many of each ZeRO-3 LoRA history's decoder-layer forwards (3 steps) are the first step's pattern and the later
#: steps' (lora_A's weight fetched as a copy, or not)
ZERO3_LORA_LAYERS = {"o-l1-zero3-lora-gc-x1": 16, "l8-zero3-lora-gc-offopt-x1": 32, "hl-q15-zero3-lora-gc-x1": 28,
                     "hl-tiny-zero3-lora-gc-offopt-x1": 22, "hl-q3-17-zero3-lora-gc-x1": 28,
                     "hl-l3-zero3-lora-gc-s4096-x1": 28}  # fmt: skip


def _expected_layers(name: str) -> tuple[int, int]:
    """ZeRO-3: the first step's layers, then the two later steps'; ZeRO-2 (one pattern): all three steps' in both,
    but a Qwen2.5 model's layer 0 of step 0 (its first biased bf16 projection makes cuBLASLt's 1 MiB workspace there;
    ZeRO-3's fp32 chain does not)."""
    if name in ZERO3_LORA_LAYERS:
        return ZERO3_LORA_LAYERS[name], 2 * ZERO3_LORA_LAYERS[name]
    model = resolve_model(_history_run(name).model_source or _history_run(name).model)
    every = 3 * model.num_layers - (model.model_type == "qwen2")
    return every, every


@pytest.mark.parametrize("name", sorted(ZERO_LORA_HISTORIES))
def test_every_recorded_lora_layer_forward_is_the_no_grad_pattern(name):
    # every decoder layer's checkpointed forward of every recorded step (3 steps) is the pattern, op for op: ZeRO-2's
    # bf16 block in each step; ZeRO-3's fp32 block with lora_A's weight fetched as a copy in step 0's layers, without
    # it in steps 1 and 2; Qwen3's q/k norms; Qwen2.5's biases make nothing more (but see _expected_layers)
    doc = json.loads(gzip.decompress((TRACES / f"{name}.events.json.gz").read_bytes()))
    run = _history_run(name)
    model = resolve_model(run.model_source or run.model)
    recorded = _op_tokens(doc)
    counts = []
    for step0 in (True, False):
        tokens, _ = lora_no_grad_layer(model, run.setup, step0)
        sizes = lora_no_grad_sizes(model, run.setup)
        pattern = [t if t.startswith("-") else f"A{block_bytes(sizes[t])}" for t in tokens]
        n = len(pattern)
        counts.append(sum(1 for j in range(len(recorded) - n + 1) if recorded[j : j + n] == pattern))
    assert counts == list(_expected_layers(name))


def test_default_rule_simulates_the_zero2_setups_the_engine_model_covers():
    qwen = resolve_model("qwen2.5-0.5b")
    covered = TrainingSetup(method="full", grad_ckpt=True, parallel="zero2", optimizer="adamw_torch_fused")
    assert estimate(qwen, covered).memory.reserved_rule == "simulated"
    offload = estimate(qwen, covered.model_copy(update={"offload": "optimizer"}))
    assert offload.memory.reserved_rule == "simulated"
    assert ZERO2_SIMULATED_NOTE in offload.assumptions and OFFLOAD_MEASURED_NOTE not in offload.assumptions
    zero3 = estimate(qwen, covered.model_copy(update={"parallel": "zero3"}))
    assert zero3.memory.reserved_rule == "simulated" and ZERO3_SIMULATED_NOTE in zero3.assumptions
    offall = estimate(qwen, covered.model_copy(update={"parallel": "zero3", "offload": "all"}))
    assert offall.memory.reserved_rule == "simulated" and ZERO3_OFFLOAD_SIMULATED_NOTE in offall.assumptions
    assert OFFLOAD_MEASURED_NOTE not in offall.assumptions
    lora = TrainingSetup(method="lora", lora=LoraSpec(rank=16), grad_ckpt=True, parallel="zero2")
    for update in ({}, {"offload": "optimizer"}, {"parallel": "zero3"}, {"parallel": "zero3", "offload": "optimizer"}):
        e = estimate(qwen, lora.model_copy(update=update))
        assert e.memory.reserved_rule == "simulated" and ZERO_LORA_SIMULATED_NOTE in e.assumptions, update
    gemma = resolve_model("gemma-2-2b-it")  # a family no DeepSpeed LoRA history ran: the rules
    for parallel in ("zero2", "zero3"):
        assert estimate(gemma, lora.model_copy(update={"parallel": parallel})).memory.reserved_rule != "simulated"
    offopt = estimate(qwen, covered.model_copy(update={"parallel": "zero3", "offload": "optimizer"}))
    assert offopt.memory.reserved_rule == "simulated" and ZERO3_OFFLOAD_OPTIMIZER_SIMULATED_NOTE in offopt.assumptions
    not_covered = [
        covered.model_copy(update={"grad_ckpt": False}),
        covered.model_copy(update={"optimizer": "adamw_8bit"}),
        covered.model_copy(update={"grad_accum": 2}),
        lora.model_copy(update={"grad_ckpt": False}),
        lora.model_copy(update={"parallel": "zero3", "offload": "all"}),
        lora.model_copy(update={"attn": "eager"}),
        lora.model_copy(update={"lora": LoraSpec(rank=16, dropout=0.0)}),  # no dropout: a forward no history ran
    ]
    for setup in not_covered:
        assert estimate(qwen, setup).memory.reserved_rule != "simulated", setup


@pytest.mark.parametrize("name", ["llama-3.2-1b", "tinyllama-1.1b-chat-v1.0", "qwen2.5-0.5b"])
@pytest.mark.parametrize("parallel, offload", [("zero2", "none"), ("zero2", "optimizer"), ("zero3", "none")])
def test_no_gradient_outlives_its_step_in_the_engines_sequence(name, parallel, offload):
    # every gradient reaches a hook and is freed by the step (tied or untied embedding): what is alive after two steps
    # is what the engine keeps, the same after step 0 as after step 1
    model = resolve_model(name)
    setup = TrainingSetup(method="full", grad_ckpt=True, parallel=parallel, offload=offload,
                          optimizer="adamw_torch_fused")  # fmt: skip
    one, two = (training_sequence(model, setup, _terms(model, setup, None, dict(CALIBRATED_DEFAULTS)), steps=n)
                for n in (1, 2))  # fmt: skip
    assert sum(one.sizes[i] for i in _live(one)) == sum(two.sizes[i] for i in _live(two))


def test_the_engines_sequence_is_the_hf_trainers_only():
    # no TRL or Liger run with DeepSpeed is recorded: those keep the rules
    qwen = resolve_model("qwen2.5-0.5b")
    for parallel in ("zero2", "zero3"):
        hf = TrainingSetup(method="full", grad_ckpt=True, parallel=parallel, optimizer="adamw_torch_fused")
        assert zero_sequence_applies(qwen, hf)
        for other in (hf.model_copy(update={"stack": "trl"}), hf.model_copy(update={"liger": True})):
            assert not zero_sequence_applies(qwen, other)
            assert estimate(qwen, other).memory.reserved_rule != "simulated"


#: the ZeRO-3 histories with parameters and optimizer offloaded whose allocations carry their streams (stream 1 the
#: all-gather stream, 2 the reduction stream): the two it was read from (2026-12-02), then the zero3-offload hold-out's
#: six (2026-12-03, predicted before they ran: docs/holdout/zero3-offload-compare.txt)
ZERO3_OFFLOAD_HISTORIES = ("h-l1-zero3-full-gc-offall-x1", "h2-q05-zero3-full-gc-offall-x1",
                           "z3o-tiny-zero3-full-gc-offall-x1", "z3o-q15-zero3-full-gc-offall-x1",
                           "z3o-q3-17-zero3-full-gc-offall-x1", "z3o-q3b-zero3-full-gc-offall-x1",
                           "z3o-l1-zero3-full-gc-offall-x1", "z3o-l1-zero3-full-gc-offall-s4096-x1")  # fmt: skip
#: the histories' numbering of the reduction and all-gather streams (the all-gather stream's first allocation is earlier)
RECORDED_REDUCTION_STREAM, RECORDED_GATHER_STREAM = 2, 1


def _pools(sizes: list[int], ops: list[int], streams: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
    """The bytes each stream's segments reserve at the end (a segment belongs to the stream of the request that made
    it; none is released after the last empty_cache), and the most bytes each stream's tensors held at once."""
    from vramplan.memory.allocator.caching import CachingAllocator

    allocator = CachingAllocator(expandable_segments=False, total_memory_bytes=150 * 2**30)
    blocks: list = [None] * len(sizes)
    pools: dict[int, int] = {}
    live: dict[int, int] = {}
    peaks: dict[int, int] = {}
    for op in ops:
        if op == EMPTY_CACHE:
            allocator.empty_cache()
            pools = {0: allocator.reserved} if allocator.reserved else {}
            continue
        tensor = op if op >= 0 else ~op
        stream = streams.get(tensor, 0)
        if op >= 0:
            before = allocator.reserved
            blocks[op] = allocator.malloc(sizes[op], stream)
            pools[stream] = pools.get(stream, 0) + allocator.reserved - before
            live[stream] = live.get(stream, 0) + sizes[op]
            peaks[stream] = max(peaks.get(stream, 0), live[stream])
        else:
            allocator.free(blocks[~op])
            live[stream] -= sizes[~op]
    return pools, peaks


@pytest.mark.parametrize("name", ZERO3_OFFLOAD_HISTORIES)
def test_offloaded_zero3_pools_are_the_recorded_ones(name):
    # each stream's segments to the byte (compute, reduction, all-gather), the compute and reduction streams' most
    # live bytes within 0.05 %, and the whole sequence's live peak (the estimate's allocated) within 1 % of the run's
    doc, run, seq = _history_sequence(name)
    recorded, recorded_peaks = _pools(doc["sizes"], doc["ops"], {i: s for i, s in doc["alloc_streams"]})
    predicted, predicted_peaks = _pools(seq.sizes, seq.ops, seq.streams)
    # (start_cuda's small segment, made before recording, is the one the recorded trace's first small request makes)
    streams = ((0, 0), (REDUCTION_STREAM, RECORDED_REDUCTION_STREAM), (GATHER_STREAM, RECORDED_GATHER_STREAM))
    for ours, theirs in streams:
        assert predicted[ours] == recorded[theirs]
    for ours, theirs in streams[:2]:
        assert abs(predicted_peaks[ours] / recorded_peaks[theirs] - 1) < 0.0005
    # the all-gather stream's frees land late by GPU timing (the lm_head weight's: 2 to 26 allocations in steps 1-2)
    assert 0 <= 1 - predicted_peaks[GATHER_STREAM] / recorded_peaks[RECORDED_GATHER_STREAM] < 0.03
    assert abs(seq.live_peak() / run.measurements.max_allocated_bytes - 1) < 0.01


def test_offloaded_zero3_reduce_copies_each_gradient_back_in_module_order_inside_the_concatenation():
    seq = Sequence()
    plan = ZeroPlan(group_numels=(300,), largest_numel=200, bucket_numel=100, offload=True, stage=3,
                    offload_params=True)  # fmt: skip
    engine = _Offload(plan, [], seq)
    engine._zero_reset()
    for numel in (30, 50):  # one bucket: reduced at the backward's end
        engine.zero_hook(seq.alloc(numel * 2))
    engine.zero_backward_end()
    side = [(op >= 0, seq.sizes[op if op >= 0 else ~op]) for op in seq.ops if (op if op >= 0 else ~op) in seq.streams]
    # the cat (80 bf16), then the later hook's gradient first in module order: its copy, fp64 norm, fp32 cast
    assert side == [(True, 512), (True, 512), (True, 512), (False, 512), (True, 512), (False, 512), (False, 512),
                    (True, 512), (True, 512), (False, 512), (True, 512), (False, 512), (False, 512), (False, 512)]
    assert not _live(seq)


def test_every_offloaded_zero3_run_is_simulated_to_its_measured_reserved_peak():
    # the eleven shipped --offload all runs (the three the rules had at -7.4 / +2.9 / +9.4 %, the hold-out's six, two
    # repeats of 2026-12-04): the compute, reduction and all-gather pools together are the run's reserved peak, to the
    # byte; allocated (the sequence's live peak) within 1 %
    runs = [r for r in load_runs([shipped_runs_dir()]) if r.setup.parallel == "zero3" and r.setup.offload == "all"]
    assert len(runs) == 11
    for run in runs:
        model = resolve_model(run.model_source or run.model)
        memory = estimate(model, run.setup).memory
        assert memory.reserved_rule == "simulated"
        assert memory.peak_reserved_bytes == run.measurements.max_reserved_bytes, run.run_id
        assert abs(memory.peak_allocated_bytes / run.measurements.max_allocated_bytes - 1) < 0.01, run.run_id


def _fake_rank_simulated(name: str):
    """The fake-rank record whose history is `name`, and its estimate, checked to be the simulated one."""
    from conftest import FAKE_RANK_RECORDS

    run = next(r for r in load_runs([FAKE_RANK_RECORDS]) if r.extra.get("memory_snapshot") == f"{name}.pickle")
    shown = estimate(resolve_model(run.model), run.setup).memory
    assert shown.reserved_rule == "simulated"
    return run, shown


def test_a_zero2_partition_per_rank_is_aligned_to_twice_the_world_size_and_rank_0_keeps_whole_parameters():
    from vramplan.memory.allocator.zero_steps import first_rank_pieces, rank_partition

    assert rank_partition(10, 1) == 10 and rank_partition(11, 1) == 12  # nccl_start_alignment_factor 2
    assert rank_partition(10, 4) == 4  # 10 padded to 16 (2 x 4), cut in 4
    # rank 0's first 7 elements: the 5-element parameter whole, 2 of the next (in both ranks' partitions), none after
    assert first_rank_pieces([5, 6, 3], 7) == [(5, 5), (6, 2)]
    assert first_rank_pieces([5, 6, 3], 100) == [(5, 5), (6, 6), (3, 3)]


@pytest.mark.parametrize("name, reserved_within", [("l1-zero2-full-gc-x2", 0.001), ("l1-zero2-full-gc-offopt-x2", 0.001),
                                                   ("l8-zero2-lora-gc-x2", 0.002)])  # fmt: skip
def test_zero2_on_two_ranks_is_simulated_to_its_fake_rank_history(name, reserved_within):
    # rank 0's partition on 2 ranks (fake ranks on one H200, 2026-12-04, the histories the change was read from): the
    # clone, fp32 master and Adam states of its half, grads_in_partition of its parameters whole (1197 of Llama-3.2-1B's
    # 2357 MiB), the norm and host copies of its pieces only
    run, shown = _fake_rank_simulated(name)
    assert run.setup.num_gpus == 2 and run.setup.parallel == "zero2"
    m = run.measurements
    assert abs(shown.peak_reserved_bytes / m.max_reserved_bytes - 1) < reserved_within
    assert abs(shown.peak_allocated_bytes / m.max_allocated_bytes - 1) < 0.001


def test_zero2_ranks_holdout_predicted_before_its_runs_meets_them():
    # zero2-ranks-holdout was predicted at 31d6c00 (ZeRO-2 on 2, 4 and 8 ranks, none of them a setup the sequence was
    # read from), then measured as fake ranks on one H200 (2026-12-04)
    from conftest import fake_holdout_compare

    out = fake_holdout_compare("zero2-ranks-holdout")
    assert "not measured" not in out
    assert "reserved : 8 runs, median |error| 0.1%, worst 0.4%, worst under-prediction -0.4%" in out
    assert "allocated: 8 runs, median |error| 0.0%, worst 0.0%" in out


def test_zero3_over_more_ranks_is_simulated_and_its_holdout_meets_the_runs():
    # read from l1-zero3-full-gc-x2 alone (reserved -18.1 % on the closed forms, +0.06 % simulated); the hold-out of 8
    # was predicted at 8596600 before it ran: to the byte on 6, -2.4 % on Qwen2.5-7B x4 (its step 2 takes a new 1 GiB
    # all-gather segment the sequence's two steps do not), -0.5 % at 4096 tokens
    from conftest import fake_holdout_compare

    run, shown = _fake_rank_simulated("l1-zero3-full-gc-x2")
    assert abs(shown.peak_reserved_bytes / run.measurements.max_reserved_bytes - 1) < 0.001
    out = fake_holdout_compare("zero3-ranks-holdout")
    assert "not measured" not in out
    assert "reserved : 8 runs, median |error| 0.0%, worst 2.4%, worst under-prediction -2.4%" in out
    assert "allocated: 8 runs, median |error| 0.3%, worst 0.4%, worst under-prediction -0.0%" in out


@pytest.mark.parametrize("name, allocated_over", [("l3-zero3-full-gc-offall-x2", 0.01), ("l8-zero3-full-gc-offall-x2", 0.09)])
def test_zero3_with_offloaded_parameters_over_more_ranks_is_simulated_to_its_reserved_peak(name, allocated_over):
    # each offloaded partition staged on the GPU for its all-gather, the init's second copy a partition (read from these
    # two histories, 2026-12-04; the closed forms were +4.3 / +1.1 % reserved). Allocated is the sequence's live bytes,
    # which keep a record_stream'd block until its free completes, as the history's own count does (5.95 GiB on the
    # 8B); torch's max_memory_allocated drops it at the free request (5.49 GiB): 8 % over on the 8B
    run, shown = _fake_rank_simulated(name)
    assert run.setup.offload == "all" and run.setup.num_gpus == 2
    assert abs(shown.peak_reserved_bytes / run.measurements.max_reserved_bytes - 1) < 0.001
    assert 0 <= shown.peak_allocated_bytes / run.measurements.max_allocated_bytes - 1 < allocated_over


@pytest.mark.parametrize("name", ["l8-zero3-lora-gc-x2", "l8-zero3-lora-gc-offopt-x2"])
def test_zero3_lora_over_more_ranks_is_simulated_to_its_fake_rank_history(name):
    # PEFT's LoRA Linear under ZeRO-3 on 2 ranks (read from these two histories, 2026-12-04): lora_A's weight read in
    # the wrapper's forward becomes its external parameter (gathered on the compute stream in step 0, with the wrapper
    # from then on), the frozen weights a recomputation fetches belong to the module in backward until its release;
    # the closed forms were -10.7 / -11.7 % reserved
    run, shown = _fake_rank_simulated(name)
    assert run.setup.method == "lora" and run.setup.num_gpus == 2
    assert abs(shown.peak_reserved_bytes / run.measurements.max_reserved_bytes - 1) < 0.001
    assert 0 <= shown.peak_allocated_bytes / run.measurements.max_allocated_bytes - 1 < 0.01


def test_zero3_lora_ranks_holdout_predicted_before_its_runs_meets_them():
    # zero3-lora-ranks-holdout was predicted at f8a6bb1 (2026-12-04: ZeRO-3 LoRA on 2, 4 and 8 ranks, none of them a
    # setup the sequence was read from), then measured as fake ranks on one H200 (2026-12-06): within 0.04 % reserved on
    # seven, +5.1 % on Llama-3.2-3B at 4096 tokens (over, not under); the closed forms were -17.8 ... +0.2 %
    from conftest import fake_holdout_compare

    out = fake_holdout_compare("zero3-lora-ranks-holdout")
    assert "not measured" not in out
    assert "reserved : 8 runs, median |error| 0.0%, worst 5.1%, worst under-prediction -0.0%" in out
    assert "allocated: 8 runs, median |error| 0.5%, worst 2.4%, worst under-prediction -0.0%" in out
