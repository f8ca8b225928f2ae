"""GPU buffers DeepSpeed ZeRO allocates beyond its model-state formulas (DeepSpeed 0.19.8, bf16 mode, the config of
vramplan/trainer/deepspeed_config.py: overlap_comm, contiguous_gradients, HF "auto" buckets). One function per
buffer; each docstring names the source line (deepspeed/runtime/...). Sizes in bytes; no torch import.
"""

from ..specs import ModelSpec
from .allocator import block_bytes

BF16 = 2
FP32 = 4
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
