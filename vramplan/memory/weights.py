"""Weights after load (and after PEFT's prepare_model_for_kbit_training for QLoRA).

Bytes per role. Full and LoRA keep every parameter in the load dtype. QLoRA quantizes every
nn.Linear except lm_head (transformers integrations/bitsandbytes.py::replace_with_bnb_linear,
quantizers/base.py::get_keys_to_not_convert) and prepare_model_for_kbit_training casts every
other fp16/bf16 parameter to fp32 (peft utils/other.py): embeddings, lm_head, norms, biases and,
in transformers v5, the fused 3-D MoE expert tensors, which are not nn.Linear.
"""

from ..models.params import linear_shapes, moe_layers, param_counts, total_params
from ..specs import LinearShape, ModelSpec, TrainingSetup
from .allocator import block_bytes, tensors_bytes
from .constants import (
    BYTES_PER_DTYPE,
    NF4_BLOCKSIZE,
    NF4_CODE_BYTES,
    NF4_DQ_BLOCKSIZE,
    NF4_DQ_CODE_BYTES,
    NF4_DQ_OFFSET_BYTES,
)

FP32 = 4


def nf4_matrix_bytes(n_elements: int, double_quant: bool) -> int:
    """Allocated bytes of one 4-bit (NF4/FP4) matrix with its QuantState.

    packed data ceil(n/2) uint8; absmax per 64-block: fp32, or with double quantization uint8 plus
    an fp32 absmax per 256 of those, the 256-entry fp32 dynamic code and a 0-d fp32 offset;
    plus the fp32[16] 4-bit code. Each tensor is rounded to 512-byte allocator blocks.
    """
    nblocks = -(-n_elements // NF4_BLOCKSIZE)
    total = block_bytes(-(-n_elements // 2)) + block_bytes(NF4_CODE_BYTES)
    if double_quant:
        total += block_bytes(nblocks)  # uint8 absmax
        total += block_bytes(-(-nblocks // NF4_DQ_BLOCKSIZE) * FP32)  # state2.absmax
        total += block_bytes(NF4_DQ_CODE_BYTES) + block_bytes(NF4_DQ_OFFSET_BYTES)
    else:
        total += block_bytes(nblocks * FP32)
    return total


def int8_matrix_bytes(out_features: int, in_features: int) -> int:
    """LLM.int8 Int8Params: int8 CB [out, in] + fp32 SCB row scales [out]."""
    return block_bytes(out_features * in_features) + block_bytes(out_features * FP32)


def weight_bytes(spec: ModelSpec, setup: TrainingSetup, *, kbit_fp32_upcast: bool = True) -> dict[str, int]:
    """Bytes of the base model's parameters by role, as resident during training.

    Full/LoRA: everything in the load dtype. QLoRA: the Linear weights quantized, everything else fp32
    (prepare_model_for_kbit_training casts every non-quantized bf16 parameter up), or in the load dtype
    when the stack does not call it (``kbit_fp32_upcast=False``: TRL's SFTTrainer, Unsloth).
    """
    counts = param_counts(spec)
    linears = [s for s in linear_shapes(spec) if s.role != "lm_head"]
    linear_params = sum(s.count * s.in_features * s.out_features for s in linears)
    other_params = total_params(spec) - counts["embed_tokens"] - counts["lm_head"] - linear_params
    if setup.method == "qlora":
        nbytes = FP32 if kbit_fp32_upcast else BYTES_PER_DTYPE[setup.dtype]
        linear_key, linear_bytes = "weights.quantized", _quantized_linear_bytes(linears, setup)
    else:
        nbytes = BYTES_PER_DTYPE[setup.dtype]
        linear_key = "weights.linear"
        linear_bytes = sum(tensors_bytes(s.count, s.in_features * s.out_features * nbytes) for s in linears)
    return {
        linear_key: linear_bytes,
        "weights.embeddings": block_bytes(counts["embed_tokens"] * nbytes),
        "weights.lm_head": block_bytes(counts["lm_head"] * nbytes),
        "weights.other": other_params * nbytes,
        "weights.fp32_router": fp32_router_extra_bytes(spec, nbytes),
    }


def fp32_router_extra_bytes(spec: ModelSpec, nbytes: int) -> int:
    """DeepSeek-V3 / GLM-4.5 keep the router weight [E, h] and the e_score_correction_bias buffer [E] in fp32
    whatever the load dtype (modeling_deepseek_v3.py, modeling_glm4_moe.py: _keep_in_fp32_modules_strict =
    ["e_score_correction_bias", "gate.weight"]): (4 - nbytes) more bytes per router weight, plus the fp32 buffer."""
    if spec.moe is None or spec.moe.layout != "deepseek":
        return 0
    e, h, n = spec.moe.num_experts, spec.hidden_size, len(moe_layers(spec))
    return n * (e * h * (FP32 - nbytes) + block_bytes(e * FP32))


def _quantized_linear_bytes(linears: list[LinearShape], setup: TrainingSetup) -> int:
    if setup.quant == "int8":
        return sum(s.count * int8_matrix_bytes(s.out_features, s.in_features) for s in linears)
    return sum(s.count * nf4_matrix_bytes(s.in_features * s.out_features, setup.double_quant) for s in linears)


def lm_head_params(spec: ModelSpec) -> int:
    """Parameters of the output projection (shared with embeddings when tied)."""
    return spec.vocab_size * spec.hidden_size


def tied_lm_head_load_bytes(
    spec: ModelSpec, setup: TrainingSetup, weights: dict[str, int], *, from_pretrained: bool = False
) -> int:
    """Loading a tied model under ``torch.device("cuda")`` (trainer/build.py from_config): the lm_head Linear is
    created with its own [V, h] weight, then post_init ties it to the embedding and the copy is freed (measured:
    load peak - after load = V*h*2 on every tied model's run). from_pretrained (QLoRA, and every Unsloth method)
    ties before loading: none (H200 run u-g3-4-lora-gc: load peak 7.37 GiB, no 1.25 GiB [V, h] copy)."""
    if not spec.tie_word_embeddings or setup.method == "qlora" or from_pretrained:
        return 0
    return weights.get("weights.embeddings", 0)

