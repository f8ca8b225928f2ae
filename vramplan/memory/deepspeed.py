"""GPU buffers DeepSpeed ZeRO allocates beyond its model-state formulas (DeepSpeed 0.19.8, bf16 mode, the config of
vramplan/trainer/deepspeed_config.py: overlap_comm, contiguous_gradients, HF "auto" buckets). One function per
buffer; each docstring names the source line (deepspeed/runtime/...). Sizes in bytes; no torch import.
"""

from ..specs import ModelSpec
from .allocator import block_bytes

BF16 = 2
FP32 = 4
FP64 = 8
#: zero/config.py:251 ``max_reuse_distance: int = Field(pp_int(1e9), ge=0)``
MAX_REUSE_DISTANCE = 1_000_000_000
#: stage3.py:1960-1967 ``_constant_buffered_norm2``: the fp64 norm copy is made in chunks of at most this many elements
NORM_CHUNK_ELEMENTS = 250_000_000
#: zero/config.py:182 ``sub_group_size: int = Field(pp_int(1e9))`` (HF's integration leaves it alone)
SUB_GROUP_SIZE = 1_000_000_000


def reduce_bucket_elements(model: ModelSpec) -> int:
    """HF "auto" reduce_bucket_size = hidden_size**2 (transformers integrations/deepspeed.py::trainer_config_finalize)."""
    return model.hidden_size * model.hidden_size


def zero2_ipg_buffers(model: ModelSpec) -> int:
    """ZeRO-1/2 contiguous_gradients: one reduce_bucket_size buffer, and a second one with overlap_comm ("double
    buffers to avoid data access conflict", runtime/zero/stage_1_and_2.py:3266-3277, setup_buckets), bf16."""
    return 2 * block_bytes(reduce_bucket_elements(model) * BF16)


def zero3_ipg_buffer(model: ModelSpec) -> int:
    """ZeRO-3 contiguous_gradients: one reduce_bucket_size bf16 buffer per dtype (runtime/zero/stage3.py:780-784)."""
    return block_bytes(reduce_bucket_elements(model) * BF16)


def zero2_offload_gpu_grad_buffer(largest_trainable_numel: int) -> int:
    """ZeRO-1/2 with offload_optimizer: ``temp_grad_buffer_for_gpu_offload``, a bf16 GPU buffer of the largest
    trainable parameter's numel, allocated at init and kept (runtime/zero/stage_1_and_2.py:626-635, 659-661;
    the gradient is staged in it before the copy into the host partition, :1116). The pinned twin
    ``temp_grad_buffer_for_cpu_offload`` (:653-658) is host memory."""
    return block_bytes(largest_trainable_numel * BF16)


def zero3_gathers_copy(num_gpus: int, offload: str) -> bool:
    """Whether fetching a ZeRO-3 parameter makes a new GPU tensor. At partition world size 1 the fetch is no
    all-gather: ``all_gather_coalesced`` returns ``_no_gather_coalesced`` (runtime/zero/partition_parameters.py:
    1559-1560) and ``NoGatherCoalescedHandle`` sets ``param.data = param.ds_tensor.data.to(device)`` (:105), a
    view of the GPU partition, unless offload_param keeps the partition in host memory (then it is an H2D copy)."""
    return num_gpus > 1 or offload == "all"


def zero3_gradient_partitions(trainable: int, num_gpus: int) -> int:
    """ZeRO-3 ``grad_partitions_flat_buffer``: every trainable parameter's gradient partition, persistent, in the
    gradient-accumulation dtype (runtime/zero/stage3.py:791-793), which is the model dtype (bf16) unless
    ``data_types.grad_accum_dtype`` is set (runtime/engine.py:1806-1807). Host memory with offload_optimizer
    (stage3.py:333: ``self.device`` is cpu)."""
    return block_bytes(-(-trainable // num_gpus) * BF16)


def zero3_step_fp32_gradient(trainable: int, num_gpus: int, adam_transient: int) -> int:
    """ZeRO-3 optimizer step (no optimizer offload): per sub-group, ``_prepare_fp32_grad_for_sub_group`` flattens
    the bf16 gradient partitions (a copy) and casts them to an fp32 ``.grad`` (runtime/zero/stage3.py:2686-2693),
    freed after that sub-group's step (:2733-2735). Peak: the bf16 copy and the fp32 gradient (6 bytes/element) of
    the largest sub-group, or the fp32 gradient plus the optimizer's own step temporaries. Sub-groups hold
    sub_group_size elements (stage3.py:1210-1233; the last parameter added may overshoot it, not counted here)."""
    sub = min(-(-trainable // num_gpus), SUB_GROUP_SIZE)
    return max(block_bytes(sub * (BF16 + FP32)), block_bytes(sub * FP32) + adam_transient)


def zero2_step_transient(trainable: int, num_gpus: int, adam_transient: int) -> int:
    """ZeRO-1/2 optimizer step without offload, on top of the bf16 gradient partitions: the group's gradients are
    flattened into one bf16 copy and cast to the fp32 ``.grad`` of the master partition in one expression
    (``flatten_dense_tensors_aligned(...).to(fp32)``, runtime/zero/stage_1_and_2.py:3117-3118), so the copy and the
    fp32 gradient are alive together; the bf16 gradients are dropped after (:3128), and the fp32 gradient lives on
    through the torch optimizer's step. The fp32 gradient is made in the step only: the 4P zeros of
    ``initialize_optimizer_states`` (:936-950) are freed at init. (2 param groups, decay and no decay, reach
    DeepSpeed from the Trainer's optimizer: the largest is taken as all trainable parameters.)"""
    part = -(-trainable // num_gpus)
    fp32_grad = block_bytes(part * FP32)
    return max(block_bytes(part * BF16) + fp32_grad, fp32_grad + adam_transient - block_bytes(part * BF16))


def zero2_offload_stream_pool(largest_trainable_numel: int) -> int:
    """ZeRO-1/2 with offload_optimizer and overlap_comm: ``copy_grads_in_partition`` runs on ``reduction_stream``
    (runtime/zero/stage_1_and_2.py:2239-2249, 2271) and makes, per gradient, an fp64 copy for its norm
    (``set_norm_for_param_grad_in_gpu``, :1873-1886; fp64 because ``get_norm_dtype`` is double on CUDA,
    zero/utils.py:59-63) and then an fp32 copy for the host transfer (:1899-1900). The caching allocator never
    hands a block cached for one stream to another (CUDACachingAllocator.cpp get_free_block compares
    ``block->stream``), so that stream keeps a pool of its own: the largest gradient's fp64 copy."""
    return block_bytes(largest_trainable_numel * FP64)


def zero3_offload_stream_pool(largest_trainable_numel: int) -> int:
    """ZeRO-3 with offload_optimizer: on ``reduce_and_partition_stream`` (runtime/zero/stage3.py:1669) each gradient
    partition is copied back to the GPU (``grad_buffer.to(cuda)``, :2024-2028, 2 bytes/element) and its norm taken
    through an fp64 copy of at most NORM_CHUNK_ELEMENTS elements at a time (:1960-1967): a pool of that stream's own
    (see zero2_offload_stream_pool), for the largest gradient."""
    n = largest_trainable_numel
    return block_bytes(n * BF16) + block_bytes(min(n, NORM_CHUNK_ELEMENTS) * FP64)


def zero3_gather_stream_pool(largest_module_numel: int) -> int:
    """ZeRO-3 with offload_param: each module's parameters are copied to the GPU (``ds_tensor.to(cuda)``,
    runtime/zero/partition_parameters.py:104-106) on the all-gather stream (partitioned_param_coordinator.py:606), so
    that stream caches at least the largest module's bf16 parameters."""
    return block_bytes(largest_module_numel * BF16)


def zero2_engine_init(trainable: int, num_gpus: int, offload: str) -> dict[str, int]:
    """What ZeRO-1/2's engine init holds beyond the bf16 weights, at its peak (stage_1_and_2.py ``__init__``).

    Each param group is flattened on the GPU into a new bf16 buffer (``flatten_dense_tensors_aligned``, :505-508)
    while the original parameters still exist; they are freed when ``_update_model_bit16_weights`` points them
    at views of it (:534, 889-899). With offload_optimizer that is the peak (the fp32 master goes to the host,
    :560-565): 4 bytes per trainable parameter with the weights. Without offload the fp32 master partition is made
    on the GPU (:560-561) and ``initialize_optimizer_states`` makes fp32 zeros of the same size as gradients
    (:936-941) before freeing them (:948-950): 2 + 4 + 4 bytes per trainable parameter / n."""
    part = -(-trainable // num_gpus)
    if offload != "none":
        return {"zero.init_flat_copy": block_bytes(trainable * BF16)}
    return {"zero.fp32_master_weights": block_bytes(part * FP32), "zero.init_fp32_zeros": block_bytes(part * FP32)}


def zero3_held_parameters(head_numel: int, layer_numel: int, num_layers: int) -> int:
    """Gathered ZeRO-3 parameters kept on the GPU from the end of forward into backward, in steady steps.

    Once step 0 has recorded the module trace, ``release_sub_module`` keeps a gathered parameter whose next use is
    fewer than ``max_reuse_distance`` elements of fetches away (runtime/zero/partitioned_param_coordinator.py:634-665,
    ``__params_to_release``). Backward starts where forward ended: the lm_head (the tied embedding too) at distance
    0, then each decoder layer, last first, one layer's parameters further away each. So the lm_head and as many
    trailing layers as fit in max_reuse_distance elements stay gathered, in bf16. Measured at world size 1 with
    parameter offload: Llama-3.2-1B steady forward 1.91 GiB above step 0's, this gives 1.85."""
    if head_numel >= MAX_REUSE_DISTANCE:
        return block_bytes(head_numel * BF16)
    layers = min(num_layers, (MAX_REUSE_DISTANCE - head_numel) // max(layer_numel, 1))
    return block_bytes((head_numel + layers * layer_numel) * BF16)


def zero2_offload_init_reserved(trainable: int) -> int:
    """The segments ZeRO-1/2 with offload_optimizer leaves cached after its init, on the compute stream: the original
    bf16 parameters (freed once they are views of the flat buffer, stage_1_and_2.py:534; each was its own block),
    the flat buffer, and the GPU ``clone()`` of it the fp32 host master is copied from (:560-561; freed, but a block
    that size fits in none of the freed parameters' segments, so it got a segment of its own). No ``empty_cache``
    follows while a single param group is flattened (the only one is at the top of each group, :449): 3 x 2 bytes
    per trainable parameter stay reserved."""
    return 3 * block_bytes(trainable * BF16)
