"""DeepSpeed ZeRO-2 on one GPU in the predicted sequence: the engine's init after the load, its gradient hooks in the
backward, the gradient norm and its optimizer step (DeepSpeed 0.19.8, runtime/zero/stage_1_and_2.py, bf16, the
config of vramplan/trainer/deepspeed_config.py: overlap_comm and contiguous_gradients on, HF's "auto" buckets).

Read from the recorded H200 histories docs/allocator_traces/deepspeed/h-q05-zero2-full-gc-x1 (no offload),
h-l3-zero2-full-gc-offopt-x1 and h2-q15-zero2-full-gc-offopt-x1 (offload_optimizer), each allocation on its stream:

* init, per param group (the Trainer's two, weight decay then none; with offload one: the config names DeepSpeed's
  AdamW, which DeepSpeed builds over model.parameters(), vramplan/trainer/deepspeed_config.py, and the offload
  histories free every parameter into one flat buffer in module order): ``empty_cache()`` (:449), the group's flat bf16
  buffer (flatten_dense_tensors_aligned), each parameter freed as it becomes a view of it, the partition's bf16
  ``.clone()`` and its fp32 master copy (``.to(device, fp32)``, :560; host memory with offload), the clone freed; then
  with offload ``temp_grad_buffer_for_gpu_offload`` (the largest parameter's numel in bf16, kept, :659), without it
  initialize_optimizer_states' fp32 zeros of each partition, made and freed (:934-950);
* backward: at the first gradient hook setup_buckets makes the two IPG buffers (reduce_bucket_size bf16 each,
  :3256-3280), freed at the backward's end (independent_gradient_partition_epilogue -> _release_ipg_buffers). Each
  parameter's gradient is made by autograd in bf16; a gradient of at most reduce_bucket_size elements is copied into
  the IPG buffer and freed at once; a larger one stays until the next hook reduces it (extra_large_param_to_reduce,
  :1414-1470). Reducing (reduce_ipg_grads, :2205) copies each gradient, on the reduction stream, into
  ``grads_in_partition`` (all trainable parameters' bf16 gradients, made at the first copy, :2192; freed in the step);
  with offload each gradient is instead cast on the reduction stream to fp64 for its norm
  (set_norm_for_param_grad_in_gpu) and to fp32 for the host copy (async_inplace_copy_grad_to_fp32_buffer_from_gpu),
  both freed at once, and no grads_in_partition is made;
* step without offload: the gradient norm casts each parameter's gradient to fp64 in turn (get_grad_norm_direct, group
  by group), then per group the flat bf16 copy of its gradients and its fp32 ``.grad`` (:3104-3110), the copy freed,
  after the last group's the grads_in_partition, the torch optimizer's step (AdamW: its two fp32 states at step 0),
  the fp32 gradient freed. With offload the step runs on the host.

One GPU, full fine-tuning whose layers run the recorded backward patterns or checkpointed LoRA whose layers run the
recorded no-grad forward (the engine casts PEFT's fp32 adapters to bf16 first, one flat group: the Trainer's no-decay
group is empty), one micro-step (ZeRO-2 accumulates later micro-steps' gradients differently); the rest keeps the
closed-form rules (simulated.simulation_covers).
A mixin of sequence._Builder (it uses seq, zero, loaded_params and OptimizerSteps._param_groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ...specs import ModelSpec, TrainingSetup
from ..deepspeed import reduce_bucket_elements
from ..stacks import stack_profile
from ..trainable import trainable_groups
from .ckpt_backward_layer import ckpt_backward_applies, ckpt_backward_patterns
from .lora_no_grad_layer import lora_no_grad_pattern
from .optimizer_steps import no_decay
from .rules import block_bytes
from .tensors import grouped_by_layer
from .zero3_modules import decoder_modules

BF16, FP32, FP64 = 2, 4, 8
#: DeepSpeed's side stream (overlap_comm's reduction_stream) in Sequence.streams
REDUCTION_STREAM = 1
#: the torch optimizers whose step on one flat fp32 partition makes only their two states (fused AdamW)
ZERO_OPTIMIZERS = ("adamw_torch_fused",)


def _measured_engine_setup(setup: TrainingSetup) -> bool:
    """What every DeepSpeed history ran: full fine-tuning or checkpointed LoRA, one micro-step, fused AdamW, bf16, the
    plain transformers Trainer (the hf stack without Liger: no TRL or Liger run with DeepSpeed is recorded)."""
    method = setup.method == "full" or (setup.method == "lora" and setup.grad_ckpt)
    return (
        method and setup.grad_accum == 1 and setup.dtype == "bf16"
        and setup.optimizer in ZERO_OPTIMIZERS and setup.stack == "hf" and not setup.liger
    )  # fmt: skip


def zero2_applies(setup: TrainingSetup) -> bool:
    """ZeRO-2 with no offload or offload_optimizer on a measured engine setup (_measured_engine_setup), on any number
    of GPUs (rank 0's partition: read from the fake-rank histories docs/allocator_traces/fake_rank/l1-zero2-full-gc-x2,
    l1-zero2-full-gc-offopt-x2 and l8-zero2-lora-gc-x2)."""
    return setup.parallel == "zero2" and setup.offload in ("none", "optimizer") and _measured_engine_setup(setup)


def zero3_applies(setup: TrainingSetup) -> bool:
    """ZeRO-3 on one GPU without offload, with the optimizer offloaded or (full fine-tuning) with everything offloaded,
    on a measured engine setup (zero3_steps.py, zero3_offload.py); over more GPUs too (each fetch an all-gather into new
    buffers, an offloaded partition staged on the GPU first: zero3_fetch.py; read from l1-zero3-full-gc-x2, for LoRA
    l8-zero3-lora-gc-x2 and -offopt-x2, with offloaded parameters l3- and l8-zero3-full-gc-offall-x2)."""
    return (
        setup.parallel == "zero3" and setup.offload in ("none", "optimizer", "all")
        and (setup.method == "full" or setup.offload != "all")
        and _measured_engine_setup(setup)
    )  # fmt: skip


def zero_engine_applies(setup: TrainingSetup) -> bool:
    """zero2_applies or zero3_applies: a DeepSpeed engine the sequence can model."""
    return zero2_applies(setup) or zero3_applies(setup)


@lru_cache(maxsize=64)
def gather_stream_covers(model: ModelSpec) -> bool:
    """Whether zero3_modules.decoder_modules describes the model's hooked modules (a plain Llama / Qwen2 / Qwen3 decoder:
    what ZeRO-3's offloaded parameters' all-gather stream needs); kept per model (building them takes ~1 ms, and an
    estimate asks several times)."""
    try:
        decoder_modules(model)
    except NotImplementedError:
        return False
    return True


def zero_sequence_applies(model: ModelSpec, setup: TrainingSetup) -> bool:
    """Whether the sequence models the setup's DeepSpeed engine: zero_engine_applies, and the layers run as recorded:
    full fine-tuning's backward patterns as they would without the engine (ckpt_backward_layer.py), LoRA's no-grad
    forward (lora_no_grad_layer.py, with its layers' summary backward); with offloaded ZeRO-3 parameters
    gather_stream_covers too."""
    if not zero_engine_applies(setup) or (setup.offload == "all" and not gather_stream_covers(model)):
        return False
    if setup.method == "lora":
        return lora_no_grad_pattern(model, setup, stack_profile(setup).liger, True) is not None
    plain = setup.model_copy(update={"parallel": None})
    if not ckpt_backward_applies(model, plain, stack_profile(plain)):
        return False
    layers, head = grouped_by_layer(trainable_groups(model, plain), model.num_layers)
    return ckpt_backward_patterns(model, layers, head) is not None


@dataclass(frozen=True)
class ZeroPlan:
    """The engine's sizes: each param group's elements (decay, then none; with offload one group; the flat buffers
    and partitions), the largest parameter's, the IPG bucket's, whether the optimizer is offloaded, the ZeRO
    stage (3: zero3_steps.py), whether ZeRO-3's parameters are offloaded too (zero3_offload.py), whether the trainable
    parameters are LoRA adapters (PEFT's fp32 ones: ZeRO-2's engine casts them to bf16 before flattening them, ZeRO-3's
    keeps them fp32) and the bytes per element of the gradients the hooks get."""

    group_numels: tuple[int, ...]
    largest_numel: int
    bucket_numel: int
    offload: bool
    stage: int = 2
    offload_params: bool = False
    adapters: bool = False
    grad_itemsize: int = BF16
    #: whether each group of group_numels is the no-decay one (offload's single group frees every parameter)
    group_no_decay: tuple[bool, ...] = (False, True)
    #: the data-parallel world size (the sequence is rank 0's)
    ranks: int = 1

    @property
    def partitions(self) -> tuple[int, ...]:
        """Each group's partition per rank (rank_partition)."""
        return tuple(rank_partition(n, self.ranks) for n in self.group_numels)


def rank_partition(numel: int, ranks: int) -> int:
    """A ZeRO-2 group's elements per rank: its flat buffer aligned to nccl_start_alignment_factor (2) x the world size
    (stage_1_and_2.py:441, flatten_dense_tensors_aligned), cut into equal parts (get_data_parallel_partitions)."""
    return -(-numel // (2 * ranks)) * 2


def partition_bytes(nbytes: int, itemsize: int, ranks: int) -> int:
    """Rank 0's ZeRO-3 partition of a tensor of `nbytes` (ds_tensor: its elements / ranks, rounded up, block-rounded);
    on one GPU the tensor itself."""
    return nbytes if ranks == 1 else block_bytes(-(-nbytes // (itemsize * ranks)) * itemsize)


def first_rank_pieces(numels: list[int], part: int) -> list[tuple[int, int]]:
    """Rank 0's params_in_partition of a group whose parameters have `numels` elements, in order: each as (its
    elements, those inside the rank's first `part` elements); a parameter across the boundary is in both ranks'."""
    out, start = [], 0
    for n in numels:
        if start >= part:
            break
        out.append((n, min(n, part - start)))
        start += n
    return out


def zero_plan(model: ModelSpec, setup: TrainingSetup) -> ZeroPlan:
    groups = trainable_groups(model, setup)
    undecayed = sum(g.params for g in groups if no_decay(g))
    total = sum(g.params for g in groups)
    offload = setup.offload in ("optimizer", "all")
    groups_ = [(False, total)] if offload else [(False, total - undecayed), (True, undecayed)]
    kept = [(nd, n) for nd, n in groups_ if n]  # (LoRA's adapters all decay: the Trainer's empty group makes no buffers)
    return ZeroPlan(
        group_numels=tuple(n for _, n in kept), group_no_decay=tuple(nd for nd, _ in kept),
        largest_numel=max(g.numel for g in groups),
        bucket_numel=reduce_bucket_elements(model), offload=offload, stage=3 if setup.parallel == "zero3" else 2,
        offload_params=setup.offload == "all", adapters=setup.method == "lora",
        grad_itemsize=FP32 if setup.method == "lora" and setup.parallel == "zero3" else BF16, ranks=setup.num_gpus,
    )  # fmt: skip


def _flat_bytes(numel: int, ranks: int = 1) -> int:
    """A group's flat bf16 buffer (flatten_dense_tensors_aligned), aligned to nccl_start_alignment_factor 2 x ranks."""
    return block_bytes(rank_partition(numel, ranks) * ranks * BF16)


class ZeroSteps:
    def zero_init(self) -> None:
        """The engine's init after the Trainer's free_memory() (module docstring; ZeRO-3: Zero3Steps.zero3_init)."""
        seq, z = self.seq, self.zero
        if z.stage == 3:
            return self.zero3_init()
        one_group = len(z.group_numels) == 1
        params = self.loaded_params
        if z.adapters:  # the engine's module.bfloat16(): each fp32 adapter replaced by its bf16 copy
            adapters = self.adapter_ids
            params = [(i, False) for i in seq.replace_all([seq.sizes[i] // 2 for i in adapters], adapters)]
        for undecayed, numel, part in zip(z.group_no_decay, z.group_numels, z.partitions):
            seq.empty_cache()
            seq.alloc(_flat_bytes(numel, z.ranks))
            seq.free(*[i for i, nd in params if one_group or nd == undecayed])
            clone = seq.alloc(block_bytes(part * BF16))  # rank 0's partition's .clone()
            if not z.offload:  # the fp32 master, kept
                seq.alloc(block_bytes(part * FP32))
            seq.free(clone)
        if z.offload:
            seq.alloc(block_bytes(z.largest_numel * BF16))
        else:
            seq.free(*[seq.alloc(block_bytes(n * FP32)) for n in z.partitions])
        self._zero_reset()

    def _zero_pieces(self) -> list[list[tuple[int, int]]]:
        """Rank 0's params_in_partition per group (first_rank_pieces): with offload the one group over
        model.parameters() in module order (embed_tokens, each layer's tensors, the final norm, lm_head), else the
        Trainer's two param groups (OptimizerSteps._param_groups)."""
        z = self.zero
        if z.offload and len(z.group_numels) == 1:
            head = {g.name: g for g in self.head_groups}
            order = [head[n] for n in ("embed_tokens",) if n in head] + [g for gs in self.layer_groups for g in gs]
            groups = [order + [head[n] for n in ("norms", "lm_head") if n in head]]
        else:
            groups = [gs for gs in self._param_groups() if gs]
        numels = [[g.numel for g in gs for _ in range(g.count)] for gs in groups]
        return [first_rank_pieces(ns, part) for ns, part in zip(numels, z.partitions)]

    def _zero_reset(self) -> None:
        self.zero_ipg: list[int] = []
        self.zero_pending: int | None = None
        self.zero_elements = 0
        self.zero_numels: list[int] = []  # the bucket's gradients' elements, in the order their hooks ran
        self.zero_partition: int | None = None
        self.zero_hooked = 0  # the elements whose hooks ran this backward
        self.zero_piece: dict[int, int] = {}  # a gradient (tensor id) -> its elements in rank 0's partition

    def zero_hook(self, grad: int) -> None:
        """A parameter's gradient `grad` (a tensor id) reached its hook: into the IPG bucket (freed) or kept until the
        next hook reduces it."""
        seq, z = self.seq, self.zero
        numel = seq.sizes[grad] // z.grad_itemsize
        if z.offload and z.stage == 2:  # (_zero_copy_out's host copies: rank 0's elements of the gradient)
            # hooks run in about the reverse of parameter order: this one's parameter ends where the hooked ones begin
            end = sum(z.group_numels) - self.zero_hooked
            self.zero_piece[grad] = max(0, min(end, z.partitions[0]) - (end - numel))
            self.zero_hooked += numel
        if not self.zero_ipg and z.stage == 2:  # setup_buckets (ZeRO-3's bucket is made at init)
            self.zero_ipg = [seq.alloc(block_bytes(z.bucket_numel * BF16)) for _ in range(2)]
        if self.zero_elements + numel > z.bucket_numel:
            self._zero_reduce()
        if numel > z.bucket_numel:
            self.zero_pending = grad
        else:
            self._zero_copy_out(grad)
            seq.free(grad)
        self.zero_elements += numel
        self.zero_numels.append(numel)

    def _zero_copy_out(self, grad: int) -> None:
        """ZeRO-2 with offload, the copy to the host's fp32 partition: the fp64 norm copy and the fp32 cast on the
        reduction stream, each freed at once (made when the gradient is reduced; modelled at its hook). ZeRO-3 makes
        its copies when the bucket is reduced (zero3_offload.py Zero3OffloadSteps.zero3_offload_copies)."""
        if self.zero.offload and self.zero.stage == 2:
            seq, numel = self.seq, self.zero_piece.pop(grad)  # (only rank 0's elements of it: grad_position)
            if numel:
                seq.free(seq.alloc_on(numel * FP64, REDUCTION_STREAM))
                seq.free(seq.alloc_on(numel * FP32, REDUCTION_STREAM))

    def _zero_reduce(self) -> None:
        """reduce_ipg_grads: the bucket's gradients copied into grads_in_partition (made at the first copy), the
        extra-large one (pending) freed."""
        seq, z = self.seq, self.zero
        if z.stage == 3:
            self.zero3_concat()
        elif self.zero_elements and not z.offload and self.zero_partition is None:  # every parameter in rank 0's
            # partition, whole (:2192); on one GPU all of them
            whole = sum(n for pieces in self._zero_pieces() for n, _ in pieces) if z.ranks > 1 else sum(z.group_numels)
            self.zero_partition = seq.alloc_on(block_bytes(whole * BF16), REDUCTION_STREAM)
        if self.zero_pending is not None:
            self._zero_copy_out(self.zero_pending)
            seq.free(self.zero_pending)
            self.zero_pending = None
        self.zero_elements = 0
        self.zero_numels = []

    def zero_norm_copies(self) -> None:
        """get_grad_norm_direct (ZeRO-2 and ZeRO-3 alike): an fp64 copy of each gradient in turn
        (``g.data.double().norm(2)``), made and freed, in parameter-group order; over more ranks ZeRO-2's of each
        piece of rank 0's partition (averaged_gradients), ZeRO-3's of each parameter's partition."""
        seq, z = self.seq, self.zero
        if z.ranks > 1 and z.stage == 2:
            numels = [piece for pieces in self._zero_pieces() for _, piece in pieces]
        else:
            numels = [-(-g.numel // z.ranks) for group in self._param_groups() for g in group for _ in range(g.count)]
        for n in numels:
            seq.free(seq.alloc(block_bytes(n * FP64)))

    def zero_backward_end(self) -> None:
        """independent_gradient_partition_epilogue: the last bucket reduced, the IPG buffers freed."""
        self._zero_reduce()
        self.seq.free(*self.zero_ipg)
        self.zero_ipg = []

    def zero_step(self, first: bool) -> None:
        """The gradient norm and the optimizer step (module docstring); nothing on the GPU with offload. ZeRO-3:
        Zero3Steps.zero3_step."""
        seq, z = self.seq, self.zero
        if z.stage == 3:
            return self.zero3_step(first)
        if not z.offload:
            self.zero_norm_copies()
            for k, part in enumerate(z.partitions):  # rank 0's partition of each group
                flat = seq.alloc(block_bytes(part * BF16))
                grad = seq.alloc(block_bytes(part * FP32))
                seq.free(flat)
                if k == len(z.partitions) - 1:
                    seq.free(self.zero_partition)
                if first:  # AdamW's exp_avg and exp_avg_sq, kept
                    seq.alloc_all([block_bytes(part * FP32)] * 2)
                seq.free(grad)
        self._zero_reset()
