"""Short-lived buffers inside one layer's backward (not saved, but part of the peak)."""

from ..models.params import linear_shapes
from ..specs import ModelSpec, TrainingSetup

BF16 = 2


def dequant_transient_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """QLoRA: bitsandbytes' gemm_4bit for M > 1536 rows dequantizes the weight to a full bf16 [out, in]
    tensor (backends/cuda/ops.py::_dequant_linear_fallback), freed right after the matmul."""
    if setup.method != "qlora":
        return 0
    quantized = [s for s in linear_shapes(spec) if s.role != "lm_head"]
    return max(s.in_features * s.out_features for s in quantized) * BF16


def expert_grad_transient_bytes(spec: ModelSpec, setup: TrainingSetup, itemsize: int) -> int:
    """Full FT of a v5 MoE: backward of `gate_up_proj[expert_idx]` (SelectBackward) allocates a zero gradient of the
    whole fused expert stack before accumulating (memory_model.md section 10)."""
    if spec.moe is None or setup.method != "full":
        return 0
    m = spec.moe
    return 3 * m.num_experts * spec.hidden_size * m.expert_intermediate_size * itemsize
