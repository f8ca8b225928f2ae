"""DeepSpeed ZeRO-3 with parameters and optimizer offloaded to the CPU (``offload_param`` and ``offload_optimizer``,
pinned) on one GPU in the predicted sequence (DeepSpeed 0.19.8, bf16, the config of vramplan/trainer/deepspeed_config.py):
the compute and reduction streams' allocations below, and the all-gather stream's parameter copies as the coordinator
makes them (zero3_fetch.py), placed phase by phase (gather_phases, Zero3OffloadSteps.zero3_gathers). Each stream keeps
a pool of its own (the allocator's get_free_block returns no block of another stream).

Read from the recorded H200 histories docs/allocator_traces/deepspeed/h-l1-zero3-full-gc-offall-x1 (Llama-3.2-1B) and
h2-q05-zero3-full-gc-offall-x1 (Qwen2.5-0.5B), each allocation on its stream, and DeepSpeed's source:

* load: ``zero.Init`` (HF's from_pretrained under a ZeRO-3 config) makes each parameter on the GPU and partitions it
  to host memory at once: each parameter made and freed, in module order; a tied lm_head's own weight as without
  offload (LoadSteps.load);
* engine init: two passes over the parameters in module order, each parameter made twice and both freed (both
  histories; which calls make them was not read from the source), the first pass also at the tied lm_head, then
  ``empty_cache`` (defragment, runtime/zero/utils.py:215-243) between them; the IPG bucket (reduce_bucket_size bf16,
  stage3.py:780-784) made before the second and kept. No flat bf16 buffer, fp32 partition or gradient buffer on the
  GPU: all three are host memory with offload (stage3.py:333, :791-793);
* backward: the gradients' hooks as without offload (zero_steps.ZeroSteps.zero_hook); reducing a bucket
  (__reduce_and_partition_ipg_grads, :1648) concatenates its gradients on the reduction stream when it holds more than
  one (reduce_scatter_coalesced's ``torch.cat``), then partition_grads (:2006-2050) takes them in ds_id (module)
  order, each: the host partition copied back to the GPU (``grad_buffer.to(device)``, bf16), its norm through fp64
  copies of at most 250M elements (``_constant_buffered_norm2``, :1958-1964), its fp32 cast for the host's fp32
  gradient (``_offload_grad_partition_at_boundary``, :1443-1457), each freed before the next gradient's; the
  concatenation freed after the last;
* step: DeepSpeed's CPU Adam on the host; nothing on the GPU.

A mixin of sequence._Builder (it uses seq, zero, m and ZeroSteps' hook state).
"""

from __future__ import annotations

from functools import lru_cache

from ...models.params import param_counts
from ...specs import ModelSpec
from ..adapters import lora_targets
from ..deepspeed import NORM_CHUNK_ELEMENTS
from .rules import block_bytes
from .zero3_fetch import allgather_ops_at, head_free_lag, hf_zero3_events
from .zero_steps import BF16, FP32, FP64, REDUCTION_STREAM, partition_bytes


def _twice(seq, sizes: list[int], ranks: int = 1) -> None:
    """Each parameter made twice, the second freed first, then the first; over more ranks the second is rank 0's
    partition (fake-rank history l8-zero3-full-gc-offall-x2)."""
    for n in sizes:
        if n:
            a = seq.alloc(n)
            b = seq.alloc(partition_bytes(n, BF16, ranks))
            seq.free(b, a)


class Zero3OffloadSteps:
    def zero3_offloaded_load(self, layers, final_norm: int) -> None:
        """zero.Init at load: each parameter made and partitioned to the host (module docstring). `layers`: the
        builder's layer_weight_tensors; the embedding and an untied lm_head from the model's counts (bf16)."""
        seq, t = self.seq, self.t
        counts = param_counts(self.m)
        embed, lm_head = block_bytes(counts["embed_tokens"] * BF16), block_bytes(counts["lm_head"] * BF16)
        sizes = [embed, *[x for layer in layers for _, pieces, _ in layer for x in pieces], final_norm]
        if lm_head:
            sizes.append(lm_head)
        for n in sizes:
            if n:
                seq.free(seq.alloc(n))
        if not lm_head and t.tied_load:
            seq.free(seq.alloc(t.tied_load))
        self.offloaded_sizes = [n for n in sizes if n]
        self.offloaded_tied = not lm_head and bool(t.tied_load)

    def zero3_offload_init(self) -> None:
        """The engine's init (module docstring)."""
        seq, z = self.seq, self.zero
        sizes = self.offloaded_sizes
        _twice(seq, sizes + ([sizes[0]] if self.offloaded_tied else []), z.ranks)
        seq.empty_cache()
        seq.alloc(block_bytes(z.bucket_numel * BF16))  # the IPG bucket, kept
        _twice(seq, sizes, z.ranks)
        self.zero3_step_index = 0
        self.zero3_blocks: dict[int, int] = {}  # the coordinator's block -> the sequence's tensor
        self._zero_reset()

    def zero3_gathers(self, *phase, end: bool = False) -> None:
        """The all-gather stream's ops of the current step's `phase` (gather_phases; nothing without offloaded
        parameters): the part up to its most gathered bytes where the phase begins, the rest (`end`) where it ends."""
        z = self.zero
        if z is None or not (z.offload_params or (z.stage == 3 and z.ranks > 1)):
            return
        seq, blocks = self.seq, self.zero3_blocks
        steps = gather_phases(self.m, z.ranks, zero3_lora_key(self.m, self.s), z.offload_params)
        head, tail = steps[min(self.zero3_step_index, len(steps) - 1)].get(phase, ((), ()))
        for alloc, block, nbytes in tail if end else head:
            if alloc:
                blocks[block] = seq.alloc_on(nbytes, GATHER_STREAM)
            else:
                seq.free(blocks.pop(block))

    def zero3_offload_copies(self) -> None:
        """partition_grads of the bucket being reduced (module docstring): per gradient, in module order (the hooks ran
        in reverse), its GPU copy, fp64 norm chunks and fp32 cast on the reduction stream."""
        seq, ranks = self.seq, self.zero.ranks
        for whole in reversed(self.zero_numels):  # (over more ranks each gradient's partition: rank 0's elements)
            numel = -(-whole // ranks)
            copy = seq.alloc_on(block_bytes(numel * BF16), REDUCTION_STREAM)
            for start in range(0, numel, NORM_CHUNK_ELEMENTS):
                chunk = min(NORM_CHUNK_ELEMENTS, numel - start)
                seq.free(seq.alloc_on(block_bytes(chunk * FP64), REDUCTION_STREAM))
            seq.free(seq.alloc_on(block_bytes(numel * FP32), REDUCTION_STREAM))
            seq.free(copy)


#: the lm_head weight's free after lm_head's backward completes this many all-gather allocations late (record_stream:
#: the compute stream is still in the vocabulary-sized matmuls), by GPU timing: 1 in step 0 of every history, 2 to 26
#: in steps 1 and 2 of the tied models' (zero3_fetch.allgather_ops). The least of those; 4 (the first history's) put
#: the untied TinyLlama's pool 20 MiB over its hold-out run (+0.5 %), where the free did not lag after step 0
HEAD_FREE_LAGS = (1, 2, 2)


#: the sequence's stream for the all-gather stream's parameter copies (REDUCTION_STREAM is 1)
GATHER_STREAM = 2


def _phase(where: str, state: dict) -> tuple:
    """The builder's phase of a coordinator event from its hook (Event.where): ("fwd", "pre") up to the first layer,
    ("fwd", k) / ("bwd", k) a decoder layer's forward / backward (its recomputation too), ("fwd", "head") after the
    layers, ("bwd", "head") the lm_head and final norm's backward, ("bwd", "embed") after layer 0's, ("step",)."""
    kind, _, rest = where.partition(":")
    if kind in ("leftovers",):
        return ("bwd", "embed")
    if kind in ("optimizer",):
        return ("step",)
    module = rest.removesuffix(":recompute")
    backward = kind in ("pre_bwd", "post_bwd", "hold", "unhold") or rest.endswith(":recompute")
    if module.startswith("model.layers."):
        k = int(module.split(".")[2])
        state["layer_seen", backward] = True
        return ("bwd" if backward else "fwd", k)
    if backward:
        return ("bwd", "embed" if state.get(("layer_seen", True)) else "head")
    return ("fwd", "head" if state.get(("layer_seen", False)) else "pre")


def zero3_lora_key(model: ModelSpec, setup) -> tuple[int, frozenset] | None:
    """zero3_modules.decoder_modules' `lora` for the setup: its rank and the wrapped Linears' names (None: full)."""
    if setup.method != "lora":
        return None
    return setup.lora.rank, frozenset(s.name.rsplit(".", 1)[-1] for s in lora_targets(model, setup.lora))


@lru_cache(maxsize=32)
def gather_phases(model: ModelSpec, world: int = 1, lora: tuple[int, frozenset] | None = None,
                  offloaded: bool = False) -> tuple[dict[tuple, tuple[list, list]], ...]:
    """Per step (0, 1, 2), the all-gather stream's copies and frees (zero3_fetch.py) by the builder's phase (_phase):
    [(allocate?, block, bytes)] in order, over `world` ranks, cut where the builder places them (_split_at_most). The
    same for every batch, sequence length and GPU, so kept per model (the coordinator's state machine takes 50-170
    ms)."""
    out = []
    for step, events in enumerate(hf_zero3_events(model, world=world, lora=lora, offloaded=offloaded)):
        staged = {e.block for e in events if e.param.startswith("staged:")}
        state: dict = {}
        phase_of = [_phase(e.where, state) for e in events]
        phases: dict[tuple, list[tuple[bool, int, int]]] = {}
        for kind, block, nbytes, at in allgather_ops_at(events, head_free_lag(HEAD_FREE_LAGS[min(step, 2)])):
            phases.setdefault(phase_of[at], []).append((kind == "A", block, nbytes))
        out.append({k: _split_at_most(ops, staged) for k, ops in phases.items()})
    return tuple(out)


def _split_at_most(ops: list[tuple[bool, int, int]], transient: frozenset | set = frozenset()) -> tuple[list, list]:
    """A phase's ops cut where the stream holds the most: the builder makes the first part where the phase begins and
    the rest where it ends, so its compute-stream tensors meet the phase's most gathered bytes (never fewer) and the
    stream's own order, hence its pool, stays as the coordinator made it. Frees before the phase's first allocation
    (a release at its first hook: the lm_head's prefetched flat buffer over more ranks) go where it begins, and the
    frees of `transient` blocks right after the cut (offloaded partitions staged for an all-gather) with it."""
    lead = next((k for k, (alloc, _, _) in enumerate(ops) if alloc), len(ops))
    live = best = 0
    cut = lead
    for k, (alloc, _, nbytes) in enumerate(ops):
        live += nbytes if alloc else -nbytes
        if k >= lead and live > best:
            best, cut = live, k + 1
    while cut < len(ops) and not ops[cut][0] and ops[cut][1] in transient:  # a staged partition's free follows it
        cut += 1
    return ops[:cut], ops[cut:]
