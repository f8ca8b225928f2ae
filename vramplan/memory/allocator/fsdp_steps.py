"""FSDP2 (``fully_shard`` through accelerate 1.15, full shard, bf16 mixed precision) in the predicted sequence of one
rank: accelerate's prepare, each unit's all-gather and reshard, each unit's reduce-scatter, the optimizer on the shards.

Read from the allocator histories of rank 0 recorded as fake ranks (vramplan/trainer/fake_rank.py; the five with a real
two-GPU counterpart equal it to the byte) in docs/allocator_traces/fake_rank, with their Python stacks for Llama-3.2-1B and
-3B on two ranks (l1-fsdp-full-gc, l3-fsdp-full-gc), and from torch 2.11's ``_fully_shard`` and accelerate's
``utils/fsdp_utils.py::fsdp2_prepare_model``. The units are the decoder layers, an untied model's embedding and the tail
(the final norm with the lm_head, or with the tied embedding; reshard_after_forward False), each parameter sharded on dim
0 into ``world`` chunks, padded to the first chunk's rows:

* prepare (after the Trainer's ``free_memory``), a model loaded on the CPU (``from_pretrained``'s default; the built-in
  trainer's since 2026-12-04, histories fc-*): accelerate upcasts the trainable parameters to fp32 there, and
  ``fully_shard`` moves each unit to the GPU whole, makes its padded fp32 shards and frees the whole tensors
  (``_fsdp_prepare_from_cpu``); a model built on the GPU first (the histories and the three real two-GPU records
  recorded before, ``FsdpPlan.cpu_loaded`` False): every parameter upcast to fp32 on the GPU (the fp32 tensor made,
  the bf16 one freed, in ``named_parameters`` order), every unit's fp32 shards (``_fsdp_param.py``
  ``_init_sharded_param``), then the full fp32 parameters freed in the same unit order;
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
* LoRA (fsdp_lora_plan; histories fc-l1-, fc-l8-fsdp-lora-gc-x2): the embedding and an untied lm_head are units of their
  own and the root holds the final norm, gathered first and kept to the end of the backward (a tied embedding too); the
  all-gather's input holds only the shards cast to bf16 (the fp32 adapters); the copy-out gives the layers bf16 adapters,
  which run lora_no_grad_layer's chain (no autocast copies); the last layer is resharded before the frozen final norm
  (ckpt_backward_layer.FROZEN_FINAL_NORM_*), an untied lm_head gathered after it and resharded after its backward;
  reduce-scatters of the adapters' gradients only.

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
    """One FSDP unit's parameters: each one's elements and its padded shard's elements, in module order; under LoRA
    each one's bytes per element as sharded (`itemsizes`: fp32 adapters, frozen bf16 weights; empty: all fp32) and
    whether it trains (`trainable`; empty: all)."""

    numels: tuple[int, ...]
    shards: tuple[int, ...]
    itemsizes: tuple[int, ...] = ()
    trainable: tuple[bool, ...] = ()

    @property
    def shard_numel(self) -> int:
        return sum(self.shards)

    def itemsize(self, j: int) -> int:
        return self.itemsizes[j] if self.itemsizes else FP32

    @property
    def cast_shard_numel(self) -> int:
        """Elements of the shards the all-gather casts to bf16 into its input buffer (the others go in as they are)."""
        return sum(x for j, x in enumerate(self.shards) if self.itemsize(j) != BF16)

    @property
    def trained_shard_numel(self) -> int:
        """Elements of the shards of the trainable parameters (what the unit reduce-scatters)."""
        return sum(x for j, x in enumerate(self.shards) if not self.trainable or self.trainable[j])


@dataclass(frozen=True)
class FsdpPlan:
    """accelerate's units (utils/fsdp_utils.py::fsdp2_prepare_model): each decoder layer, the embedding of an untied
    model (`embed`), and the tail (the final norm with the lm_head, or with the tied embedding), reshard_after_forward
    False; the root module keeps no parameter."""

    world: int
    layers: tuple[FsdpUnit, ...]
    tail: FsdpUnit
    embed: FsdpUnit | None = None
    #: the model loaded on the CPU (from_pretrained's default, the built-in trainer's since 2026-12-04): fully_shard
    #: moves each unit to the GPU; False: built on the GPU first (the histories recorded before, fsdp_prepare_on_gpu)
    cpu_loaded: bool = True
    #: bytes of the root module's buffers fully_shard moves with the tail (the rotary inv_freq and its original copy)
    buffers: tuple[int, ...] = ()
    #: LoRA (PEFT model): the embedding a unit of its own, tied or not, an untied lm_head another (`lm_head`), and the
    #: root (`tail`) only the final norm
    lora: bool = False
    lm_head: FsdpUnit | None = None


def _unit(groups, world: int) -> FsdpUnit:
    """A unit of `groups` (one TensorGroup per parameter, rows the dim FSDP shards)."""
    return FsdpUnit(tuple(g.numel for g in groups), tuple(-(-g.rows // world) * g.cols for g in groups))


def _rotary_buffers(model) -> tuple[int, ...]:
    """The root's buffers fully_shard moves: the rotary inv_freq and original_inv_freq (histories fc-*: 128 B at 1B)."""
    return (model.head_dim // 2 * FP32,) * 2


def fsdp_plan(model, setup, groups, world: int, cpu_loaded: bool = True) -> FsdpPlan:
    """The units of `model` (its one-GPU trainable `groups`) on `world` ranks."""
    per_layer, head = grouped_by_layer(groups, model.num_layers)
    layers = tuple(_unit(gs, world) for gs in per_layer)
    embed = [g for g in head if g.name == "embed_tokens"]
    rest = [g for g in head if g.name != "embed_tokens"]  # the final norm, an untied lm_head
    buffers = _rotary_buffers(model)
    if model.tie_word_embeddings:
        return FsdpPlan(world, layers, _unit(embed + rest, world), cpu_loaded=cpu_loaded, buffers=buffers)
    embed_unit = _unit(embed, world) if embed else None
    return FsdpPlan(world, layers, _unit(rest, world), embed_unit, cpu_loaded=cpu_loaded, buffers=buffers)


def _frozen_unit(groups, world: int) -> FsdpUnit:
    """A unit of frozen parameters in the model's dtype (bf16)."""
    u = _unit(groups, world)
    return replace(u, itemsizes=(BF16,) * len(u.numels), trainable=(False,) * len(u.numels))


def fsdp_lora_plan(model, setup, world: int, cpu_loaded: bool = True) -> FsdpPlan:
    """The units of a LoRA `setup` (one GPU) on `world` ranks: each decoder layer's parameters in module order (each
    wrapped Linear's frozen bf16 weight, then its fp32 lora_A and lora_B; the norms last), the embedding, an untied
    lm_head, the root's final norm (histories fc-l1-fsdp-lora-gc-x2, fc-l8-fsdp-lora-gc-x2)."""
    from ..trainable import trainable_groups

    full = setup.model_copy(update={"method": "full", "lora": None})
    base_layers, head = grouped_by_layer(trainable_groups(model, full), model.num_layers)
    lora_layers, _ = grouped_by_layer(trainable_groups(model, setup, adapter_itemsize=FP32), model.num_layers)
    layers = []
    for base, adapters in zip(base_layers, lora_layers):
        by_target: dict[str, list] = {}
        for g in adapters:  # lora_A.<target>, lora_B.<target>
            by_target.setdefault(g.name.split(".", 1)[1], []).append(g)
        ordered = []
        for j, g in enumerate(base):  # PEFT's LoRA Linear: base_layer.weight, base_layer.bias, lora_A, lora_B
            ordered.append((g, BF16, False))
            module = g.name.removesuffix(".bias")
            if j + 1 == len(base) or base[j + 1].name != f"{module}.bias":
                ordered += [(a, FP32, True) for a in by_target.get(module, [])]
        u = _unit([g for g, _, _ in ordered], world)
        layers.append(replace(u, itemsizes=tuple(i for _, i, _ in ordered), trainable=tuple(t for _, _, t in ordered)))
    embed = [g for g in head if g.name == "embed_tokens"]
    lm_head = [g for g in head if g.name == "lm_head"]
    norm = [g for g in head if g.name == "norms"]
    return FsdpPlan(
        world, tuple(layers), _frozen_unit(norm, world), _frozen_unit(embed, world), cpu_loaded=cpu_loaded,
        buffers=_rotary_buffers(model), lora=True, lm_head=_frozen_unit(lm_head, world) if lm_head else None,
    )  # fmt: skip


@lru_cache(maxsize=64)
def fsdp_rank_plan(model, setup, cpu_loaded: bool = True) -> FsdpPlan:
    """The units of an FSDP `setup` (its GPU count the world), from its one-GPU trainable groups; one per setup."""
    from ..trainable import trainable_groups

    one = one_gpu_setup(setup)
    if setup.method == "lora":
        return fsdp_lora_plan(model, one, setup.num_gpus, cpu_loaded)
    return fsdp_plan(model, one, trainable_groups(model, one, adapter_itemsize=4), setup.num_gpus, cpu_loaded)


class FsdpSteps:
    fsdp: FsdpPlan | None = None
    #: False in a micro-step before the last of a gradient accumulation: accelerate's ``no_sync`` (FSDP2
    #: ``set_requires_gradient_sync(False)``) keeps each unit's unsharded gradients, reduce-scattered in the last one
    fsdp_sync: bool = True

    def gathers(self, *phase, end: bool = False) -> None:
        """The parameter gathers at `phase` of the step: ZeRO-3's offloaded copies (zero3_offload.py) or FSDP's units."""
        self.zero3_gathers(*phase, end=end)
        if self.fsdp is not None:
            self._fsdp_gathers(*phase, end=end)

    # ------------------------------------------------------------------ prepare
    @property
    def fsdp_lora(self) -> bool:
        """An FSDP rank of LoRA (FsdpPlan.lora: its own units, bf16 adapters in the layers)."""
        return self.fsdp is not None and self.fsdp.lora

    @property
    def fsdp_loads_on_cpu(self) -> bool:
        """The model is loaded on the CPU (LoadSteps.load puts no parameter on the GPU)."""
        return self.fsdp is not None and self.fsdp.cpu_loaded

    def fsdp_prepare(self) -> None:
        """fully_shard's fp32 shards, unit by unit, then the state the training steps use."""
        if self.fsdp is None:
            return
        if self.fsdp.cpu_loaded:
            self._fsdp_prepare_from_cpu()
        elif self.fsdp.lora:
            raise ValueError("FSDP LoRA is modelled loaded on the CPU only (no GPU-built LoRA prepare)")
        else:
            self._fsdp_prepare_on_gpu()
        self.param_groups = self._fsdp_param_groups()
        self.fsdp_ag = None  # the all-gather output not yet freed
        self.fsdp_rs = None  # the reduce-scatter input not yet freed
        self.fsdp_params: dict[object, list[int]] = {}  # unit -> its unsharded parameters
        self.fsdp_grads: list[int] = []
        self.fsdp_unsynced: dict[object, list[int]] = {}  # unit -> its unsharded gradients kept by no_sync

    def _fsdp_prepare_from_cpu(self) -> None:
        """A CPU-loaded model (accelerate upcast it to fp32 there): per unit in fully_shard's order, each parameter moved
        to the GPU whole, then each one's padded fp32 shard, then the whole ones freed (torch 2.11 _fully_shard
        ``_move_states_to_device``, then ``FSDPParam._init_sharded_param``). The root's turn (histories fc-l1-fsdp-full-gc,
        fc-l8-fsdp-full-gc): an untied embedding's unit moved and sharded, the tail's parameters (the final norm first,
        then the lm_head or the tied embedding) moved, their shards, the root's rotary buffers, then the untied
        embedding's whole tensor freed and the tail's in reverse order."""
        plan, seq = self.fsdp, self.seq
        self.fsdp_shards: list[list[int]] = []
        if plan.lora:
            self._fsdp_lora_prepare_from_cpu()
            return
        move_and_shard = self._fsdp_move_and_shard
        for unit in plan.layers:
            seq.free(*move_and_shard(unit))
        embed = move_and_shard(plan.embed) if plan.embed is not None else []
        tail = sorted(zip(plan.tail.numels, plan.tail.shards))  # the final norm's vector first
        tail_whole = move_and_shard(FsdpUnit(tuple(n for n, _ in tail), tuple(x for _, x in tail)))
        for nbytes in plan.buffers:
            seq.alloc(nbytes)  # kept: the model's buffers
        seq.free(*embed, *reversed(tail_whole))

    def _fsdp_move(self, unit: FsdpUnit) -> list[int]:
        """A unit's parameters moved to the GPU whole (fully_shard's ``_move_states_to_device``): their ids."""
        return [self.seq.alloc(n * unit.itemsize(j)) for j, n in enumerate(unit.numels)]

    def _fsdp_shard(self, unit: FsdpUnit) -> None:
        """A unit's padded shards (``FSDPParam._init_sharded_param``), kept as the parameters."""
        self.fsdp_shards.append([self.seq.alloc(block_bytes(n * unit.itemsize(j))) for j, n in enumerate(unit.shards)])

    def _fsdp_move_and_shard(self, unit: FsdpUnit) -> list[int]:
        whole = self._fsdp_move(unit)
        self._fsdp_shard(unit)
        return whole

    def _fsdp_lora_prepare_from_cpu(self) -> None:
        """LoRA's units moved and sharded (histories fc-l1-fsdp-lora-gc-x2, fc-l8-fsdp-lora-gc-x2): each layer as in full
        FT, but the last layer's last trainable tensor (down_proj's lora_B) keeps its whole copy to the end; the root's
        turn: the embedding's unit, an untied lm_head's, the final norm moved, the rotary buffers, the norm's shard, then
        the norm's, the embedding's, the lm_head's and that lora_B's whole tensors freed."""
        plan, seq, move_and_shard = self.fsdp, self.seq, self._fsdp_move_and_shard
        held = []
        for k, unit in enumerate(plan.layers):
            whole = move_and_shard(unit)
            if k == len(plan.layers) - 1 and any(unit.trainable):
                last = max(j for j, t in enumerate(unit.trainable) if t)
                held = [whole.pop(last)]
            seq.free(*whole)
        embed = move_and_shard(plan.embed)
        lm_head = move_and_shard(plan.lm_head) if plan.lm_head is not None else []
        norm = self._fsdp_move(plan.tail)
        for nbytes in plan.buffers:
            seq.alloc(nbytes)  # kept: the model's buffers
        self._fsdp_shard(plan.tail)
        seq.free(*norm, *embed, *lm_head, *held)

    def _fsdp_prepare_on_gpu(self) -> None:
        """A model built on the GPU: accelerate's upcast of every parameter, fully_shard's fp32 shards, the full fp32
        parameters freed."""
        plan, seq = self.fsdp, self.seq
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
        """The unit the forward gathers for the embedding: the embedding's own, or the tail that holds the tied one."""
        return "embed" if self.fsdp.embed is not None else "tail"

    @property
    def _fsdp_embed_resharded(self) -> bool:
        """Whether the embedding's unit is resharded after its forward (and gathered again for the backward): an
        untied model's; a tied LoRA model's stays gathered for the lm_head to the end of the backward."""
        return self.fsdp.embed is not None and not (self.fsdp.lora and self.m.tie_word_embeddings)

    def _fsdp_all_gather(self, k) -> int:
        """The unit's all-gather on its stream: the flat bf16 input of the shards that need a cast made and freed (none
        for a unit already in bf16: its shards go in as they are), the output kept."""
        seq, u = self.seq, self._fsdp_unit(k)
        copy_in = seq.alloc_on(block_bytes(u.cast_shard_numel * BF16), ALL_GATHER_STREAM) if u.cast_shard_numel else None
        out = seq.alloc_on(block_bytes(self.fsdp.world * u.shard_numel * BF16), ALL_GATHER_STREAM)
        if copy_in is not None:
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
            if self.fsdp.lora:  # the root's final norm first (fc-l1-fsdp-lora-gc-x2)
                self._fsdp_copy_out("tail", self._fsdp_all_gather("tail"))
            self._fsdp_copy_out(self._fsdp_first, self._fsdp_all_gather(self._fsdp_first))
        elif where == "fwd" and isinstance(k, int):
            if not end:
                self._fsdp_copy_out(k, self._fsdp_all_gather(k))
            elif k in self.fsdp_params:  # reshard after forward (LoRA's last layer: before the final norm)
                seq.free(*self.fsdp_params.pop(k))
        elif where == "fwd" and k == "head" and not end and self.fsdp.lm_head is not None:  # LoRA: after the norm
            self._fsdp_copy_out("lm_head", self._fsdp_all_gather("lm_head"))
        elif where == "fwd" and k == "head" and end and self.fsdp_ag is not None:  # the last all-gather output
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
                self.fsdp_next = self._fsdp_all_gather("embed") if self._fsdp_embed_resharded else None
        elif where == "bwd" and k == "embed" and not end and self._fsdp_embed_resharded:
            self._fsdp_unshard("embed")
            seq.free(self.fsdp_next)
            self.fsdp_next = None

    def fsdp_after_embedding(self) -> None:
        """An untied embedding's unit resharded once the embedding's output is made (reshard_after_forward)."""
        if self.fsdp is not None and self._fsdp_embed_resharded:
            self.seq.free(*self.fsdp_params.pop("embed"))

    def fsdp_tail_gather(self) -> None:
        """An untied model's tail (the final norm, the lm_head) gathered after the last layer, before the final norm
        (LoRA's lm_head unit: after the final norm, gathers("fwd", "head"))."""
        if self.fsdp is not None and self.fsdp.embed is not None and not self.fsdp.lora:
            self._fsdp_copy_out("tail", self._fsdp_all_gather("tail"))

    def fsdp_reshard_last(self) -> None:
        """LoRA: the last layer resharded as its forward returns, before the final norm runs (fc-l1-fsdp-lora-gc-x2)."""
        self.seq.free(*self.fsdp_params.pop(len(self.fsdp.layers) - 1))

    def fsdp_after_logits(self) -> None:
        """LoRA, once the log_softmax is made and the upcast logits freed: the final norm's output (a frozen lm_head keeps
        no input) and the last all-gather output (the root's post-forward) freed, before the bf16 logits."""
        if not self.fsdp_lora:
            return
        self.seq.free(self.final_ids.pop())
        self.seq.free(self.fsdp_ag)
        self.fsdp_ag = None

    def fsdp_tail_reduce(self) -> None:
        """An untied model's tail reduce-scattered once the final norm's backward made its gradient (the head's
        gradients so far in self.grads), before the last layer's copy-out; LoRA's frozen lm_head is only resharded."""
        if self.fsdp_lora:
            if self.fsdp.lm_head is not None:
                self.seq.free(*self.fsdp_params.pop("lm_head"))
        elif self.fsdp is not None and self.fsdp.embed is not None:
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
        trained = u.trained_shard_numel
        if not trained:  # a frozen unit: resharded, nothing to scatter
            seq.free(*grads)
            return
        if not self.fsdp_sync:  # resharded, its gradients kept unsharded to the last micro-step (fc-l1-...-ga2)
            self.fsdp_unsynced.setdefault(k, []).extend(grads)
            return
        grads = [*self.fsdp_unsynced.pop(k, []), *grads]
        if self.fsdp_rs is not None:
            seq.free(self.fsdp_rs)
        self.fsdp_rs = seq.alloc(block_bytes(self.fsdp.world * trained * BF16))
        if isinstance(k, int):  # a layer's before the scatter, the embedding's and the tail's after it
            seq.free(*grads)
        out = seq.alloc_on(block_bytes(trained * BF16), REDUCE_SCATTER_STREAM)
        self.fsdp_grads.append(seq.alloc_on(block_bytes(trained * FP32), REDUCE_SCATTER_STREAM))
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
        if self.fsdp.lora:  # the root's final norm, gathered since the forward began
            seq.free(*self.fsdp_params.pop("tail"))
        if self.fsdp_rs is not None:
            seq.free(self.fsdp_rs)
        self.fsdp_rs = None
        if self.fsdp_sync:
            self.grads, self.fsdp_grads = self.fsdp_grads, []


def one_gpu_setup(setup):
    """The setup each FSDP rank runs its layers with: one GPU, no engine (the builder's setup and terms)."""
    return setup.model_copy(update={"num_gpus": 1, "parallel": None, "offload": "none"})


def fsdp_layer_profile(setup):
    """The stack profile an FSDP rank's layers run with (`setup`: the one-GPU setup, one_gpu_setup): LoRA's adapters
    in bf16, as FSDP2's MixedPrecisionPolicy gathers them (fc-l1-, fc-l8-fsdp-lora-gc-x2)."""
    from ..stacks import stack_profile

    profile = stack_profile(setup)
    return replace(profile, adapter_itemsize=BF16) if setup.method == "lora" else profile


def fsdp_sequence_applies(model, setup) -> bool:
    """Where the FSDP sequence was read and checked (docs/allocator_traces/fake_rank): in bf16, the hf stack without
    Liger, fused AdamW, no offload, tied or untied embeddings; full fine-tuning with checkpointing of a layer the recorded
    patterns cover (ckpt_backward_layer.py), any number of micro-steps; LoRA with dropout on a checkpointed
    Llama-family layer (lora_no_grad_layer.py), one micro-step."""
    from ..stacks import stack_profile
    from .ckpt_backward_layer import ckpt_backward_applies
    from .lora_no_grad_layer import lora_no_grad_pattern

    if setup.parallel != "fsdp" or setup.num_gpus < 2 or setup.offload != "none":
        return False
    one = one_gpu_setup(setup)
    common = setup.dtype == "bf16" and setup.stack == "hf" and not setup.liger and setup.optimizer == "adamw_torch_fused"
    if setup.method == "lora":  # the layers' bf16 adapters run lora_no_grad_layer's chain; one micro-step measured
        return common and setup.grad_accum == 1 and lora_no_grad_pattern(model, one, False, True, fsdp=True) is not None
    return common and setup.method == "full" and ckpt_backward_applies(model, one, stack_profile(one))


#: the estimate's line where FSDP is simulated
FSDP_SIMULATED_NOTE = (
    "FSDP2 simulated as users and the built-in trainer run it (memory/allocator/fsdp_steps.py): the model loaded on the "
    "CPU, upcast there to fp32 by accelerate, each unit moved to the GPU by fully_shard and sharded; checked on rank 0 of "
    "2, 4 and 8 ranks with torch's fake process group (full FT: 6 CPU-loaded histories to the byte, a hold-out of 6 at "
    "0.00 ... -0.67 % reserved, 20 more of models built on the GPU first, three real 2-GPU runs; LoRA: 4 histories, "
    "allocated to the byte, reserved +0.3 ... +1.4 %)"
)
#: where FSDP keeps the closed forms
FSDP_RULES_NOTE = (
    "FSDP by the closed forms: the model loaded on the CPU (from_pretrained's default), which fully_shard moves to the "
    "GPUs unit by unit (fake ranks of 2026-12-04, CPU-loaded: allocated within -0.8 ... +3.1 %, reserved -4 ... +8 %)"
)
#: FSDP QLoRA's closed forms: where their engine_init phase comes from, and the loading it does not cover
FSDP_QLORA_NOTE = (
    "QLoRA with FSDP: the 4-bit model is quantized on each GPU as from_pretrained loads it and held whole while "
    "accelerate makes its shards (engine_init: {gib:.2f} GiB per GPU; fake rank Llama-3.1-8B x2: 11.09 GiB measured, "
    "+0.9 %); accelerate's fsdp_cpu_ram_efficient_loading, which loads on rank 0 only, is not measured and may need less"
)  # {gib}: the engine_init phase's allocated bytes
