"""FSDP2 (``fully_shard`` through accelerate 1.15, full shard, bf16 mixed precision) in the predicted sequence of one
rank: accelerate's prepare, each unit's all-gather and reshard, each unit's reduce-scatter, the optimizer on the shards.

Read from the allocator histories of rank 0 recorded as fake ranks (vramplan/trainer/fake_rank.py; the five with a real
two-GPU counterpart equal it to the byte) in docs/allocator_traces/fake_rank, with their Python stacks for Llama-3.2-1B and
-3B on two ranks (l1-fsdp-full-gc, l3-fsdp-full-gc), and from torch 2.11's ``_fully_shard`` and accelerate's
``utils/fsdp_utils.py::fsdp2_prepare_model``. The units are the decoder layers, an untied model's embedding and the tail
(the final norm with the lm_head, or with the tied embedding; reshard_after_forward False), each parameter sharded on dim
0 into ``world`` chunks, padded to the first chunk's rows:

* prepare (after the Trainer's ``free_memory``): the model was built on the GPU in bf16 (as the trainer and the shipped
  two-GPU records do); accelerate upcasts each trainable parameter to fp32 (``param.data = param.data.to(float32)``:
  the fp32 tensor made, the bf16 one freed, in ``named_parameters`` order) and keeps the state dict; ``fully_shard``
  makes every unit's fp32 shards (``_fsdp_param.py`` ``_init_sharded_param``: the layers, the embedding, the tail),
  then the full fp32 parameters are freed in the same unit order;
* forward, per unit: the all-gather input (the unit's bf16 shards, flat) and output (``world`` times it) on the
  all-gather stream, the input freed; each parameter's unsharded bf16 tensor on the compute stream (copy-out); the
  previous unit's all-gather output freed only then; after a decoder layer's forward its unsharded parameters are freed
  (reshard_after_forward; an untied embedding's after the embedding's output; an untied model's tail is gathered after
  the last layer and, like a tied one, stays gathered into the backward);
* backward: the last layer's all-gather once the loss's backward has made the logits' gradient; before each layer's
  backward its copy-out, the previous all-gather output freed and the next layer's all-gather (prefetch); after it its
  unsharded parameters freed, the previous reduce-scatter input freed and this unit's made (bf16, ``world`` shards, on
  the compute stream), the layer's bf16 gradients freed, then on the reduce-scatter stream its output (one bf16 shard)
  and the fp32 copy that stays as the unit's sharded gradient, the output freed (the tail's and the embedding's
  gradients only after it); an untied tail right after the final norm's backward, the embedding's unit last, its
  reduce-scatter input freed at the end of the backward;
* optimizer: each parameter's states at step 0 at its shard's fp32 size; zero_grad frees the units' sharded gradients.

A mixin of sequence._Builder (it uses the builder's seq, layer_groups, head_groups, grads and param_groups); the layers'
own forward and backward are the one-GPU sequence's (the builder runs with the one-GPU setup's terms).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from .rules import block_bytes
from .tensors import grouped_by_layer

BF16, FP32 = 2, 4
#: the sequence's streams: FSDP2's all-gather stream and its reduce-scatter stream (their blocks cached apart)
ALL_GATHER_STREAM, REDUCE_SCATTER_STREAM = 1, 2


@dataclass(frozen=True)
class FsdpUnit:
    """One FSDP unit's parameters: each one's elements and its padded shard's elements, in module order."""

    numels: tuple[int, ...]
    shards: tuple[int, ...]

    @property
    def shard_numel(self) -> int:
        return sum(self.shards)


@dataclass(frozen=True)
class FsdpPlan:
    """accelerate's units (utils/fsdp_utils.py::fsdp2_prepare_model): each decoder layer, the embedding of an untied
    model (`embed`), and the tail (the final norm with the lm_head, or with the tied embedding), reshard_after_forward
    False; the root module keeps no parameter."""

    world: int
    layers: tuple[FsdpUnit, ...]
    tail: FsdpUnit
    embed: FsdpUnit | None = None


def _unit(groups, world: int) -> FsdpUnit:
    """A unit of `groups` (one TensorGroup per parameter, rows the dim FSDP shards)."""
    return FsdpUnit(tuple(g.numel for g in groups), tuple(-(-g.rows // world) * g.cols for g in groups))


def fsdp_plan(model, setup, groups, world: int) -> FsdpPlan:
    """The units of `model` (its one-GPU trainable `groups`) on `world` ranks."""
    per_layer, head = grouped_by_layer(groups, model.num_layers)
    layers = tuple(_unit(gs, world) for gs in per_layer)
    embed = [g for g in head if g.name == "embed_tokens"]
    rest = [g for g in head if g.name != "embed_tokens"]  # the final norm, an untied lm_head
    if model.tie_word_embeddings:
        return FsdpPlan(world, layers, _unit(embed + rest, world))
    return FsdpPlan(world, layers, _unit(rest, world), _unit(embed, world) if embed else None)


@lru_cache(maxsize=64)
def fsdp_rank_plan(model, setup) -> FsdpPlan:
    """The units of an FSDP `setup` (its GPU count the world), from its one-GPU trainable groups; one per setup: the
    estimate asks for the prepare and the sequence for the plan."""
    from ..trainable import trainable_groups

    one = one_gpu_setup(setup)
    return fsdp_plan(model, one, trainable_groups(model, one, adapter_itemsize=4), setup.num_gpus)


class FsdpSteps:
    fsdp: FsdpPlan | None = None

    def gathers(self, *phase, end: bool = False) -> None:
        """The parameter gathers at `phase` of the step: ZeRO-3's offloaded copies (zero3_offload.py) or FSDP's units."""
        self.zero3_gathers(*phase, end=end)
        if self.fsdp is not None:
            self._fsdp_gathers(*phase, end=end)

    # ------------------------------------------------------------------ prepare
    def fsdp_prepare(self) -> None:
        """accelerate's upcast of every parameter, fully_shard's fp32 shards, the full fp32 parameters freed."""
        plan, seq = self.fsdp, self.seq
        if plan is None:
            return
        # LoadSteps.loaded_params in module order: the embedding, each layer's parameters, the final norm, the rest
        # (none for the models simulated), an untied lm_head
        ids = [i for i, _ in self.loaded_params if seq.sizes[i]]
        counts = [len(u.numels) for u in plan.layers]
        starts = [1 + sum(counts[:k]) for k in range(len(counts))]
        units = [ids[a : a + n] for a, n in zip(starts, counts)]
        rest = ids[1 + sum(counts) :]
        units += [[ids[0]], rest] if plan.embed is not None else [[ids[0], *rest]]
        fp32 = {}
        for i in ids:  # named_parameters order
            fp32[i] = seq.alloc(seq.sizes[i] // BF16 * FP32)
            seq.free(i)
        shards = [*plan.layers, *([plan.embed] if plan.embed is not None else []), plan.tail]
        self.fsdp_shards = [[seq.alloc(block_bytes(n * FP32)) for n in u.shards] for u in shards]  # kept: the parameters
        for unit in units:  # the layers, the embedding, the tail: fully_shard's order
            seq.free(*[fp32[i] for i in unit])
        self.param_groups = self._fsdp_param_groups()
        self.fsdp_ag = None  # the all-gather output not yet freed
        self.fsdp_rs = None  # the reduce-scatter input not yet freed
        self.fsdp_params: dict[object, list[int]] = {}  # unit -> its unsharded parameters
        self.fsdp_grads: list[int] = []

    def _fsdp_param_groups(self) -> tuple[list, list]:
        """The optimizer's groups (OptimizerSteps._param_groups) with each parameter its fp32 shard."""
        world, memo = self.fsdp.world, {}

        def shard(g):
            if id(g) not in memo:
                memo[id(g)] = replace(g, rows=-(-g.rows // world), itemsize=FP32)
            return memo[id(g)]

        return tuple([shard(g) for g in group] for group in self._param_groups())

    # ------------------------------------------------------------------ gathers
    def _fsdp_unit(self, k):
        return self.fsdp.layers[k] if isinstance(k, int) else getattr(self.fsdp, k)

    @property
    def _fsdp_first(self) -> str:
        """The unit the forward gathers first: the untied embedding, or the tail that holds the tied one."""
        return "embed" if self.fsdp.embed is not None else "tail"

    def _fsdp_all_gather(self, k) -> int:
        """The unit's all-gather on its stream: the flat bf16 input made and freed, the output kept."""
        seq, u = self.seq, self._fsdp_unit(k)
        copy_in = seq.alloc_on(block_bytes(u.shard_numel * BF16), ALL_GATHER_STREAM)
        out = seq.alloc_on(block_bytes(self.fsdp.world * u.shard_numel * BF16), ALL_GATHER_STREAM)
        seq.free(copy_in)
        return out

    def _fsdp_unshard(self, k) -> None:
        """The copy-out: each of unit k's parameters as its unsharded bf16 tensor, on the compute stream."""
        self.fsdp_params[k] = [self.seq.alloc(block_bytes(n * BF16)) for n in self._fsdp_unit(k).numels]

    def _fsdp_copy_out(self, k, gathered: int) -> None:
        """The forward's copy-out, then the previous all-gather output freed; `gathered` (unit k's) is kept."""
        seq = self.seq
        self._fsdp_unshard(k)
        if self.fsdp_ag is not None:
            seq.free(self.fsdp_ag)
        self.fsdp_ag = gathered

    def _fsdp_gathers(self, *phase, end: bool) -> None:
        seq = self.seq
        where, k = (*phase, None)[:2]
        if where == "fwd" and k == "pre" and not end:  # the embedding's unit, before the embedding
            self._fsdp_copy_out(self._fsdp_first, self._fsdp_all_gather(self._fsdp_first))
        elif where == "fwd" and isinstance(k, int):
            if not end:
                self._fsdp_copy_out(k, self._fsdp_all_gather(k))
            else:  # reshard after forward
                seq.free(*self.fsdp_params.pop(k))
        elif where == "fwd" and k == "head" and end:  # the last layer's all-gather output (on its stream)
            seq.free(self.fsdp_ag)
            self.fsdp_ag = None
        elif where == "bwd" and isinstance(k, int) and not end:
            # its copy-out and its own all-gather output freed (the forward frees the one before, a unit late), then
            # the next layer's all-gather (prefetch)
            self._fsdp_unshard(k)
            seq.free(self.fsdp_next)
            if k > 0:
                self.fsdp_next = self._fsdp_all_gather(k - 1)
            else:  # an untied embedding was resharded after its forward
                self.fsdp_next = self._fsdp_all_gather("embed") if self.fsdp.embed is not None else None
        elif where == "bwd" and k == "embed" and not end and self.fsdp.embed is not None:
            self._fsdp_unshard("embed")
            seq.free(self.fsdp_next)
            self.fsdp_next = None

    def fsdp_after_embedding(self) -> None:
        """An untied embedding's unit resharded once the embedding's output is made (reshard_after_forward)."""
        if self.fsdp is not None and self.fsdp.embed is not None:
            self.seq.free(*self.fsdp_params.pop("embed"))

    def fsdp_tail_gather(self) -> None:
        """An untied model's tail (the final norm, the lm_head) gathered after the last layer, before the final norm."""
        if self.fsdp is not None and self.fsdp.embed is not None:
            self._fsdp_copy_out("tail", self._fsdp_all_gather("tail"))

    def fsdp_tail_reduce(self) -> None:
        """An untied model's tail reduce-scattered once the final norm's backward made its gradient (the head's
        gradients so far in self.grads), before the last layer's copy-out."""
        if self.fsdp is not None and self.fsdp.embed is not None:
            head, self.grads = self.grads, []
            self.fsdp_reduce("tail", head)

    def fsdp_backward_start(self) -> None:
        """The last layer's all-gather, once the loss's backward made the logits' gradient (history l1-fsdp-full-gc)."""
        if self.fsdp is not None:
            self.fsdp_grads = []
            self.fsdp_next = self._fsdp_all_gather(len(self.fsdp.layers) - 1)

    # ------------------------------------------------------------------ reduce-scatter
    def fsdp_reduce(self, k, grads: list[int]) -> None:
        """After unit k's backward: its unsharded parameters freed (reshard), the previous reduce-scatter input freed and
        this one's made, the unit's bf16 gradients freed (the embedding's and the tail's only after the scatter), its output and the fp32
        sharded gradient on the reduce-scatter stream (the gradient kept to zero_grad)."""
        seq, u = self.seq, self._fsdp_unit(k)
        seq.free(*self.fsdp_params.pop(k))
        if self.fsdp_rs is not None:
            seq.free(self.fsdp_rs)
        self.fsdp_rs = seq.alloc(block_bytes(self.fsdp.world * u.shard_numel * BF16))
        if isinstance(k, int):  # a layer's before the scatter, the embedding's and the tail's after it
            seq.free(*grads)
        out = seq.alloc_on(block_bytes(u.shard_numel * BF16), REDUCE_SCATTER_STREAM)
        self.fsdp_grads.append(seq.alloc_on(block_bytes(u.shard_numel * FP32), REDUCE_SCATTER_STREAM))
        seq.free(out)
        if not isinstance(k, int):
            seq.free(*grads)

    def fsdp_reduce_root(self) -> None:
        """The embedding's unit reduce-scattered after the embedding's backward (its gradients: the rest of self.grads);
        its input freed when the backward ends; the units' sharded gradients become the ones zero_grad frees."""
        if self.fsdp is None:
            return
        seq = self.seq
        head, self.grads = self.grads, []
        self.fsdp_reduce(self._fsdp_first, head)
        seq.free(self.fsdp_rs)
        self.fsdp_rs = None
        self.grads, self.fsdp_grads = self.fsdp_grads, []


def fsdp_prepare_breakdown(plan: FsdpPlan) -> dict[str, int]:
    """What accelerate's prepare holds at its peak (fsdp_prepare): every parameter upcast to fp32 and every unit's fp32
    shards, the full parameters not freed yet."""
    units = [*plan.layers, plan.tail, *([plan.embed] if plan.embed is not None else [])]
    return {
        "fsdp.prepare.fp32_parameters": sum(block_bytes(n * FP32) for u in units for n in u.numels),
        "fsdp.prepare.fp32_shards": sum(block_bytes(n * FP32) for u in units for n in u.shards),
    }


def one_gpu_setup(setup):
    """The setup each FSDP rank runs its layers with: one GPU, no engine (the builder's setup and terms)."""
    return setup.model_copy(update={"num_gpus": 1, "parallel": None, "offload": "none"})


def fsdp_sequence_applies(model, setup) -> bool:
    """Where the FSDP sequence was read and checked (docs/allocator_traces/fake_rank): full fine-tuning in bf16 with
    checkpointing of a layer the recorded patterns cover (ckpt_backward_layer.py), tied or untied embeddings, the hf stack
    without Liger, fused AdamW, one micro-step, no offload."""
    from ..stacks import stack_profile
    from .ckpt_backward_layer import ckpt_backward_applies

    if setup.parallel != "fsdp" or setup.num_gpus < 2 or setup.offload != "none":
        return False
    one = one_gpu_setup(setup)
    return (
        setup.method == "full" and setup.dtype == "bf16" and setup.stack == "hf" and not setup.liger
        and setup.optimizer == "adamw_torch_fused" and setup.grad_accum == 1
        and ckpt_backward_applies(model, one, stack_profile(one))
    )  # fmt: skip


#: the estimate's line where FSDP is simulated
FSDP_SIMULATED_NOTE = (
    "FSDP2 simulated as the built-in trainer runs it (memory/allocator/fsdp_steps.py): the model built on each GPU in "
    "bf16, upcast there to fp32 by accelerate before fully_shard (its prepare holds the fp32 model and its shards, 4 + 4/n "
    "bytes per parameter); checked on rank 0 of 2, 4 and 8 ranks with torch's fake process group (18 histories, reserved "
    "within 2 MiB, 7 of them a hold-out) and on three real 2-GPU runs"
)
#: where FSDP keeps the closed forms
FSDP_RULES_NOTE = (
    "FSDP by the closed forms: the model loaded on the CPU (from_pretrained's default), which fully_shard moves to the "
    "GPUs unit by unit (not measured)"
)
FSDP_PREPARE_NOTE = (
    "built on each GPU before accelerate's prepare (as the built-in trainer runs it), the model would need {gib:.2f} GiB "
    "per GPU there, the fp32 model and its shards: more than training; simulated with --reserved-rule simulated "
    "(exact on fake ranks of 4 and 8 GPUs)"
)  # {gib}: fsdp_prepare_bytes


def fsdp_prepare_bytes(model, setup) -> int:
    """The prepare peak of an FSDP rank whose model was built on the GPU (fsdp_prepare_breakdown), 0 for other setups."""
    if setup.parallel != "fsdp" or setup.num_gpus < 2:
        return 0
    return sum(fsdp_prepare_breakdown(fsdp_rank_plan(model, setup)).values())
