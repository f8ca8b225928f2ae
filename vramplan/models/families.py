"""What each supported `model_type` builds, copied from transformers 5.23 (never imported).

`DEFAULTS` are the config-class field defaults that transformers uses when a config.json leaves a
key out (`models/<family>/configuration_<family>.py`); only keys that change parameter shapes, or
that ModelSpec reports, are copied. `Family` records the choices the modeling code hard-wires
(`models/<family>/modeling_<family>.py`): which projections carry a bias, q/k norms, sandwich
norms, fused projections, and the MoE layout.
"""

from dataclasses import dataclass
from typing import Any, Literal

#: keys every config of these families must state (transformers would silently use a toy default)
REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")

# Gemma3TextConfig field defaults (transformers/models/gemma3/configuration_gemma3.py, v5.23).
# Gemma 3 multimodal config.json files rely on them: their text_config often omits heads, kv heads,
# head_dim and vocab_size.
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "sliding_window": 4096,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}

DEFAULTS: dict[str, dict[str, Any]] = {
    # configuration_llama.py: num_key_value_heads/head_dim None -> derived in __post_init__
    "llama": {
        "num_key_value_heads": None,
        "head_dim": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
    },
    # configuration_mistral.py: NB num_key_value_heads defaults to 8, sliding_window to 4096
    "mistral": {
        "num_key_value_heads": 8,
        "head_dim": None,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "max_position_embeddings": 4096 * 32,
        "sliding_window": 4096,
    },
    # configuration_qwen2.py: sliding_window only applies when use_sliding_window
    "qwen2": {
        "num_key_value_heads": 32,
        "head_dim": None,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": 4096,
    },
    # configuration_qwen3.py: NB head_dim defaults to 128, not hidden_size // heads
    "qwen3": {
        "num_key_value_heads": 32,
        "head_dim": 128,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": 4096,
    },
    # configuration_gemma2.py: Gemma ties embeddings by default; softcapping on by default
    "gemma2": {
        "num_key_value_heads": 4,
        "head_dim": 256,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "sliding_window": 4096,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
    },
    "gemma3_text": GEMMA3_TEXT_DEFAULTS,
    # configuration_phi3.py
    "phi3": {
        "num_key_value_heads": None,
        "head_dim": None,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "sliding_window": None,
    },
    # configuration_mixtral.py: experts use intermediate_size
    "mixtral": {
        "num_key_value_heads": 8,
        "head_dim": None,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "max_position_embeddings": 4096 * 32,
        "sliding_window": None,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
    },
    # configuration_qwen2_moe.py: q/k/v bias from qkv_bias (default True)
    "qwen2_moe": {
        "num_key_value_heads": 16,
        "head_dim": None,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "qkv_bias": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": None,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
    },
    # configuration_qwen3_moe.py: no head_dim field, so hidden_size // heads unless the config says
    "qwen3_moe": {
        "num_key_value_heads": 4,
        "head_dim": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "decoder_sparse_step": 1,
        "mlp_only_layers": None,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
    },
    # configuration_olmoe.py: experts use intermediate_size; every layer is MoE
    "olmoe": {
        "num_key_value_heads": None,
        "head_dim": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "num_experts": 64,
        "num_experts_per_tok": 8,
    },
    # configuration_gpt_oss.py: every projection biased, 128-token window on the sliding layers
    "gpt_oss": {
        "num_key_value_heads": 8,
        "head_dim": 64,
        "tie_word_embeddings": False,
        "attention_bias": True,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "sliding_window": 128,
        "layer_types": None,
        "num_local_experts": 128,
        "num_experts_per_tok": 4,
    },
    # configuration_deepseek_v3.py: MLA ranks and dims, routed + shared experts after the dense layers
    "deepseek_v3": {
        "num_key_value_heads": 128,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 2048,
        "first_k_dense_replace": 3,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
    },
    # configuration_glm4_moe.py: no head_dim field (modeling reads getattr(config, "head_dim", h // nh))
    "glm4_moe": {
        "num_key_value_heads": 8,
        "head_dim": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "n_routed_experts": 128,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 1408,
        "first_k_dense_replace": 1,
        "use_qk_norm": False,
    },
    # configuration_smollm3.py: NB ties embeddings by default; no_rope_layers changes no shape
    "smollm3": {
        "num_key_value_heads": 4,
        "head_dim": None,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": None,
    },
    # configuration_olmo2.py
    "olmo2": {
        "num_key_value_heads": None,
        "head_dim": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
    },
    # configuration_olmo3.py: layer_types None -> every 4th layer full, the others sliding (4096)
    "olmo3": {
        "num_key_value_heads": None,
        "head_dim": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "sliding_window": 4096,
        "layer_types": None,
    },
    # configuration_granite.py: embedding/residual/attention multipliers and logits_scaling change no shape
    "granite": {
        "num_key_value_heads": None,
        "head_dim": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
    },
}


@dataclass(frozen=True)
class Family:
    """Choices the modeling code hard-wires, per model_type."""

    #: config key that switches the q/k/v bias on, True/False when hard-wired
    qkv_bias: str | bool = "attention_bias"
    #: o_proj bias: same key as q/k/v, or hard-wired
    o_bias: str | bool = "attention_bias"
    mlp_bias: str | bool = False
    #: None, per-head q/k RMSNorm (head_dim wide), OLMoE's full-width q/k norm, or OLMo 2's projection-wide one
    qk_norm: Literal["per_head", "full", "projection"] | None = None
    #: config key that switches the per-head q/k norm on (GLM-4.5: use_qk_norm); None when hard-wired
    qk_norm_key: str | None = None
    norms_per_layer: int = 2
    fused: bool = False
    #: which MoE layout the family builds (None: dense)
    moe: Literal["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek"] | None = None
    #: sliding_window only counts when use_sliding_window is true (Qwen families)
    sliding_gated: bool = False
    #: sliding_window is not a config field of the family (ignored when present)
    sliding_ignored: bool = False
    act_key: str = "hidden_act"
    #: layer_types decides which layers slide (gpt-oss, OLMo 3, SmolLM3)
    sliding_by_layer_types: bool = False
    #: a learned per-head sink logit (gpt-oss)
    sinks: bool = False
    #: multi-head latent attention (DeepSeek-V3, Kimi-K2, Moonlight)
    mla: bool = False
    #: norms after attention and MLP instead of before (OLMo 2/3)
    post_norm: bool = False


FAMILIES: dict[str, Family] = {
    "llama": Family(mlp_bias="mlp_bias", sliding_ignored=True),  # LlamaAttention/LlamaMLP
    "mistral": Family(qkv_bias=False, o_bias=False),  # MistralAttention: bias=False throughout
    "qwen2": Family(qkv_bias=True, o_bias=False, sliding_gated=True),  # Qwen2Attention: q/k/v bias=True, o none
    "qwen3": Family(qk_norm="per_head", sliding_gated=True),  # Qwen3RMSNorm(head_dim) on q and k
    "gemma2": Family(norms_per_layer=4, act_key="hidden_activation"),  # pre/post attn + pre/post ffw norms
    "gemma3_text": Family(qk_norm="per_head", norms_per_layer=4, act_key="hidden_activation"),
    "phi3": Family(qkv_bias=False, o_bias=False, fused=True),  # qkv_proj, gate_up_proj, no bias
    "mixtral": Family(qkv_bias=False, o_bias=False, moe="mixtral"),
    "qwen2_moe": Family(qkv_bias="qkv_bias", o_bias=False, moe="qwen2_moe", sliding_gated=True),
    "qwen3_moe": Family(qk_norm="per_head", moe="qwen3_moe", sliding_gated=True),
    "olmoe": Family(qk_norm="full", moe="olmoe", sliding_ignored=True),  # OlmoeRMSNorm(hidden_size) on q
    # GptOssAttention: q/k/v/o bias=attention_bias, sinks [nh]; GptOssExperts with biases; GptOssTopKRouter w + b
    "gpt_oss": Family(moe="gpt_oss", sinks=True, sliding_by_layer_types=True),
    # DeepseekV3Attention: MLA, q_a/kv_a bias=attention_bias, others none; DeepseekV3MoE after first_k_dense_replace
    "deepseek_v3": Family(o_bias="attention_bias", mla=True, moe="deepseek", sliding_ignored=True),
    # Glm4MoeAttention: q/k/v bias=attention_bias, o_proj bias=False, q/k norm per head when use_qk_norm
    "glm4_moe": Family(o_bias=False, qk_norm="per_head", qk_norm_key="use_qk_norm", moe="deepseek", sliding_ignored=True),
    # SmolLM3Attention: q/k/v/o bias=attention_bias; SmolLM3MLP bias=mlp_bias; NoPE layers skip RoPE
    "smollm3": Family(mlp_bias="mlp_bias", sliding_gated=True, sliding_by_layer_types=True),
    # Olmo2Attention: q_norm RMSNorm(nh*hd), k_norm RMSNorm(nkv*hd); post_attention/post_feedforward norms
    "olmo2": Family(qk_norm="projection", post_norm=True, sliding_ignored=True),
    "olmo3": Family(qk_norm="projection", post_norm=True, sliding_by_layer_types=True),
    # GraniteAttention/GraniteMLP: Llama layout; the multipliers are scalars
    "granite": Family(mlp_bias="mlp_bias", sliding_ignored=True),
}

#: config keys that never change shapes but deserve a note when a config carries them
IGNORED_KEY_NOTES = {
    "auto_map": "auto_map ignored: no code from a model repository is ever run",
    "quantization_config": "quantization_config read for the QLoRA settings only (bitsandbytes; flags override it); "
    "shapes are those of the unquantized model",
    "quantization": "quantization (MLX conversion keys) ignored: shapes are those of the unquantized model",
    "_attn_implementation": "_attn_implementation ignored: the training setup decides the attention kernel",
}

#: what an estimate of each family assumes about the modeling code (shown in `assumptions`)
FAMILY_NOTES: dict[str, tuple[str, ...]] = {
    "gpt_oss": (
        "gpt-oss: transformers has no SDPA path (_supports_sdpa=False): --attn sdpa is costed as eager; "
        "--attn flash as a sink-aware flash kernel (kernels-community/vllm-flash-attn3)",
        "gpt-oss: MoE experts (with biases) and router are not nn.Linear: LoRA all-linear wraps attention only "
        "(PEFT 0.21) and bitsandbytes does not quantize them",
    ),
    "deepseek_v3": (
        "deepseek_v3: num_nextn_predict_layers (MTP) weights are not built by transformers: not counted",
        "deepseek_v3: router weight and e_score_correction_bias kept in fp32 (_keep_in_fp32_modules_strict)",
    ),
    "glm4_moe": (
        "glm4_moe: num_nextn_predict_layers (MTP) weights are not built by transformers: not counted",
        "glm4_moe: router weight and e_score_correction_bias kept in fp32 (_keep_in_fp32_modules_strict)",
    ),
    "smollm3": ("smollm3: NoPE layers skip RoPE, which saves nothing either way: memory is unchanged",),
    "granite": (
        "granite: embedding/residual/attention multipliers are scalar multiplies (nothing saved); logits_scaling "
        "divides the logits into a second bf16 tensor that is freed before the fp32 loss upcast: memory unchanged",
    ),
}

#: quantization methods a config may carry, and what training does with them
QUANT_METHOD_NOTES = {
    "mxfp4": (
        "quantization_config mxfp4 (gpt-oss checkpoint): costed dequantized to bf16, MXFP4 only on disk: Trainer "
        "refuses a model kept in MXFP4 even with LoRA adapters (trainer_utils.py: Mxfp4HfQuantizer.is_trainable is "
        "False), so training loads it with Mxfp4Config(dequantize=True), as transformers also does without "
        "triton>=3.4 + kernels (quantizer_mxfp4.py); attention, router, embeddings and lm_head are bf16 in the checkpoint"
    ),
}
