"""ModelSpec: the shapes of a Hugging Face causal LM, read from its config.json."""

from typing import Literal

from .fields import Field, model_validator

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
    "gpt_oss",
    "deepseek_v3",
    "glm4_moe",
    "smollm3",
    "olmo2",
    "olmo3",
    "granite",
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


class MlaSpec(Spec):
    """DeepSeek multi-head latent attention (modeling_deepseek_v3.py::DeepseekV3Attention).

    q: q_a_proj [h -> q_lora_rank] + q_a_layernorm + q_b_proj [-> nh*(nope+rope)], or one q_proj when
    q_lora_rank is None; kv: kv_a_proj_with_mqa [h -> kv_lora_rank + rope] + kv_a_layernorm +
    kv_b_proj [kv_lora_rank -> nh*(nope+v)]; o_proj [nh*v -> h].
    """

    q_lora_rank: int | None = Field(default=None, gt=0, le=MAX_HIDDEN_SIZE)
    kv_lora_rank: int = Field(gt=0, le=MAX_HIDDEN_SIZE)
    qk_nope_head_dim: int = Field(ge=0, le=MAX_HEAD_DIM)
    qk_rope_head_dim: int = Field(gt=0, le=MAX_HEAD_DIM)
    v_head_dim: int = Field(gt=0, le=MAX_HEAD_DIM)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


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
    #: parameter layout: "v5" gate_up_proj [E,2I,h], router mlp.gate; "gpt_oss" gate_up_proj [E,h,2I] with
    #: biases and router mlp.router (weight + bias); "deepseek" v5 experts, router mlp.gate with an fp32
    #: e_score_correction_bias buffer, shared experts under mlp.shared_experts
    layout: Literal["v5", "gpt_oss", "deepseek"] = "v5"

    @model_validator(mode="after")
    def _top_k_le_experts(self) -> "MoeSpec":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        return self


class TracedActivations(Spec):
    """Saved activations of one mode and kernel, traced (models/traced.py), in units of b*s*h bytes."""

    #: per decoder layer (average), linear in s
    layer_units: float
    #: per decoder layer, the quadratic part per token of s (eager scores); 0 for flash kernels
    layer_units_per_token: float
    #: per decoder layer, bytes that do not grow with s (Gemma-style fp32 1 + weight)
    layer_constant_bytes: float = 0.0
    #: final norm and lm_head input
    final_units: float


class TracedSpec(Spec):
    """What the traced path measured for a model type that is not hand-modelled (cached as JSON)."""

    model_type: str
    transformers_version: str
    #: parameters per role (vramplan.models.params.ROLES), tied weights once
    param_counts: dict[str, int]
    #: every nn.Linear kind of a decoder layer, and lm_head
    linears: tuple["LinearShape", ...]
    #: mode ("full": every parameter trains, "frozen": a LoRA/QLoRA base) -> kernel (sdpa|flash|eager)
    activations: dict[str, dict[str, TracedActivations]]
    cache_file: str = ""


class ModelSpec(Spec):
    """Architecture of a decoder-only causal LM: everything memory depends on, nothing else."""

    name: str
    #: a hand-modelled type (SUPPORTED_MODEL_TYPES), or any transformers type when `traced` is set
    model_type: str
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
    #: decoder layers that use the sliding window (None: all of them when sliding_window is set)
    sliding_layers: int | None = Field(default=None, ge=0, le=MAX_LAYERS)
    #: gpt-oss: a learned sink logit per head (self_attn.sinks [nh]) joins the softmax
    attention_sinks: bool = False
    #: DeepSeek-V3 multi-head latent attention; None for standard q/k/v attention
    mla: MlaSpec | None = None
    #: q_norm/k_norm span the whole q and k projections (OLMo 2/3: RMSNorm(nh*hd), RMSNorm(nkv*hd))
    qk_norm_projection: bool = False
    #: OLMo 2/3: norms after attention and after the MLP (no input norm): same count, other inputs
    post_norm: bool = False
    #: tanh soft-capping of attention scores / final logits (Gemma 2); finite and positive, None when off
    attn_logit_softcapping: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    final_logit_softcapping: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_position_embeddings: int | None = Field(default=None, gt=0, le=MAX_POSITIONS)
    #: dtype the checkpoint is stored in, as the config says (informative only)
    checkpoint_dtype: str | None = None
    #: where the config came from (catalog source, a path, or an HF cache folder)
    source: str = ""
    hf_id: str | None = None
    #: set for a model type that is not hand-modelled: shapes, counts and activations come from the trace
    traced: TracedSpec | None = None

    @model_validator(mode="after")
    def _type_is_modelled(self) -> "ModelSpec":
        if self.traced is None and self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not hand-modelled and has no trace")
        return self

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )
        return self

    @property
    def q_width(self) -> int:
        """Width of the attention queries (MLA: nh * (nope + rope))."""
        if self.mla is not None:
            return self.num_heads * self.mla.qk_head_dim
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of each of k and v as the attention kernel sees them (MLA: k is nh*(nope+rope) wide)."""
        if self.mla is not None:
            return self.num_heads * self.mla.qk_head_dim
        return self.num_kv_heads * self.head_dim

    @property
    def v_width(self) -> int:
        """Width of v and of the attention output (MLA: nh * v_head_dim)."""
        if self.mla is not None:
            return self.num_heads * self.mla.v_head_dim
        return self.kv_width

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
