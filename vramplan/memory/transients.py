"""Short-lived buffers inside one layer's backward (not saved, but part of the peak)."""

from ..models.params import linear_shapes, quantizable_params
from ..specs import ModelSpec, TrainingSetup
from .adapters import lora_targets, wraps_experts
from .allocator import block_bytes
from .constants import (
    EXPERT_LORA_BACKWARD_BYTES_PER_PARAM,
    INT8_TRAINING_BYTES_PER_PARAM,
    NF4_BLOCKSIZE,
    TIED_EMBEDDING_GRAD_BYTES_PER_ELEMENT,
)

BF16 = 2


def dequant_transient_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """QLoRA: bitsandbytes' gemm_4bit for M > 1536 rows dequantizes the weight to a full bf16 [out, in]
    tensor (backends/cuda/ops.py::_dequant_linear_fallback), freed right after the matmul. With double quantization
    functional.py::dequantize_4bit first dequantizes the absmax to an fp32 tensor (one per 64-element block), alive
    while the bf16 weight is made (allocator/sequence.py::_dequantize makes the same two tensors)."""
    if setup.method != "qlora":
        return 0
    quantized = [s for s in linear_shapes(spec) if s.role != "lm_head"]
    n = max(s.in_features * s.out_features for s in quantized)
    absmax = block_bytes(-(-n // NF4_BLOCKSIZE) * 4) if setup.double_quant and setup.quant != "int8" else 0
    return n * BF16 + absmax


def expert_grad_transient_bytes(spec: ModelSpec, setup: TrainingSetup, itemsize: int) -> int:
    """Full FT of a v5 MoE: backward of `gate_up_proj[expert_idx]` (SelectBackward) allocates a zero gradient of the
    whole fused expert stack before accumulating (memory_model.md section 10)."""
    if spec.moe is None or setup.method != "full":
        return 0
    m = spec.moe
    return 3 * m.num_experts * spec.hidden_size * m.expert_intermediate_size * itemsize


def int8_training_state_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """LLM.int8 (QLoRA --quant int8): extra bytes per quantized weight alive through forward and backward
    (measured, constants.INT8_TRAINING_BYTES_PER_PARAM)."""
    if setup.method != "qlora" or setup.quant != "int8":
        return 0
    return int(quantizable_params(spec) * INT8_TRAINING_BYTES_PER_PARAM)


def tied_embedding_grad_bytes(spec: ModelSpec, setup: TrainingSetup, *, in_place: bool = False) -> int:
    """Full FT with tied embeddings: accumulating the embedding's gradient into lm_head's.

    With the model's own lm_head forward the lm_head gradient is a transposed mm result, its strides differ from
    the embedding gradient's, and autograd's input buffer sums the two out of place: the new gradient and the
    sum, 2 x [V, h] at the model dtype (measured 4 B/element in bf16; the H200 history of s-h200-l1-full-gc
    shows the two allocations). A head that returns a contiguous gradient (`in_place`, StackProfile.owns_lm_head)
    is added to in place: only the embedding's own gradient, 2 B/element."""
    if setup.method != "full" or not spec.tie_word_embeddings:
        return 0
    per_element = TIED_EMBEDDING_GRAD_BYTES_PER_ELEMENT // 2 if in_place else TIED_EMBEDDING_GRAD_BYTES_PER_ELEMENT
    return block_bytes(spec.vocab_size * spec.hidden_size * per_element)


def expert_lora_transient_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """LoRA all-linear on a v5 MoE wraps the fused expert tensors (PEFT ParamWrapper): the layer's expert weights
    are materialised with their delta in backward (measured, constants.EXPERT_LORA_BACKWARD_BYTES_PER_PARAM)."""
    if spec.moe is None or setup.lora is None or not wraps_experts(spec, setup.lora):
        return 0
    m = spec.moe
    per_layer = 3 * m.num_experts * spec.hidden_size * m.expert_intermediate_size
    return per_layer * EXPERT_LORA_BACKWARD_BYTES_PER_PARAM


#: bytes per element of the widest LoRA target's input that the fp32-adapter backward chain holds more than the
#: compute-dtype one: the dropout-output gradient and the input gradient in fp32 instead of bf16 (2 x 2 bytes),
#: and the cast of the input gradient back to bf16 (2 bytes), which a bf16 input never needs
FP32_ADAPTER_CHAIN_EXTRA_BYTES = 6


def compute_dtype_adapter_saving_bytes(spec: ModelSpec, setup: TrainingSetup, adapter_itemsize: int) -> int:
    """The layer backward as modelled is right for fp32 adapters (PEFT casts the LoRA input to the adapter dtype,
    so the LoRA branch's gradients of the widest target's input are fp32). Adapters in the compute dtype (TRL casts
    them to bf16 for a quantized model) keep that chain in bf16: FP32_ADAPTER_CHAIN_EXTRA_BYTES per element less.
    Read from the H200 histories of 2026-12-01: in s-l8-trl-lora-gc (fp32 adapters) the down_proj LoRA backward
    holds two fp32 [s, i] gradients (112 + 112 MiB) and their 56 MiB bf16 cast; s-l8-trl-qlora-gc (bf16 adapters)
    peaks 0.17 GiB lower in the same layer, 6 x s x i = 168 MiB. A saving relative to the fp32 case, taken from the
    activation-sized part of the layer's transients only (the estimator keeps that part at zero or more; the
    dequantized weight of QLoRA stays whole)."""
    if setup.lora is None or adapter_itemsize >= 4 or setup.dtype == "fp32":
        return 0
    widest = max(s.in_features for s in lora_targets(spec, setup.lora))
    return setup.batch_size * setup.seq_len * widest * FP32_ADAPTER_CHAIN_EXTRA_BYTES
