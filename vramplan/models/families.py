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
}


@dataclass(frozen=True)
class Family:
    """Choices the modeling code hard-wires, per model_type."""

    #: config key that switches the q/k/v bias on, True/False when hard-wired
    qkv_bias: str | bool = "attention_bias"
    #: o_proj bias: same key as q/k/v, or hard-wired
    o_bias: str | bool = "attention_bias"
    mlp_bias: str | bool = False
    #: None, per-head q/k RMSNorm (head_dim wide), or OLMoE's full-width q/k norm
    qk_norm: Literal["per_head", "full"] | None = None
    norms_per_layer: int = 2
    fused: bool = False
    #: which MoE layout the family builds (None: dense)
    moe: Literal["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"] | None = None
    #: sliding_window only counts when use_sliding_window is true (Qwen families)
    sliding_gated: bool = False
    #: sliding_window is not a config field of the family (ignored when present)
    sliding_ignored: bool = False
    act_key: str = "hidden_act"


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
}

#: config keys that never change shapes but deserve a note when a config carries them
IGNORED_KEY_NOTES = {
    "auto_map": "auto_map ignored: no code from a model repository is ever run",
    "quantization_config": "quantization_config read for the QLoRA settings only (bitsandbytes; flags override it); "
    "shapes are those of the unquantized model",
    "quantization": "quantization (MLX conversion keys) ignored: shapes are those of the unquantized model",
    "_attn_implementation": "_attn_implementation ignored: the training setup decides the attention kernel",
}
