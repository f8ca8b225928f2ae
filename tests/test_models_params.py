"""Parameter counts and nn.Linear shapes checked against transformers building each model on `meta`.

Every shipped model, plus small synthetic configs for features no shipped model has (Qwen2-MoE,
dense layers inside MoE models, biases, defaults), is built with
`AutoModelForCausalLM.from_config` on the meta device: no weights, no network, no remote code.
"""

import dataclasses
import json
import os
import re
from collections import Counter
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vramplan.models import (  # noqa: E402
    ROLES,
    active_params_per_token,
    expert_param_shapes,
    largest_linear,
    linear_shapes,
    list_models,
    load_raw_config,
    moe_layers,
    param_counts,
    parse_config,
    quantizable_params,
    resolve_model,
    total_params,
)
from vramplan.models.families import DEFAULTS  # noqa: E402

CATALOG = [e.name for e in list_models()]

_TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 96,
    "vocab_size": 101,
}

#: configs exercising what no shipped model has; each is compared with transformers like the catalog
SYNTHETIC = {
    "llama-biases": {
        **_TINY,
        "model_type": "llama",
        "attention_bias": True,
        "mlp_bias": True,
        "num_key_value_heads": 2,
    },
    "llama-no-kv-key": {**_TINY, "model_type": "llama", "tie_word_embeddings": True},
    "mistral-default-kv": {**_TINY, "model_type": "mistral", "num_attention_heads": 16, "attention_bias": True},
    "qwen2-bias-key-ignored": {**_TINY, "model_type": "qwen2", "num_key_value_heads": 2, "attention_bias": False},
    "qwen3-default-head-dim": {**_TINY, "model_type": "qwen3", "num_key_value_heads": 2},
    "qwen3-attention-bias": {
        **_TINY,
        "model_type": "qwen3",
        "num_key_value_heads": 4,
        "head_dim": 8,
        "attention_bias": True,
    },
    "gemma2-defaults": {**_TINY, "model_type": "gemma2", "num_key_value_heads": 2, "head_dim": 32},
    "gemma3-text-minimal": {
        "model_type": "gemma3_text",
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "intermediate_size": 80,
    },
    "phi3-gqa": {**_TINY, "model_type": "phi3", "num_key_value_heads": 1, "pad_token_id": 0},
    "mixtral-num-experts-alias": {**_TINY, "model_type": "mixtral", "num_key_value_heads": 2, "num_experts": 4},
    "olmoe-gqa": {**_TINY, "model_type": "olmoe", "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2},
    "qwen2-moe": {
        **_TINY,
        "model_type": "qwen2_moe",
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [3],
    },
    "qwen2-moe-no-qkv-bias": {
        **_TINY,
        "model_type": "qwen2_moe",
        "qkv_bias": False,
        "num_key_value_heads": 4,
        "num_experts": 4,
        "num_experts_per_tok": 1,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 24,
    },
    "qwen3-moe-dense-layers": {
        **_TINY,
        "model_type": "qwen3_moe",
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 24,
        "mlp_only_layers": [0, 2],
    },
    "gpt-oss": {
        **_TINY,
        "model_type": "gpt_oss",
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
    },
    "gpt-oss-no-bias-layer-types": {
        **_TINY,
        "model_type": "gpt_oss",
        "attention_bias": False,
        "num_key_value_heads": 4,
        "head_dim": 8,
        "num_local_experts": 3,
        "num_experts_per_tok": 1,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    },
    "deepseek-v3-mla-q-lora": {
        **_TINY,
        "model_type": "deepseek_v3",
        "num_key_value_heads": 4,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "n_shared_experts": 2,
        "first_k_dense_replace": 1,
        "q_lora_rank": 48,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 4,
        "v_head_dim": 12,
        "n_group": 2,
        "topk_group": 1,
    },
    "deepseek-v3-q-lora-null-bias": {
        **_TINY,
        "model_type": "deepseek_v3",
        "attention_bias": True,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "first_k_dense_replace": 2,
        "q_lora_rank": None,
        "kv_lora_rank": 24,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_group": 1,
        "topk_group": 1,
    },
    "glm4-moe-qk-norm-bias": {
        **_TINY,
        "model_type": "glm4_moe",
        "num_key_value_heads": 2,
        "head_dim": 24,
        "attention_bias": True,
        "use_qk_norm": True,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
    },
    "glm4-moe-defaults": {**_TINY, "model_type": "glm4_moe", "num_key_value_heads": 2, "n_routed_experts": 4,
                          "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_group": 1, "topk_group": 1},
    "smollm3-nope": {**_TINY, "model_type": "smollm3", "pad_token_id": 0, "num_key_value_heads": 2, "no_rope_layers": [1, 1, 1, 0]},
    "smollm3-biases-untied": {**_TINY, "model_type": "smollm3", "pad_token_id": 0, "attention_bias": True, "mlp_bias": True,
                              "tie_word_embeddings": False},
    "olmo2-gqa": {**_TINY, "model_type": "olmo2", "num_key_value_heads": 2},
    "olmo3-sliding": {**_TINY, "model_type": "olmo3", "num_key_value_heads": 1, "sliding_window": 16},
    "granite-multipliers": {**_TINY, "model_type": "granite", "num_key_value_heads": 2, "attention_bias": True,
                            "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "logits_scaling": 8.0},
}


def _role(name: str) -> str:
    """Role of a transformers parameter name, as vramplan.models.params defines roles."""
    if name.endswith("embed_tokens.weight"):
        return "embed_tokens"
    if name.startswith("lm_head."):
        return "lm_head"
    if ".self_attn.q_norm." in name or ".self_attn.k_norm." in name:
        return "qk_norm"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.experts." in name:
        return "experts"
    if name.endswith(".mlp.gate.weight") or ".mlp.router." in name:
        return "router"
    if ".mlp." in name:
        return "mlp"
    if "norm" in name:
        return "norms"
    raise AssertionError(f"unclassified parameter {name}")


def _in_layer(name: str) -> str:
    return re.sub(r"^model\.layers\.\d+\.", "", name)


@dataclasses.dataclass(frozen=True)
class Built:
    roles: dict[str, int]
    total: int
    linears: dict[tuple, int]
    other_shapes: dict[str, Counter]


@cache
def _build(raw_json: str) -> Built:
    """Build on meta and summarise (cached: each model is built once for all tests)."""
    config = transformers.AutoConfig.for_model(**json.loads(raw_json))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    roles = dict.fromkeys(ROLES, 0)
    other: dict[str, Counter] = {}
    for name, p in model.named_parameters():
        role = _role(name)
        roles[role] += p.numel()
        if role in ("experts", "router"):
            other.setdefault(_in_layer(name), Counter())[tuple(p.shape)] += 1
    linears = Counter(
        (_in_layer(name), m.in_features, m.out_features, m.bias is not None)
        for name, m in model.named_modules()
        if type(m) is torch.nn.Linear
    )
    total = sum(p.numel() for p in model.parameters())
    return Built(roles, total, dict(linears), other)


def _cases():
    for name in CATALOG:
        yield pytest.param(lambda n=name: (resolve_model(n), load_raw_config(n)), id=name)
    for case, raw in SYNTHETIC.items():
        yield pytest.param(lambda r=raw, c=case: (parse_config(r, name=c, source="test"), r), id=case)


@pytest.mark.parametrize("make", _cases())
def test_role_counts_equal_transformers(make):
    spec, raw = make()
    built = _build(json.dumps(raw, sort_keys=True))
    assert param_counts(spec) == built.roles
    assert total_params(spec) == built.total


@pytest.mark.parametrize("make", _cases())
def test_linear_modules_equal_transformers(make):
    spec, raw = make()
    built = _build(json.dumps(raw, sort_keys=True))
    ours = {(s.name, s.in_features, s.out_features, s.bias): s.count for s in linear_shapes(spec)}
    assert ours == built.linears


@pytest.mark.parametrize("make", _cases())
def test_expert_and_router_parameters_equal_transformers(make):
    spec, raw = make()
    built = _build(json.dumps(raw, sort_keys=True))
    n_moe = len(moe_layers(spec))
    ours = {name: Counter({shape: n_moe}) for name, shape in expert_param_shapes(spec).items()}
    assert ours == built.other_shapes


@pytest.mark.parametrize("model_type", sorted(DEFAULTS))
def test_copied_defaults_equal_transformers_config_fields(model_type):
    cls = transformers.CONFIG_MAPPING[model_type]
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    copied = {k: v for k, v in DEFAULTS[model_type].items() if k in fields}
    assert copied == {k: fields[k] for k in copied}
    # keys copied without a config field must be ones the modeling code reads with getattr(..., default)
    assert set(DEFAULTS[model_type]) - set(fields) <= {"head_dim"}


def test_llama_3_1_8b_counts_by_hand():
    h, inter, layers, vocab, kv = 4096, 14336, 32, 128256, 1024
    counts = param_counts(resolve_model("llama-3.1-8b"))
    assert counts["embed_tokens"] == counts["lm_head"] == vocab * h
    assert counts["attention"] == layers * (2 * h * h + 2 * h * kv)
    assert counts["mlp"] == layers * 3 * h * inter
    assert counts["norms"] == (2 * layers + 1) * h
    assert counts["experts"] == counts["router"] == counts["qk_norm"] == 0


def test_tied_model_lists_lm_head_but_counts_it_zero():
    spec = resolve_model("llama-3.2-1b")
    assert spec.tie_word_embeddings
    assert param_counts(spec)["lm_head"] == 0
    assert [s for s in linear_shapes(spec) if s.role == "lm_head"][0].out_features == spec.vocab_size


def test_quantizable_params_are_linear_weights_without_lm_head():
    spec = resolve_model("qwen2.5-7b")  # has q/k/v biases: they are not quantized
    counts = param_counts(spec)
    biases = spec.num_layers * (spec.q_width + 2 * spec.kv_width)
    assert quantizable_params(spec) == counts["attention"] - biases + counts["mlp"]


def test_moe_experts_are_not_quantizable_linears():
    spec = resolve_model("mixtral-8x7b-v0.1")
    assert quantizable_params(spec) == param_counts(spec)["attention"]
    assert largest_linear(spec) == (4096, 4096)


def test_largest_linear_is_out_in_of_biggest_weight():
    assert largest_linear(resolve_model("llama-3.1-8b")) == (14336, 4096)  # gate_proj
    assert largest_linear(resolve_model("phi-3-mini-4k-instruct")) == (2 * 8192, 3072)  # gate_up_proj


@pytest.mark.parametrize(
    ("name", "active"),
    # reference/model_configs/INDEX.md, "active/token" column
    [("mixtral-8x7b-v0.1", 12_879_925_248), ("olmoe-1b-7b-0924", 1_282_017_280), ("qwen3-30b-a3b", 3_353_032_704)],
)
def test_active_params_per_token_matches_reference(name, active):
    assert active_params_per_token(resolve_model(name)) == active


def test_dense_model_active_params_are_all_params():
    spec = resolve_model("qwen3-8b")
    assert active_params_per_token(spec) == total_params(spec)


@st.composite
def _random_configs(draw):
    """Small configs of every family with random shapes and flags (vocab > every family's pad id)."""
    model_type = draw(st.sampled_from(sorted(DEFAULTS)))
    kv = draw(st.integers(1, 4))
    heads = kv * draw(st.integers(1, 3))
    raw = {
        "model_type": model_type,
        "hidden_size": heads * draw(st.integers(1, 4)) * 4,
        "num_hidden_layers": draw(st.integers(1, 5)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": draw(st.integers(1, 48)),
        "vocab_size": draw(st.integers(32_100, 32_200)),
        "tie_word_embeddings": draw(st.booleans()),
        "pad_token_id": 0,
    }
    if draw(st.booleans()):
        raw["head_dim"] = 2 * draw(st.integers(1, 12))  # RoPE needs an even head_dim
    for flag in ("attention_bias", "mlp_bias", "qkv_bias"):
        if draw(st.booleans()):
            raw[flag] = draw(st.booleans())
    if model_type in ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "gpt_oss", "deepseek_v3", "glm4_moe"):
        experts = draw(st.integers(1, 6))
        raw.update(num_experts=experts, num_local_experts=experts, num_experts_per_tok=draw(st.integers(1, experts)))
        raw.update(n_routed_experts=experts, n_shared_experts=draw(st.integers(1, 2)), n_group=1, topk_group=1)
        raw.update(first_k_dense_replace=draw(st.integers(0, 2)), use_qk_norm=draw(st.booleans()))
        raw.update(
            moe_intermediate_size=draw(st.integers(1, 32)), shared_expert_intermediate_size=draw(st.integers(1, 32))
        )
        raw.update(decoder_sparse_step=draw(st.integers(1, 3)), mlp_only_layers=draw(st.lists(st.integers(0, 5))))
    return raw


@settings(max_examples=60, deadline=None)
@given(_random_configs())
def test_random_configs_of_every_family_equal_transformers(raw):
    spec = parse_config(raw, name="random", source="hypothesis")
    built = _build(json.dumps(raw, sort_keys=True))
    assert param_counts(spec) == built.roles
    assert {(s.name, s.in_features, s.out_features, s.bias): s.count for s in linear_shapes(spec)} == built.linears
