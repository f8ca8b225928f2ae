"""Exact parameter counts and nn.Linear shapes of a ModelSpec, as transformers 5.23 builds the model.

Roles of `param_counts` (they add up to `total_params`; tied embeddings are counted once):

- `embed_tokens`: vocab x hidden.
- `lm_head`: vocab x hidden when untied, 0 when tied to the embeddings.
- `attention`: q/k/v/o (or Phi-3's fused qkv_proj) weights and biases.
- `qk_norm`: q_norm/k_norm weights (Qwen3, Gemma3: head_dim each; OLMoE: full projection width).
- `mlp`: dense MLP weights and biases, including Qwen2-MoE's shared expert and its gate.
- `experts`: the fused 3-D expert parameters of MoE layers (gate_up_proj [E,2I,h], down_proj [E,h,I]).
- `router`: the MoE router weight [E,h] (a bare nn.Parameter in transformers v5, not an nn.Linear).
- `norms`: per-layer RMSNorms (2, or 4 for Gemma 2/3) and the final norm.

`linear_shapes` lists every nn.Linear module. `name` is the module path inside a decoder layer
("self_attn.q_proj", "mlp.shared_expert.gate_proj"); its last component is what PEFT's
`target_modules` match. lm_head is always listed (role "lm_head", count 1): it is an nn.Linear
module even when tied, but then its weight is the embedding matrix, so it adds no parameters
(see `ModelSpec.tie_word_embeddings`). In v5, MoE experts and routers are not nn.Linear:
`expert_param_shapes` gives them.
"""

from functools import lru_cache
from math import prod

from ..specs.model import LinearShape, ModelSpec

ROLES = ("embed_tokens", "lm_head", "attention", "qk_norm", "mlp", "experts", "router", "norms")


def moe_layers(spec: ModelSpec) -> tuple[int, ...]:
    """Indices of decoder layers whose MLP is a sparse MoE block (empty for dense models)."""
    if spec.moe is None:
        return ()
    return tuple(i for i in range(spec.num_layers) if i not in spec.moe.dense_layers)


def linear_shapes(spec: ModelSpec) -> list[LinearShape]:
    """Every nn.Linear kind in the model with how many exist; kinds with count 0 are left out.

    Memoized per (frozen) ModelSpec: a `fit` search runs dozens of estimates of one model."""
    return list(_linear_shapes(spec))


@lru_cache(maxsize=64)
def _linear_shapes(spec: ModelSpec) -> tuple[LinearShape, ...]:
    moe, sparse = spec.moe, len(moe_layers(spec))
    shapes = _attention_linears(spec)
    dense_inter = (moe.dense_intermediate_size if moe else None) or spec.intermediate_size
    shapes += _mlp_linears(spec, "mlp.", dense_inter, spec.num_layers - sparse, "mlp")
    if moe and moe.shared_expert_intermediate_size:  # Qwen2-MoE: an always-on expert, gated by Linear(h, 1)
        shared = moe.shared_expert_intermediate_size
        shapes += _mlp_linears(spec, "mlp.shared_expert.", shared, sparse, "shared_expert")
        if moe.shared_expert_gate:
            shapes.append(_linear("mlp.shared_expert_gate", spec.hidden_size, 1, False, sparse, "shared_expert"))
    shapes.append(_linear("lm_head", spec.hidden_size, spec.vocab_size, False, 1, "lm_head"))
    return tuple(s for s in shapes if s.count > 0)


def expert_param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Shapes of the non-Linear MoE parameters of ONE sparse layer (multiply by len(moe_layers)).

    transformers v5 `<Family>Experts` holds gate_up_proj [E, 2I, h] and down_proj [E, h, I];
    `<Family>TopKRouter` holds weight [E, h]. Empty for dense models.
    """
    if spec.moe is None:
        return {}
    e, i, h = spec.moe.num_experts, spec.moe.expert_intermediate_size, spec.hidden_size
    return {"mlp.experts.gate_up_proj": (e, 2 * i, h), "mlp.experts.down_proj": (e, h, i), "mlp.gate.weight": (e, h)}


def param_counts(spec: ModelSpec) -> dict[str, int]:
    """Parameters per role (see module docstring); values add up to `total_params`."""
    return dict(_param_counts(spec))


@lru_cache(maxsize=64)
def _param_counts(spec: ModelSpec) -> dict[str, int]:
    counts = dict.fromkeys(ROLES, 0)
    embed = spec.vocab_size * spec.hidden_size
    counts["embed_tokens"] = embed
    counts["lm_head"] = 0 if spec.tie_word_embeddings else embed
    for s in linear_shapes(spec):
        if s.role != "lm_head":
            role = "attention" if s.role == "attention" else "mlp"
            counts[role] += s.count * (s.in_features * s.out_features + (s.out_features if s.bias else 0))
    counts["qk_norm"] = spec.num_layers * _qk_norm_width(spec)
    n_moe = len(moe_layers(spec))
    shapes = expert_param_shapes(spec)
    counts["experts"] = n_moe * sum(prod(v) for k, v in shapes.items() if k.startswith("mlp.experts."))
    counts["router"] = n_moe * prod(shapes["mlp.gate.weight"]) if shapes else 0
    counts["norms"] = (spec.num_layers * spec.norms_per_layer + 1) * spec.hidden_size
    return counts


def total_params(spec: ModelSpec) -> int:
    """sum(p.numel() for p in model.parameters()) of the transformers model (tied weights once)."""
    return sum(param_counts(spec).values())


def active_params_per_token(spec: ModelSpec) -> int:
    """Parameters a token passes through: all but the experts it is not routed to (top_k of E)."""
    experts = param_counts(spec)["experts"]
    if spec.moe is None:
        return total_params(spec)
    return total_params(spec) - experts + experts * spec.moe.top_k // spec.moe.num_experts


def quantizable_params(spec: ModelSpec) -> int:
    """Weight elements bitsandbytes quantizes: every nn.Linear weight except lm_head.

    transformers keeps lm_head (the output embedding, also tied keys) unquantized
    (quantizers/base.py get_keys_to_not_convert); biases, norms, embeddings and v5's fused MoE
    expert/router Parameters are not nn.Linear weights and stay in the load dtype.
    """
    return sum(s.count * s.in_features * s.out_features for s in linear_shapes(spec) if s.role != "lm_head")


def largest_linear(spec: ModelSpec) -> tuple[int, int]:
    """(out_features, in_features) of the largest quantizable nn.Linear (by weight elements)."""
    biggest = max((s for s in linear_shapes(spec) if s.role != "lm_head"), key=lambda s: s.in_features * s.out_features)
    return biggest.out_features, biggest.in_features


def _attention_linears(spec: ModelSpec) -> list[LinearShape]:
    h, q, kv, n = spec.hidden_size, spec.q_width, spec.kv_width, spec.num_layers
    out = _linear("self_attn.o_proj", q, h, spec.attention_out_bias, n, "attention")
    if spec.fused_qkv:
        return [_linear("self_attn.qkv_proj", h, q + 2 * kv, spec.attention_bias, n, "attention"), out]
    return [
        _linear("self_attn.q_proj", h, q, spec.attention_bias, n, "attention"),
        _linear("self_attn.k_proj", h, kv, spec.attention_bias, n, "attention"),
        _linear("self_attn.v_proj", h, kv, spec.attention_bias, n, "attention"),
        out,
    ]


def _mlp_linears(spec: ModelSpec, prefix: str, inter: int, count: int, role: str) -> list[LinearShape]:
    h, bias = spec.hidden_size, spec.mlp_bias
    down = _linear(prefix + "down_proj", inter, h, bias, count, role)
    if spec.fused_gate_up:
        return [_linear(prefix + "gate_up_proj", h, 2 * inter, bias, count, role), down]
    return [
        _linear(prefix + "gate_proj", h, inter, bias, count, role),
        _linear(prefix + "up_proj", h, inter, bias, count, role),
        down,
    ]


def _qk_norm_width(spec: ModelSpec) -> int:
    """q_norm + k_norm weight elements per layer. OLMoE: OlmoeRMSNorm(hidden_size) on q and
    OlmoeRMSNorm((hidden_size // heads) * kv_heads) on k (modeling_olmoe.py)."""
    if not spec.qk_norm:
        return 0
    if spec.qk_norm_per_head:
        return 2 * spec.head_dim
    return spec.hidden_size + (spec.hidden_size // spec.num_heads) * spec.num_kv_heads


def _linear(name: str, in_f: int, out_f: int, bias: bool, count: int, role: str) -> LinearShape:
    return LinearShape(name=name, in_features=in_f, out_features=out_f, bias=bias, count=count, role=role)
