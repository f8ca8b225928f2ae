"""Per-GPU memory of data-parallel training (memory_model.md section 9). Data parallel throughout: every GPU
runs its own micro-batch, so activations, loss buffers and transients stay as on one GPU; what changes is where
the weights, gradients and optimizer states live, plus communication buffers.

* ddp   (torch DistributedDataParallel): everything replicated; the Reducer allocates contiguous bucket buffers
        covering every trainable gradient at construction (+1x G, persistent; gradient_as_bucket_view=False is the
        default, also in accelerate/Trainer). Before it, the construction broadcasts every parameter from rank 0
        through flat copies of 250 MiB buckets, two in flight (allocator/ddp_broadcast.py): a phase of its own, and
        cached segments in the simulated sequence.
* fsdp  (FSDP2 fully_shard through accelerate 1.15, full shard, bf16 MixedPrecisionPolicy): W, G, S sharded 1/n.
        accelerate upcasts *trainable* low-precision parameters to fp32 before sharding, but not when the model
        holds bitsandbytes 4-bit parameters (utils/fsdp_utils.py::fsdp2_prepare_model). Unsharded bf16 copies
        exist for the unit being computed plus the prefetched one; the tail unit (final norm + lm_head, with the
        embeddings when tied) keeps reshard_after_forward=False, so it stays gathered from the end of forward
        into the start of backward. One unit's bf16 gradients are the reduce-scatter input.
* zero2 / zero3 (DeepSpeed, bf16 mode: the engine runs the model in bf16 and keeps fp32 master partitions):
        deepspeed stage_1_and_2.py::estimate_zero2_model_states_mem_needs = 4P + 16P/n and
        stage3.py::estimate_zero3_model_states_mem_needs = 4 * largest_layer + 18P/n (P trainable, Adam), with
        frozen parameters replicated (ZeRO-2) or sharded (ZeRO-3) in bf16; the fp32 gradients those estimators
        keep are made in the step only, ZeRO-2's from a flattened bf16 copy (deepspeed.py, read from the engine).
* QLoRA with fsdp/zero3: packed 4-bit data stored as bf16 elements (bnb_4bit_quant_storage=bf16) is sharded;
        the QuantState (absmax, code, nested state) is not a parameter and stays replicated.
* CPU offload (setup.offload): the offloaded sharded state leaves the GPU and only the communication and
        gathered-parameter buffers stay: FSDP CPUOffloadPolicy moves parameters, gradients and optimizer states
        ("all"); ZeRO offload_optimizer moves fp32 master weights, gradient partitions and optimizer states
        ("optimizer"), ZeRO-3 offload_param the bf16 parameter partitions too ("all"). This follows DeepSpeed's
        estimators (ZeRO-2 offload: 2P on the GPU; ZeRO-3: 4 x largest layer + 2P/n, or 4 x largest layer),
        plus the segments the side streams cache for their gradient copies (deepspeed.py), measured at world size 1.
"""

from dataclasses import dataclass, field, replace
from functools import lru_cache

from ..errors import VramplanError
from ..models.params import linear_shapes, moe_layers, param_counts
from ..specs import ModelSpec, TrainingSetup
from .allocator import block_bytes
from .allocator.ddp_broadcast import broadcast_peak_bytes, ddp_flat_copies
from .constants import MIB
from .deepspeed import (
    zero2_engine_init,
    zero2_ipg_buffers,
    zero2_offload_gpu_grad_buffer,
    zero2_offload_init_reserved,
    zero2_offload_stream_pool,
    zero2_step_transient,
    zero3_gathers_copy,
    zero3_gradient_partitions,
    zero3_gather_stream_pool,
    zero3_held_parameters,
    zero3_ipg_buffer,
    zero3_offload_stream_pool,
    zero3_step_fp32_gradient,
)
from .optimizer import (
    gradient_bytes,
    optimizer_state_bytes,
    optimizer_step_transient_bytes,
)
from .trainable import TensorGroup

#: NCCL communicator buffers, outside torch's allocator (nvidia-smi only): "order of 100s MiB per process"
#: (memory_model.md sections 7 and 9). H200 x2 runs (vramplan/runs/shipped/h200, DDP and FSDP): device peak -
#: reserved = 1.57 GiB in all six, vs the 0.75 GiB CUDA context of one-GPU runs -> ~0.82 GiB of NCCL per process
NCCL_BUFFERS_BYTES = 832 * MIB
#: DeepSpeed at world size 1, outside the allocator beyond the CUDA context (device peak - reserved - 763.56 MiB, the
#: context every plain H200 run shows): 950 MiB on all 20 ZeRO-2 runs of 2026-12-02..04 (full FT with the optimizer
#: offloaded 38-80 MiB more), 558 MiB on all 15 ZeRO-3 runs without parameter offload (LoRA 2 MiB more, the
#: optimizer offloaded 6-24 MiB more), 570-634 MiB with --offload all (growing with the parameters); otherwise constant in
#: each, whatever the model (which of DeepSpeed's set-ups holds it was not read from the source). Several GPUs keep
#: NCCL_BUFFERS_BYTES (not measured with DeepSpeed)
DEEPSPEED_ONE_GPU_OUTSIDE_BYTES = {"zero2": 950 * MIB, "zero3": 558 * MIB}
#: FSDP2 gathers and reduce-scatters on their own CUDA streams and the caching allocator keeps freed blocks per
#: stream, so reserved exceeds allocated by more than on one GPU: H200 x2 FSDP full FT runs (llama-3.2-1b/3b,
#: llama-3.1-8b; vramplan/runs/shipped/h200) measured reserved - allocated = 15-31 % of allocated vs ~4 % on one GPU
FSDP_EXTRA_FRAGMENTATION = 0.10
#: bytes per element of what FSDP/DeepSpeed gather and reduce under bf16 mixed precision
BF16 = 2
FP32 = 4
#: DeepSpeed's fp32 master copy of each trainable parameter (stage_1_and_2.py / stage3.py)
MASTER_BYTES_PER_PARAM = FP32

SHARDED = ("fsdp", "zero3")


@dataclass(frozen=True)
class ParallelTerms:
    """Per-GPU terms of one data-parallel strategy, in bytes. Names become breakdown keys."""

    weights: dict[str, int]
    states: int
    managed_states: int
    grads: int
    embedding_grad: int
    opt_transient: int
    #: alive in every phase
    persistent: dict[str, int] = field(default_factory=dict)
    #: gathered parameters alive at the end of forward / start of backward, and during a layer's backward
    gather_forward: dict[str, int] = field(default_factory=dict)
    gather_backward: dict[str, int] = field(default_factory=dict)
    #: gradient communication buffers alive while layers run backward
    reduce: dict[str, int] = field(default_factory=dict)
    outside_allocator_bytes: int = NCCL_BUFFERS_BYTES
    #: added to the allocator's fragmentation fraction (reserved / allocated - 1)
    extra_fragmentation: float = 0.0
    #: segments cached for side streams (reserved, never reused by the compute stream's requests)
    stream_pools: dict[str, int] = field(default_factory=dict)
    #: what the engine's init holds with the weights at its peak (a phase of its own)
    engine_init: dict[str, int] = field(default_factory=dict)
    #: the compute stream's segments the engine's init leaves cached: reserved is at least this
    engine_init_reserved: int = 0


def check_parallel_supported(setup: TrainingSetup) -> None:
    """Raises VramplanError for combinations no framework runs."""
    if setup.num_gpus > 1 and setup.quant == "int8" and setup.parallel in SHARDED:
        raise VramplanError(
            f"--quant int8 with --parallel {setup.parallel}: bitsandbytes int8 weights cannot be sharded; "
            "accepted: --quant nf4|fp4, or --parallel ddp|zero2"
        )


def parallel_terms(
    model: ModelSpec,
    setup: TrainingSetup,
    weights: dict[str, int],
    groups: list[TensorGroup],
    grads: int,
    embedding_grad: int,
    opt_transient: int,
) -> ParallelTerms:
    """Per-GPU weights, states, gradients and communication buffers for setup.parallel on setup.num_gpus GPUs."""
    n = setup.num_gpus
    if setup.parallel == "ddp":
        states, managed = optimizer_state_bytes(groups, setup)
        return ParallelTerms(
            weights=dict(weights), states=states, managed_states=managed, grads=grads, embedding_grad=embedding_grad,
            opt_transient=opt_transient, persistent={"ddp.gradient_buckets": grads},
            engine_init={"ddp.broadcast_buffers": ddp_broadcast_bytes(model, setup, weights)},
        )  # fmt: skip
    if setup.parallel == "fsdp":
        return _offload(_fsdp(model, setup, weights, groups, n), setup.offload)
    if setup.parallel in ("zero2", "zero3"):
        stage = 3 if setup.parallel == "zero3" else 2
        return _offload(_zero(model, setup, weights, groups, n, stage=stage), setup.offload)
    raise VramplanError(f"--parallel {setup.parallel}: accepted: ddp | fsdp | zero2 | zero3")


def ddp_broadcast_bytes(model: ModelSpec, setup: TrainingSetup, weights: dict[str, int]) -> int:
    """DDP's construction broadcasts every parameter from rank 0 through flat copies of 250 MiB buckets, two in
    flight (allocator/ddp_broadcast.py): the most of them alive at once, with every weight loaded."""
    return broadcast_peak_bytes(ddp_flat_copies(model, setup, weights))


def _fsdp(model: ModelSpec, setup: TrainingSetup, weights: dict[str, int], groups: list[TensorGroup], n: int):
    upcast = setup.method == "full"  # trainable bf16/fp16 -> fp32; adapters are fp32 already; never with 4-bit
    sharded_groups = [replace(g, itemsize=FP32) for g in groups] if upcast else groups
    states, managed = optimizer_state_bytes(sharded_groups, setup)
    w = _shard_weights(model, setup, weights, n, upcast=upcast)
    layer, tail, embed = fsdp_unit_bytes(model, setup)
    # reduce-scatter input: one unit's unsharded bf16 gradients (full FT: the largest unit; LoRA: a layer's adapters)
    reduce_params = max_unit_params(model) if upcast else -(-sum(g.params for g in groups) // model.num_layers)
    return ParallelTerms(
        weights=w,
        states=_ceil_div(states, n),
        managed_states=_ceil_div(managed, n),
        grads=_ceil_div(gradient_bytes(sharded_groups), n),
        embedding_grad=_ceil_div(model.vocab_size * model.hidden_size * FP32, n) if setup.method == "full" else 0,
        opt_transient=_ceil_div(optimizer_step_transient_bytes(sharded_groups, setup), n),
        gather_forward={"fsdp.all_gather_buffers": tail + layer},
        gather_backward={"fsdp.all_gather_buffers": layer + max(layer, embed)},
        reduce={"fsdp.reduce_scatter_buffer": block_bytes(reduce_params * BF16)},
        extra_fragmentation=FSDP_EXTRA_FRAGMENTATION,
        engine_init=_fsdp_qlora_prepare(setup, weights),
    )


def _fsdp_qlora_prepare(setup: TrainingSetup, weights: dict[str, int]) -> dict[str, int]:
    """QLoRA is quantized on the GPU as it loads (transformers gives a 4-bit model without a device_map the current
    GPU), so each rank holds the whole loaded model when accelerate's prepare makes its shards: the engine_init phase
    is these whole weights plus the shards (the phase adds the sharded weights). Fake ranks of 2026-12-04
    (docs/allocator_simulation.md, session 15): 8B x2 peaked there, 7.27 GiB loaded + 3.82 GiB of shards = 11.09 GiB,
    nothing freed before the last shard."""
    if setup.method != "qlora":
        return {}
    return {"fsdp.qlora_prepare.loaded_model": sum(weights.values())}


def _zero(model: ModelSpec, setup: TrainingSetup, weights: dict[str, int], groups: list[TensorGroup], n: int, stage: int):
    fp32_groups = [replace(g, itemsize=FP32) for g in groups]
    bf16_groups = [replace(g, itemsize=BF16) for g in groups]
    trainable = sum(g.params for g in groups)
    states, managed = optimizer_state_bytes(fp32_groups, setup)
    adam_transient = _ceil_div(optimizer_step_transient_bytes(fp32_groups, setup), n)
    bf16_weights = {k: _as_bf16(k, v, setup) for k, v in weights.items()}
    if "weights.adapters" in bf16_weights:
        bf16_weights["weights.adapters"] = gradient_bytes(bf16_groups)
    common = {"states": _ceil_div(states, n), "managed_states": _ceil_div(managed, n)}
    master = {"zero.fp32_master_weights": _ceil_div(trainable * MASTER_BYTES_PER_PARAM, n)}
    if stage == 2:
        # grads_in_partition: rank 0's partition of the bf16 gradients (stage_1_and_2.py:2192; the one parameter
        # across a partition boundary is whole in it, at most its own size more: left out)
        bf16_grads = _ceil_div(gradient_bytes(bf16_groups), n)
        embed = model.vocab_size * model.hidden_size * BF16 if setup.method == "full" else 0
        largest = max(g.numel for g in groups)
        pools = {}
        if setup.offload != "none":
            master["zero.offload_gpu_grad_buffer"] = zero2_offload_gpu_grad_buffer(largest)
            pools["zero.reduction_stream_pool"] = zero2_offload_stream_pool(largest)
        return ParallelTerms(
            weights=bf16_weights, grads=bf16_grads, embedding_grad=embed,
            opt_transient=zero2_step_transient(trainable, n, adam_transient),
            persistent=master, reduce={"zero.reduce_bucket": zero2_ipg_buffers(model)}, stream_pools=pools,
            engine_init=zero2_engine_init(trainable, n, setup.offload),
            engine_init_reserved=zero2_offload_init_reserved(trainable) if setup.offload != "none" else 0,
            outside_allocator_bytes=_deepspeed_outside(setup, n), **common,
        )  # fmt: skip
    live = {}
    if zero3_gathers_copy(n, setup.offload):  # two fetched modules, or what the reuse distance keeps gathered
        held = zero3_held_parameters(model.vocab_size * model.hidden_size, layer_params(model), model.num_layers)
        live["zero3.live_parameters"] = max(2 * BF16 * largest_module_params(model), held)
    pools = {}
    if setup.offload != "none":
        pools["zero3.reduce_stream_pool"] = zero3_offload_stream_pool(max(g.numel for g in groups))
    if setup.offload == "all":
        pools["zero3.gather_stream_pool"] = zero3_gather_stream_pool(largest_module_params(model))
    # fp32 gradients exist per sub-group during the step only (stage3.py:2686); the bf16 partitions persist
    step = zero3_step_fp32_gradient(trainable, n, adam_transient)
    return ParallelTerms(
        weights=_shard_weights(model, setup, bf16_weights, n, upcast=False),
        grads=0,
        embedding_grad=0,
        opt_transient=step,
        persistent={**master, "zero.gradient_partitions": zero3_gradient_partitions(trainable, n)},
        reduce={"zero.reduce_bucket": zero3_ipg_buffer(model)},
        gather_forward=live,
        gather_backward=live,
        stream_pools=pools,
        outside_allocator_bytes=_deepspeed_outside(setup, n),
        **common,
    )


def _deepspeed_outside(setup: TrainingSetup, n: int) -> int:
    """Memory outside the allocator beyond the CUDA context: DEEPSPEED_ONE_GPU_OUTSIDE_BYTES on one GPU, else NCCL's."""
    return DEEPSPEED_ONE_GPU_OUTSIDE_BYTES[setup.parallel] if n == 1 else NCCL_BUFFERS_BYTES


#: ZeRO's fp32 partitions that offload_optimizer moves to the CPU with the optimizer states
ZERO_OPTIMIZER_PARTITIONS = ("zero.fp32_master_weights", "zero.gradient_partitions")


def _offload(terms: ParallelTerms, offload: str) -> ParallelTerms:
    """Drop what CPU offload keeps in host memory from the per-GPU terms (gather/reduce buffers stay)."""
    if offload == "none":
        return terms
    persistent = {k: v for k, v in terms.persistent.items() if k not in ZERO_OPTIMIZER_PARTITIONS}
    # gradients are reduced bucket by bucket into the host partitions (DeepSpeed's ZeRO-2 offload estimate is 2P:
    # the bf16 parameters alone); FSDP's sharded gradients follow its offloaded parameters
    moved = replace(terms, states=0, managed_states=0, opt_transient=0, persistent=persistent, grads=0, embedding_grad=0)
    if offload == "optimizer":
        return moved
    # the parameters too; a 4-bit QuantState is no parameter and stays
    return replace(moved, weights={k: v for k, v in terms.weights.items() if k == "weights.quant_state"})


def _shard_weights(model: ModelSpec, setup: TrainingSetup, weights: dict[str, int], n: int, *, upcast: bool) -> dict[str, int]:
    """Every weight role / n; a 4-bit model's QuantState stays whole; `upcast` turns bf16/fp16 roles into fp32."""
    scale = FP32 // 2 if upcast and setup.dtype != "fp32" else 1
    out = {k: _ceil_div(v * scale, n) for k, v in weights.items()}
    if setup.method == "qlora" and "weights.quantized" in weights:
        packed = packed_4bit_bytes(model)
        out["weights.quantized"] = _ceil_div(packed, n)
        out["weights.quant_state"] = weights["weights.quantized"] - packed
    return out


def _as_bf16(role: str, nbytes: int, setup: TrainingSetup) -> int:
    """DeepSpeed bf16 mode runs the module in bf16: fp32 roles (fp32 load, QLoRA upcasts) halve."""
    if role == "weights.quantized":
        return nbytes
    fp32_role = setup.dtype == "fp32" or setup.method == "qlora" or role == "weights.adapters"
    return nbytes // 2 if fp32_role else nbytes


# shape facts are cached per model (ModelSpec is frozen and hashable): a plan asks for them hundreds of times
@lru_cache(maxsize=64)
def packed_4bit_bytes(model: ModelSpec) -> int:
    """The packed uint8 data of every quantized nn.Linear (ceil(n/2) bytes each, allocator blocks)."""
    return sum(s.count * block_bytes(-(-(s.in_features * s.out_features) // 2)) for s in linear_shapes(model) if s.role != "lm_head")


@lru_cache(maxsize=64)
def layer_params(model: ModelSpec) -> int:
    """Parameters of the largest decoder layer (FSDP's unit: transformers `_no_split_modules`)."""
    counts = param_counts(model)
    n_layers = model.num_layers
    per_layer = (counts["attention"] + counts["qk_norm"]) // n_layers + model.norms_per_layer * model.hidden_size
    shapes = linear_shapes(model)
    dense = sum(s.in_features * s.out_features + (s.out_features if s.bias else 0) for s in shapes if s.role == "mlp")
    n_moe = len(moe_layers(model))
    if not n_moe:
        return per_layer + dense
    shared = sum(s.in_features * s.out_features + (s.out_features if s.bias else 0) for s in shapes if s.role == "shared_expert")
    sparse = shared + (counts["experts"] + counts["router"]) // n_moe
    return per_layer + max(sparse, dense if n_moe < n_layers else 0)


def max_unit_params(model: ModelSpec) -> int:
    """Largest FSDP unit: a decoder layer or the tail (lm_head/tied embeddings + final norm)."""
    return max(layer_params(model), model.vocab_size * model.hidden_size + model.hidden_size)


def fsdp_unit_bytes(model: ModelSpec, setup: TrainingSetup) -> tuple[int, int, int]:
    """bf16 bytes gathered for (one decoder layer, the tail unit, the untied embedding unit or 0).

    QLoRA: a layer's quantized Linear weights travel packed (half a byte per weight)."""
    layer = layer_params(model)
    layer_bytes = layer * BF16
    if setup.method == "qlora":
        quantized = _quantized_layer_params(model)
        layer_bytes = (layer - quantized) * BF16 + -(-quantized // 2)
    vh = model.vocab_size * model.hidden_size
    tail = (vh + model.hidden_size) * BF16
    embed = 0 if model.tie_word_embeddings else vh * BF16
    return block_bytes(layer_bytes), block_bytes(tail), block_bytes(embed)


@lru_cache(maxsize=64)
def _quantized_layer_params(model: ModelSpec) -> int:
    """Weight elements of one layer's quantized nn.Linear modules (at most the largest layer's parameters)."""
    roles = ("attention", "mlp", "shared_expert")
    quantized = sum(s.in_features * s.out_features for s in linear_shapes(model) if s.role in roles)
    return min(quantized, layer_params(model))


@lru_cache(maxsize=64)
def largest_module_params(model: ModelSpec) -> int:
    """DeepSpeed's largest_layer_params: the most parameters one module holds directly (embeddings,
    lm_head, the largest Linear, or a MoE layer's fused experts module)."""
    vh = model.vocab_size * model.hidden_size
    linear = max(s.in_features * s.out_features for s in linear_shapes(model))
    experts = 0
    if model.moe is not None and moe_layers(model):
        experts = param_counts(model)["experts"] // len(moe_layers(model))
    return max(vh, linear, experts)


#: what the DeepSpeed runs measured against these terms (H200, world size 1, 13 runs of 2026-12-01/02, DeepSpeed 0.19.8)
DEEPSPEED_MEASURED_NOTE = (
    "DeepSpeed measured at world size 1 (H200, 11 runs): allocated within 1.3 % of this estimate; reserved within "
    "4.4 % for LoRA, but 10-12 % above it for full fine-tuning (the ZeRO step's flat copies strand cached blocks, "
    "not modelled): keep that margin"
)
OFFLOAD_MEASURED_NOTE = (
    "DeepSpeed offload on the closed-form rules (not simulated: ZeRO-3 --offload optimizer, LoRA, other models), "
    "measured at world size 1 (H200) on one such run, Llama-3.1-8B LoRA ZeRO-3 --offload optimizer: allocated 0.7 % "
    "under, reserved 3.0 % over; the rules have been 7 to 9 % off with ZeRO-3 offload before: keep a wide margin"
)

#: in place of the two notes above where the simulated sequence models the engine (allocator/zero_steps.py)
ZERO2_SIMULATED_NOTE = (
    "DeepSpeed ZeRO-2 at world size 1, simulated (the engine's init, gradient hooks and step replayed on its "
    "streams): full fine-tuning reserved within 2 MiB of measured on 9 H200 runs (5 of them predicted before they "
    "ran); device within 0.5 % with DeepSpeed's measured 950 MiB outside the allocator at world size 1. Over more "
    "GPUs, rank 0's partition (its parameters whole in the gradient buffer, their pieces in the norm and step): "
    "reserved within 0.2 % on the 3 two-rank histories it was read from (fake ranks on one H200: full fine-tuning, "
    "--offload optimizer, LoRA); NCCL's buffers outside the allocator as for DDP"
)
ZERO3_SIMULATED_NOTE = (
    "DeepSpeed ZeRO-3 at world size 1 without offload, simulated (the engine's init, sub-group step and gradient "
    "hooks replayed on its streams; a fetch at world size 1 is a view, no all-gather): reserved within 4 MiB of "
    "measured on 12 H200 runs (7 of them predicted before they ran, up to Llama-3.1-8B at 129 GiB); device to 0.1 % "
    "with DeepSpeed's measured 558 MiB outside the allocator at world size 1 (the first run, of 2026-12-01, had "
    "392 MiB more there: -1.2 %). Over more GPUs (full fine-tuning, no offload) each fetch is an all-gather into new "
    "buffers on the all-gather stream (zero3_fetch.py): read from one 2-rank history, then 8 fake ranks on 2, 4 and "
    "8 predicted before they ran: reserved to the byte on 6, -2.4 % on Qwen2.5-7B x4, -0.5 % at 4096 tokens, "
    "allocated within 0.5 % (the closed forms were 9-20 % under); NCCL's buffers outside the allocator as for DDP"
)
#: ZeRO-3 LoRA over more GPUs (zero3_modules.py's PEFT modules): added to ZERO_LORA_SIMULATED_NOTE below
ZERO3_LORA_RANKS_NOTE = (
    " Over more GPUs (ZeRO-3, no offload or --offload optimizer) PEFT's modules are hooked one by one: lora_A's "
    "weight read in the wrapper's forward is gathered as its external parameter, the frozen weights a recomputation "
    "fetches stay with the module in backward; read from two 2-rank fake histories of Llama-3.1-8B (reserved -0.02 % "
    "on both, allocated +0.8 %; the closed forms -10.7 / -11.7 %); no hold-out measured yet"
)
ZERO3_OFFLOAD_SIMULATED_NOTE = (
    "DeepSpeed ZeRO-3 at world size 1 with parameters and optimizer offloaded, simulated (the engine's init and "
    "gradient hooks on the compute and reduction streams, and the parameter coordinator's fetches, prefetch and "
    "reuse distance on the all-gather stream: allocator/zero3_offload.py, zero3_fetch.py; three steps): reserved to "
    "the byte on 11 H200 runs (6 of them a hold-out predicted before they ran: +0.0 % on five, +0.5 % on the sixth "
    "before a rule change), allocated within 0.9 %; device 0.1-0.6 % under (the memory outside the allocator "
    "grows by 12-76 MiB with the parameters when they are offloaded, not modelled). Over more GPUs each partition "
    "is staged on the GPU for its all-gather: reserved to the byte on the two 2-rank fake histories it was read from "
    "(Llama-3.2-3B, Llama-3.1-8B; closed forms +4.3 / +1.1 %); allocated up to 8 % over (the 8B), since the sequence "
    "counts a block freed with record_stream until its free completes, torch's allocated stat only to the request"
)
ZERO3_OFFLOAD_OPTIMIZER_SIMULATED_NOTE = (
    "DeepSpeed ZeRO-3 at world size 1 with the optimizer offloaded, simulated (the engine's init as without offload "
    "less the fp32 partitions and gradient buffer, which are host memory, each gradient's host round trip on the "
    "reduction stream, the step on the host): reserved to the byte on the H200 run it was read from (Llama-3.2-1B) "
    "and on a hold-out of 3 predicted before they ran (Qwen2.5-0.5B, TinyLlama, Qwen2.5-1.5B), allocated within 0.6 %"
)
ZERO_LORA_SIMULATED_NOTE = (
    "DeepSpeed ZeRO-2 / ZeRO-3 under checkpointed LoRA at world size 1, simulated (ZeRO-2's engine casts the adapters "
    "to bf16 and flattens them; ZeRO-3 keeps the frozen weights' partitions and the adapters in fp32; each layer's "
    "no-grad forward as recorded): reserved within 8 MiB on the 10 H200 runs it was read from and on all 6 of a "
    "hold-out predicted before they ran (ZeRO-3 on Qwen2.5-1.5B, TinyLlama, Qwen3-1.7B, 3B at 4096 tokens; ZeRO-2 on "
    "Qwen2.5-0.5B and 3B), allocated within 0.5 %; all measured at rank 16 on every linear layer with dropout 0.05"
)
#: the note of each stage (and ZeRO-3 offload) the simulated sequence models (zero_steps.py, zero3_steps.py)
ZERO_SIMULATED_NOTES = {("zero2", "none"): ZERO2_SIMULATED_NOTE, ("zero2", "optimizer"): ZERO2_SIMULATED_NOTE,
                        ("zero3", "none"): ZERO3_SIMULATED_NOTE, ("zero3", "optimizer"): ZERO3_OFFLOAD_OPTIMIZER_SIMULATED_NOTE,
                        ("zero3", "all"): ZERO3_OFFLOAD_SIMULATED_NOTE}  # fmt: skip


def zero_simulated_assumptions(lines: tuple[str, ...], setup: TrainingSetup) -> tuple[str, ...]:
    """`lines` with the rules' DeepSpeed notes replaced by the simulated engine's (zero2 | zero3, its offload)."""
    kept = tuple(x for x in lines if x not in (DEEPSPEED_MEASURED_NOTE, OFFLOAD_MEASURED_NOTE))
    if setup.method == "lora":
        ranks = ZERO3_LORA_RANKS_NOTE if setup.parallel == "zero3" and setup.num_gpus > 1 else ""
        return kept + (ZERO_LORA_SIMULATED_NOTE + ranks,)
    return kept + (ZERO_SIMULATED_NOTES[setup.parallel, setup.offload],)


def _outside_line(setup: TrainingSetup) -> str:
    """What parallel_terms puts outside the allocator (_deepspeed_outside on one GPU, NCCL's buffers on several)."""
    nbytes = _deepspeed_outside(setup, setup.num_gpus) // MIB
    if setup.num_gpus == 1:  # DeepSpeed at world size 1
        return f"DeepSpeed {setup.parallel} at world size 1 outside the allocator: {nbytes} MiB (measured on 1 x H200)"
    return f"NCCL buffers outside the allocator: {nbytes} MiB per process (measured on 2 x H200)"


def parallel_assumptions(setup: TrainingSetup) -> tuple[str, ...]:
    """What the per-GPU numbers assume, one line each."""
    if setup.parallel is None or (setup.num_gpus <= 1 and setup.parallel not in ("zero2", "zero3")):
        return ()
    n, p = setup.num_gpus, setup.parallel
    lines = [f"{n} GPU{'s' if n > 1 else ''}, data parallel ({p}): micro-batch {setup.batch_size} per GPU; numbers are per GPU",
             _outside_line(setup)]  # fmt: skip
    if p == "ddp":
        lines.append("DDP gradient buckets cover every trainable gradient (gradient_as_bucket_view=False, the default)")
        lines.append(
            "DDP's construction broadcasts the parameters from rank 0 through flat copies of 250 MiB buckets, two at a "
            "time (phase engine_init); their segments stay cached"
        )
    if p == "fsdp":
        lines.append(
            "FSDP2 full shard via accelerate, bf16 param/reduce dtype; trainable bf16 parameters upcast to fp32 before "
            "sharding (not with 4-bit weights); one decoder layer per unit, lm_head/final norm kept gathered after forward"
        )
    if p in ("zero2", "zero3"):
        lines.append(
            "DeepSpeed bf16 mode: model runs in bf16, fp32 master weights, gradients and optimizer states partitioned; "
            "reduce bucket hidden_size^2 elements (HF 'auto')"
        )
    if setup.method == "qlora" and p in SHARDED:
        lines.append("QLoRA sharded with bnb_4bit_quant_storage=bf16; QuantState replicated on every GPU")
    if setup.offload == "none":
        lines.append("no CPU offload")
    else:
        moved = "optimizer states and fp32 partitions" if setup.offload == "optimizer" else "parameters, gradients and optimizer states"
        lines.append(f"CPU offload ({setup.offload}): sharded {moved} live in host memory (estimate from the frameworks' own formulas)")
        if p in ("zero2", "zero3"):
            lines.append(OFFLOAD_MEASURED_NOTE)
    if p in ("zero2", "zero3") and setup.offload == "none":
        lines.append(DEEPSPEED_MEASURED_NOTE)
    return tuple(lines)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
