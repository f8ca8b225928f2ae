"""reserved_rule "simulated": the reserved peak from replaying the predicted sequence through the allocator model.

No fitted fragmentation constant: the predicted allocation sequence of loading and two optimizer steps
(sequence.py) is replayed through CachingAllocator (caching.py); the reserved peak is the model's
max_memory_reserved, and at that moment it reports the allocated bytes, the free bytes inside segments
and the largest free block. One GPU, DDP (its broadcast and buckets), DeepSpeed on one GPU (zero_steps.py ...) and
FSDP2 full fine-tuning (fsdp_steps.py, one rank); simulation_covers says which. Every stack (hf, trl, each with or without Liger, and Unsloth: its offloaded checkpoints, checkpoint
load and first-backward empty_cache in sequence.py) is simulated from its profile's terms (memory/stacks).
"""

from __future__ import annotations

from dataclasses import replace as _replace

from ...errors import VramplanError
from ...specs import MemoryBreakdown, ModelSpec, TrainingSetup
from .caching import allocation_size, round_size
from .replay import ReplayResult, replay
from .fsdp_steps import fsdp_rank_plan, fsdp_sequence_applies, one_gpu_setup
from .ops import Sequence
from .sequence import training_sequence
from .stack_steps import ddp_bucket_sizes
from .zero_steps import zero_sequence_applies

RESERVED_BY_SIMULATION = "simulated"
SIMULATED_ASSUMPTION = (
    "reserved peak simulated: the predicted allocations of loading and two steps (three with ZeRO-3 offload) replayed "
    "through a model of "
    "torch's CUDACachingAllocator (docs/allocator_simulation.md), not the fitted fragmentation rules"
)
#: the breakdown term of the allocator's whole blocks: torch counts a block it did not split (a large-pool block with at
#: most 1 MiB left over, CUDACachingAllocator.cpp shouldSplit) as allocated in full, so max_memory_allocated exceeds the
#: tensors' bytes (Qwen2.5-3B full FT: 357 MiB, -1.4 % -> -0.0 %); the replay counts it the same way
WHOLE_BLOCKS = "allocator_whole_blocks"
#: the breakdown term of a sharded rank's simulated sequence (FSDP2's units, DeepSpeed ZeRO's partitions on 2 or more
#: GPUs): its own allocator count is the peak allocated, and this term is what it holds beyond (or, negative, short of)
#: the closed-form terms' sum, which mis-time the gathers and partitions. On the 54 multi-rank FSDP (CPU-loaded) and ZeRO
#: fake-rank records (2026-12-06): FSDP's 22 median |error| 0.8 -> 0.0 %, worst +3.2 -> -1.0 %; ZeRO-3's 21 median
#: 0.33 -> 0.29 % (Qwen3-8B LoRA x2 +2.4 -> +0.2 %); ZeRO-2's 11 unchanged
SHARDED_RANK = "allocator_sharded_rank"
#: the reserved rules estimate(reserved_rule=...) accepts: "auto" (the default) simulates every setup the simulation
#: covers (one GPU, no DeepSpeed) and keeps the closed-form rules for the others; "rules" keeps them for every setup
AUTO = "auto"
RESERVED_RULES = (AUTO, "rules", RESERVED_BY_SIMULATION)


def simulation_covers(setup: TrainingSetup, model: ModelSpec | None = None) -> bool:
    """One GPU without a DeepSpeed engine, or DDP (each GPU runs the one-GPU sequence plus its construction's
    broadcast and its Reducer's buckets, stack_steps.py ddp_buckets), or ZeRO-2 / ZeRO-3 on one GPU where zero_steps.py
    / zero3_steps.py / zero3_offload.py model the engine (`model` given), or FSDP2 where fsdp_steps.py models its units
    (`model` given: fsdp_sequence_applies)."""
    if setup.parallel in ("zero2", "zero3"):
        return model is not None and zero_sequence_applies(model, setup)
    if setup.parallel == "fsdp":
        return model is not None and fsdp_sequence_applies(model, setup)
    return setup.parallel == "ddp" or setup.num_gpus == 1


def resolve_reserved_rule(reserved_rule: str, setup: TrainingSetup, model: ModelSpec | None = None) -> str:
    """"rules" or "simulated" for `setup`; raises VramplanError for an unknown rule or a simulation it cannot run."""
    if reserved_rule == AUTO:
        return RESERVED_BY_SIMULATION if simulation_covers(setup, model) else "rules"
    check_reserved_rule(reserved_rule, setup, model)
    return reserved_rule


def check_reserved_rule(reserved_rule: str, setup: TrainingSetup, model: ModelSpec | None = None) -> None:
    if reserved_rule not in RESERVED_RULES:
        raise VramplanError(f"--reserved-rule {reserved_rule}: accepted: {' | '.join(RESERVED_RULES)}")
    if reserved_rule == RESERVED_BY_SIMULATION and setup.parallel in ("zero2", "zero3") and not simulation_covers(
        setup, model
    ):
        raise VramplanError(
            f"--reserved-rule simulated with --num-gpus {setup.num_gpus} --parallel {setup.parallel}: the simulated "
            "sequence has DeepSpeed's engine (ZeRO-2 and ZeRO-3 on any number of GPUs) with checkpointing "
            "of a Llama-family, Qwen2 or Qwen3 model (SDPA), fused AdamW, bf16, one micro-step, the hf stack: full "
            "fine-tuning (ZeRO-2 with no offload or --offload optimizer, ZeRO-3 with any offload) or LoRA with dropout "
            "(ZeRO-2 or ZeRO-3, no offload or --offload optimizer); accepted: such a setup, no --parallel, or "
            "--reserved-rule rules"
        )
    if reserved_rule == RESERVED_BY_SIMULATION and setup.parallel == "fsdp" and not simulation_covers(setup, model):
        raise VramplanError(
            f"--reserved-rule simulated with --num-gpus {setup.num_gpus} --parallel fsdp: the simulated sequence has FSDP2's "
            "units for full fine-tuning (any --grad-accum) or LoRA with dropout (--grad-accum 1) in bf16 with checkpointing "
            "of a Llama-family, Qwen2 or Qwen3 model (SDPA), fused AdamW, no offload, the hf stack; accepted: such a "
            "setup, --parallel ddp, or --reserved-rule auto|rules"
        )


#: replays by (model, setup, workspace, backward transients): the planner asks for one setup on many GPUs
_CACHE: dict[tuple, ReplayResult] = {}
_CACHE_MAX = 512
#: the GPU memory an expandable-segments replay is made with, whatever the GPU's: it sizes only each segment's virtual
#: address range (caching.py address_space, 1.125 x), and with every segment that size (both pools expand) the best-fit
#: choices and the address order are the same on any GPU until one stream's segment outgrows it, i.e. past the GPU's
#: memory, where the setup does not fit anyway. One replay then serves every GPU (the planner's near-miss
#: --expandable-segments tries asked one per GPU: 60 ms each on a 7-8B model). Checked on 143 replays of the shipped
#: histories and the fingerprint grid that fit their GPU: every field equal but one history's largest free block at the
#: peak (a 14B fake rank at 69 of 80 GiB: 15 MiB larger with the wider range); the peaks equal on all
EXPANDABLE_REPLAY_MEMORY_BYTES = 2 * 1024**4


def simulate(model: ModelSpec, setup: TrainingSetup, terms, total_memory_bytes: int) -> ReplayResult:
    """Replay the setup's predicted sequence; `terms` is estimator._Terms (a function of the key's parts)."""
    expandable = setup.expandable_segments
    # DDP's sequence is the same on any number of GPUs above one (each holds everything plus its broadcast's copies
    # and its buckets): one replay for all; on one GPU there are neither
    same = setup.model_copy(update={"num_gpus": 2}) if setup.parallel == "ddp" and setup.num_gpus > 2 else setup
    key = (model, same, terms.workspace, terms.t_bwd)
    if expandable:
        total_memory_bytes = max(total_memory_bytes, EXPANDABLE_REPLAY_MEMORY_BYTES)
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        hit = replay(rank_sequence(model, setup, terms), expandable_segments=expandable,
                     total_memory_bytes=total_memory_bytes)  # fmt: skip
        if setup.parallel == "ddp":
            hit = _at_least_one_gpu_plus_buckets(model, setup, terms, total_memory_bytes, hit)
        _CACHE[key] = hit
    return hit


#: sequences by (model, setup, backward transients), for the GPUs of the other cuBLAS workspace size (the planner asks
#: for every setup on both kinds: a 70B ZeRO-3 sequence takes 20 ms to build, its replay 40 ms); a few, as a 70B
#: sequence holds a few MB
_SEQUENCES: dict[tuple, Sequence] = {}
_SEQUENCES_MAX = 16


def clear_caches() -> None:
    """Forget every replay, sequence and ZeRO-3 coordinator run kept so far (a new process's state: benchmarks, tests)."""
    from . import zero3_fetch, zero3_offload

    _CACHE.clear()
    _SEQUENCES.clear()
    zero3_offload.gather_phases.cache_clear()
    zero3_fetch._multi_rank_events.cache_clear()


def rank_sequence(model: ModelSpec, setup: TrainingSetup, terms) -> Sequence:
    """The predicted sequence of one GPU (rank 0) of `setup`: built, or one built for a GPU of another cuBLAS
    workspace size with the two workspaces' sizes replaced (Sequence.workspace: the only sizes the GPU decides)."""
    key = (model, setup, terms.t_bwd)
    known = _SEQUENCES.get(key)
    if known is not None:
        return with_workspace(known, terms.workspace)
    if setup.parallel == "fsdp":  # one rank: the one-GPU layers (`terms` the one-GPU setup's) and FSDP's units
        seq = training_sequence(model, one_gpu_setup(setup), terms, fsdp=fsdp_rank_plan(model, setup))
    else:
        seq = training_sequence(model, setup, terms)
    if seq.workspace:
        if len(_SEQUENCES) >= _SEQUENCES_MAX:
            del _SEQUENCES[next(iter(_SEQUENCES))]
        _SEQUENCES[key] = seq
    return seq


def with_workspace(seq: Sequence, workspace: int) -> Sequence:
    """`seq` with its cuBLAS workspaces (the forward thread's half first, as sequence.py makes them) `workspace` bytes
    in all; the ops and streams shared."""
    halves = (workspace // 2, workspace - workspace // 2)
    if all(seq.sizes[i] == h for i, h in zip(seq.workspace, halves)):
        return seq
    sizes = list(seq.sizes)
    for i, h in zip(seq.workspace, halves):
        sizes[i] = h
    return _replace(seq, sizes=sizes)


def _at_least_one_gpu_plus_buckets(model, setup: TrainingSetup, terms, total_memory_bytes: int, ddp: ReplayResult):
    """A DDP rank runs the one-GPU sequence plus its Reducer's buckets, so it never needs less than one GPU's replay
    with the buckets in segments of their own. The two replays can differ by more than that: the buckets' segments
    move the addresses that break best fit's ties (addresses.py), and with multi-GiB loss buffers one more or one
    fewer cached segment follows (a 0.5B QLoRA b4 s4096 toy: 9 GB). The planner must never show DDP as a way to need
    less memory per GPU, so the larger is kept."""
    one = setup.model_copy(update={"num_gpus": 1, "parallel": None})
    single = simulate(model, one, _replace(terms, parallel_persistent={}), total_memory_bytes)
    buckets = sum(allocation_size(round_size(x)) for x in ddp_bucket_sizes(terms))  # a segment each
    floor = single.peak_reserved_bytes + buckets
    if ddp.peak_reserved_bytes >= floor:
        return ddp
    return _replace(single, peak_reserved_bytes=floor, allocated_at_peak_bytes=ddp.allocated_at_peak_bytes,
                    free_in_segments_at_peak_bytes=floor - ddp.allocated_at_peak_bytes)  # fmt: skip


def sharded_rank(setup: TrainingSetup) -> bool:
    """Whether the simulated sequence is a sharded rank's own (FSDP2, ZeRO-2 / ZeRO-3 on 2 or more GPUs), not the one-GPU
    sequence whose live peak is the estimator's by construction (sequence.py; DDP adds only its buckets to it)."""
    return setup.num_gpus > 1 and setup.parallel in ("fsdp", "zero2", "zero3")


def simulated_memory(
    model: ModelSpec, setup: TrainingSetup, terms, memory: MemoryBreakdown, total_memory_bytes: int
) -> MemoryBreakdown:
    """`memory` with the simulated reserved peak in place of the closed-form rules' (device peak moves with it), and the
    allocator's own count of allocated bytes where it is higher than the tensors' (WHOLE_BLOCKS), or, on a sharded rank,
    in their place (SHARDED_RANK)."""
    result = simulate(model, setup, terms, total_memory_bytes)
    reserved = result.peak_reserved_bytes
    breakdown, phase, phases = dict(memory.breakdown), memory.peak_phase, memory.phases
    if sharded_rank(setup):
        allocated = result.peak_allocated_bytes
        breakdown[SHARDED_RANK] = allocated - memory.peak_allocated_bytes
    else:
        allocated = max(memory.peak_allocated_bytes, result.peak_allocated_bytes)
        if allocated > memory.peak_allocated_bytes:
            breakdown[WHOLE_BLOCKS] = allocated - memory.peak_allocated_bytes
    return memory.model_copy(
        update={
            "peak_phase": phase,
            "phases": phases,
            "peak_allocated_bytes": allocated,
            "breakdown": breakdown,
            "peak_reserved_bytes": reserved,
            "device_peak_bytes": memory.device_peak_bytes - memory.peak_reserved_bytes + reserved,
            "fragmentation_bytes": reserved - allocated,
            "reserved_rule": RESERVED_BY_SIMULATION,
            "rules_reserved_bytes": memory.peak_reserved_bytes,
            "allocated_at_reserved_peak_bytes": result.allocated_at_peak_bytes,
            "free_in_segments_at_reserved_peak_bytes": result.free_in_segments_at_peak_bytes,
            "largest_free_block_at_reserved_peak_bytes": result.largest_free_block_at_peak_bytes,
        }
    )
