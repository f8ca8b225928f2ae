"""ModelSpec: the shapes of a Hugging Face causal LM, read from its config.json."""

from typing import Literal

from pydantic import Field, model_validator

from .base import Spec

SUPPORTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
)


#: shapes beyond these are refused as absurd: the largest real decoders are far below (Llama 3.1 405B: hidden 16384,
#: 126 layers, 128 heads, intermediate 53248; Gemma 3 vocabulary 262144; DeepSeek-V3 256 routed experts)
MAX_HIDDEN_SIZE = 262_144
MAX_LAYERS = 2048
MAX_HEADS = 8192
MAX_HEAD_DIM = 8192
MAX_INTERMEDIATE_SIZE = 1_048_576
MAX_VOCAB_SIZE = 16_777_216
MAX_EXPERTS = 65_536
MAX_POSITIONS = 1 << 30


class MoeSpec(Spec):
    """Mixture-of-experts block shapes (per MoE layer)."""

    num_experts: int = Field(gt=0, le=MAX_EXPERTS)
    top_k: int = Field(gt=0, le=MAX_EXPERTS)
    expert_intermediate_size: int = Field(gt=0, le=MAX_INTERMEDIATE_SIZE)
    #: intermediate size of the always-on shared expert (Qwen2-MoE); None when absent
    shared_expert_intermediate_size: int | None = None
    #: Qwen2-MoE gates the shared expert with a Linear(h, 1)
    shared_expert_gate: bool = False
    #: indices of decoder layers whose MLP is dense instead of MoE (Qwen2/3-MoE mlp_only_layers, sparse step)
    dense_layers: tuple[int, ...] = ()
    #: intermediate size of those dense MLPs (config.intermediate_size)
    dense_intermediate_size: int | None = None

    @model_validator(mode="after")
    def _top_k_le_experts(self) -> "MoeSpec":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        return self


class ModelSpec(Spec):
    """Architecture of a decoder-only causal LM: everything memory depends on, nothing else."""

    name: str
    model_type: Literal[SUPPORTED_MODEL_TYPES]  # type: ignore[valid-type]
    hidden_size: int = Field(gt=0, le=MAX_HIDDEN_SIZE)
    num_layers: int = Field(gt=0, le=MAX_LAYERS)
    num_heads: int = Field(gt=0, le=MAX_HEADS)
    num_kv_heads: int = Field(gt=0, le=MAX_HEADS)
    head_dim: int = Field(gt=0, le=MAX_HEAD_DIM)
    #: dense MLP intermediate size (for MoE models: the dense-layer size, if any)
    intermediate_size: int = Field(gt=0, le=MAX_INTERMEDIATE_SIZE)
    vocab_size: int = Field(gt=0, le=MAX_VOCAB_SIZE)
    tie_word_embeddings: bool
    attention_bias: bool = False
    #: bias on o_proj too (separately configurable in some families)
    attention_out_bias: bool = False
    mlp_bias: bool = False
    #: per-head RMSNorm on q and k (Qwen3, Gemma3, OLMoE)
    qk_norm: bool = False
    #: width of the q/k norm weights: head_dim (Qwen3, Gemma3) or full projection width (OLMoE)
    qk_norm_per_head: bool = True
    #: RMSNorms per decoder layer: 2 (Llama) or 4 (Gemma2/3 sandwich norms)
    norms_per_layer: int = Field(default=2, ge=1, le=4)
    #: Phi-3 fuses q,k,v into qkv_proj and gate,up into gate_up_proj
    fused_qkv: bool = False
    fused_gate_up: bool = False
    hidden_act: str = "silu"
    moe: MoeSpec | None = None
    sliding_window: int | None = Field(default=None, gt=0, le=MAX_POSITIONS)
    #: tanh soft-capping of attention scores / final logits (Gemma 2); finite and positive, None when off
    attn_logit_softcapping: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    final_logit_softcapping: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_position_embeddings: int | None = Field(default=None, gt=0, le=MAX_POSITIONS)
    #: dtype the checkpoint is stored in, as the config says (informative only)
    checkpoint_dtype: str | None = None
    #: where the config came from (catalog source, a path, or an HF cache folder)
    source: str = ""
    hf_id: str | None = None

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )
        return self

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.moe is not None


class LinearShape(Spec):
    """One nn.Linear kind inside a decoder layer (or lm_head), and how many exist in the model."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    #: how many such modules in the whole model
    count: int
    #: quantizable by bitsandbytes and a LoRA target under all-linear
    role: Literal["attention", "mlp", "router", "shared_expert", "lm_head"]
