"""Hugging Face config.json (a dict) -> ModelSpec. Shapes only: nothing is imported or executed.

Keys that do not change shapes (torch_dtype, quantization keys, auto_map, _attn_implementation,
rope settings ...) are never followed; `config_notes` lists the noteworthy ones so an estimate
can say it ignored them.
"""

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
import math

from ..specs import ValidationError
from ..specs import model as shapes
from ..specs.model import SUPPORTED_MODEL_TYPES, MlaSpec, ModelSpec, MoeSpec
from .families import (
    DEFAULTS,
    FAMILIES,
    FAMILY_NOTES,
    GEMMA3_TEXT_DEFAULTS,
    IGNORED_KEY_NOTES,
    QUANT_METHOD_NOTES,
    REQUIRED_KEYS,
    Family,
)

#: model_type values transformers does not register whose `architectures` name a class it has: the
#: config is read as that class's model_type (Kimi-K2's config.json says kimi_k2 + DeepseekV3ForCausalLM)
MODEL_TYPE_ALIASES = {("kimi_k2", "DeepseekV3ForCausalLM"): "deepseek_v3"}

#: keys a trainer must not hand to transformers: they describe a copy, not the architecture
_COPY_KEYS = ("auto_map", "quantization", "quantization_config", "_attn_implementation", "_attn_implementation_autoset")


def text_config(config: Any) -> dict:
    """The decoder-only config inside `config`: a Gemma 3 multimodal config's `text_config` with
    transformers' Gemma3TextConfig defaults filled in and model_type `gemma3_text`; otherwise the
    config itself. Keys that describe a copy (auto_map, quantization, _attn_implementation) are dropped.

    Raises ConfigError when `config` is not a JSON object or has no usable model_type.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"config.json must hold a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type == "gemma3":
        inner = config.get("text_config") or {}
        if not isinstance(inner, dict):
            raise ConfigError("gemma3 config: text_config must be a JSON object")
        config = {**GEMMA3_TEXT_DEFAULTS, **inner, "model_type": "gemma3_text"}
        model_type = "gemma3_text"
    if model_type is None:
        raise ConfigError("config.json has no model_type; supported: " + ", ".join(_supported()))
    alias = _model_type_alias(config)
    if alias is not None:
        config, model_type = {**config, "model_type": alias}, alias
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"unsupported model_type {model_type!r}; supported: {', '.join(_supported())}")
    return {k: v for k, v in config.items() if k not in _COPY_KEYS}


def is_hand_modelled(config: Any) -> bool:
    """True when parse_config reads this config's model_type (a dict without model_type counts as hand-modelled,
    so that parse_config gives its error)."""
    if not isinstance(config, dict) or config.get("model_type") is None:
        return True
    return config["model_type"] in (*SUPPORTED_MODEL_TYPES, "gemma3") or _model_type_alias(config) is not None


def shape_config(config: dict) -> dict:
    """The config without the keys that describe a copy (auto_map, quantization, _attn_implementation)."""
    return {k: v for k, v in config.items() if k not in _COPY_KEYS}


def parse_config(config: Any, *, name: str, source: str, hf_id: str | None = None) -> ModelSpec:
    """Read the shapes of a supported causal LM from its config.json dict.

    Missing optional keys take the transformers config-class defaults of the family (families.py);
    `head_dim` is honoured when present (Mistral-Nemo: 128, not 5120 // 32).

    Raises ConfigError (one line naming the key) for: a non-dict, an unsupported model_type,
    missing required keys, non-integer or non-positive sizes, heads that do not divide.
    """
    cfg = _with_expert_alias(text_config(config))
    model_type = cfg["model_type"]
    family = FAMILIES[model_type]
    get = _getter(cfg, DEFAULTS[model_type])
    missing = [k for k in REQUIRED_KEYS if get(k) is None]
    if missing:
        raise ConfigError(f"{model_type} config is missing required key(s): {', '.join(missing)}")

    hidden = _positive_int(get, "hidden_size")
    layers = _positive_int(get, "num_hidden_layers")
    heads = _positive_int(get, "num_attention_heads")
    kv_heads = _positive_int(get, "num_key_value_heads") if get("num_key_value_heads") is not None else heads
    if family.mla:  # MLA expands k and v to every head from the latent: num_key_value_heads shapes nothing
        kv_heads = heads
    if heads % kv_heads:
        raise ConfigError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if get("head_dim") is not None:
        head_dim = _positive_int(get, "head_dim")
    elif hidden % heads:
        raise ConfigError(f"hidden_size={hidden} is not divisible by num_attention_heads={heads}; set head_dim")
    else:
        head_dim = hidden // heads
    intermediate = _positive_int(get, "intermediate_size")
    mla = _mla(get) if family.mla else None
    if mla is not None:
        head_dim = mla.qk_head_dim
    sliding = _sliding_window(get, family)

    try:
        return ModelSpec(
            name=name,
            model_type=model_type,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=intermediate,
            vocab_size=_positive_int(get, "vocab_size"),
            tie_word_embeddings=_flag(get, "tie_word_embeddings"),
            attention_bias=_switch(get, family.qkv_bias),
            attention_out_bias=_switch(get, family.o_bias),
            mlp_bias=_switch(get, family.mlp_bias),
            qk_norm=family.qk_norm is not None and (family.qk_norm_key is None or _flag(get, family.qk_norm_key)),
            qk_norm_per_head=family.qk_norm == "per_head",
            qk_norm_projection=family.qk_norm == "projection",
            post_norm=family.post_norm,
            attention_sinks=family.sinks,
            mla=mla,
            norms_per_layer=family.norms_per_layer,
            fused_qkv=family.fused,
            fused_gate_up=family.fused,
            hidden_act=str(get(family.act_key) or get("hidden_act") or "silu"),
            moe=_moe(get, family, layers, intermediate),
            sliding_window=sliding,
            sliding_layers=_sliding_layers(get, family, layers) if sliding else None,
            attn_logit_softcapping=_number(get, "attn_logit_softcapping"),
            final_logit_softcapping=_number(get, "final_logit_softcapping"),
            max_position_embeddings=_optional_int(get, "max_position_embeddings"),
            checkpoint_dtype=_dtype(config, cfg),
            source=source,
            hf_id=hf_id,
        )
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid {model_type} config: {where + ': ' if where else ''}{first['msg']}") from None


def _model_type_alias(config: dict) -> str | None:
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    return MODEL_TYPE_ALIASES.get((config.get("model_type"), arch))


def config_notes(config: Any) -> list[str]:
    """Assumptions worth showing for this config: Gemma 3 defaults filled in, ignored keys."""
    if not isinstance(config, dict):
        return []
    notes = []
    alias = _model_type_alias(config)
    if alias is not None:
        notes.append(f"model_type {config['model_type']!r} read as {alias!r}: its architectures name {alias}'s class")
        config = {**config, "model_type": alias}
    inner = config.get("text_config") if config.get("model_type") == "gemma3" else config
    if config.get("model_type") == "gemma3":
        notes.append("gemma3 multimodal config: text decoder only (Gemma3ForCausalLM); the vision tower is not counted")
    if config.get("model_type") in ("gemma3", "gemma3_text") and isinstance(inner, dict):
        filled = [f"{k}={GEMMA3_TEXT_DEFAULTS[k]}" for k in _SHAPE_KEYS if k not in inner]
        if filled:
            notes.append("transformers Gemma3TextConfig defaults used for " + ", ".join(filled))
    keys = set(config) | (set(inner) if isinstance(inner, dict) else set())
    notes += list(FAMILY_NOTES.get(str(config.get("model_type")), ()))
    quant = config.get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if method in QUANT_METHOD_NOTES:
        return notes + [QUANT_METHOD_NOTES[method]] + [n for k, n in IGNORED_KEY_NOTES.items() if k in keys and k != "quantization_config"]
    return notes + [note for key, note in IGNORED_KEY_NOTES.items() if key in keys]


#: transformers attribute_map: the expert-count key each MoE family reads, and its accepted alias
_EXPERT_ALIASES = {
    "mixtral": ("num_local_experts", "num_experts"),
    "olmoe": ("num_experts", "num_local_experts"),
    "qwen3_moe": ("num_experts", "num_local_experts"),
    "gpt_oss": ("num_local_experts", "num_experts"),
    "deepseek_v3": ("n_routed_experts", "num_local_experts"),
    "glm4_moe": ("n_routed_experts", "num_local_experts"),
}


def _with_expert_alias(cfg: dict) -> dict:
    key, alias = _EXPERT_ALIASES.get(cfg["model_type"], (None, None))
    return {**cfg, key: cfg[alias]} if alias in cfg and key not in cfg else cfg


_SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)


def _supported() -> list[str]:
    return [*SUPPORTED_MODEL_TYPES, "gemma3 (text decoder)"]


Getter = Callable[[str], Any]


def _getter(cfg: dict, defaults: dict) -> Getter:
    """cfg[key] when present, else the family default (None when the family has no such field)."""
    return lambda key: cfg[key] if key in cfg else defaults.get(key)


#: config key -> the largest value accepted (larger ones describe no real model: refused, not estimated)
KEY_MAX = {
    "hidden_size": shapes.MAX_HIDDEN_SIZE,
    "num_hidden_layers": shapes.MAX_LAYERS,
    "num_attention_heads": shapes.MAX_HEADS,
    "num_key_value_heads": shapes.MAX_HEADS,
    "head_dim": shapes.MAX_HEAD_DIM,
    "intermediate_size": shapes.MAX_INTERMEDIATE_SIZE,
    "moe_intermediate_size": shapes.MAX_INTERMEDIATE_SIZE,
    "shared_expert_intermediate_size": shapes.MAX_INTERMEDIATE_SIZE,
    "vocab_size": shapes.MAX_VOCAB_SIZE,
    "num_local_experts": shapes.MAX_EXPERTS,
    "num_experts": shapes.MAX_EXPERTS,
    "num_experts_per_tok": shapes.MAX_EXPERTS,
    "decoder_sparse_step": shapes.MAX_LAYERS,
    "sliding_window": shapes.MAX_POSITIONS,
    "max_position_embeddings": shapes.MAX_POSITIONS,
}


def _positive_int(get: Getter, key: str) -> int:
    value = get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config key {key} must be a positive integer, got {_short(value)}")
    top = KEY_MAX.get(key)
    if top is not None and value > top:
        raise ConfigError(f"config key {key}={_short(value)} is larger than any real model; accepted: 1 .. {top:,}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:20] + f"... ({len(text)} characters)"


def _optional_int(get: Getter, key: str) -> int | None:
    return None if get(key) is None else _positive_int(get, key)


def _flag(get: Getter, key: str) -> bool:
    value = get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"config key {key} must be true or false, got {value!r}")
    return value


def _switch(get: Getter, rule: str | bool) -> bool:
    """A hard-wired bias (True/False) or the value of the config key that controls it."""
    return rule if isinstance(rule, bool) else _flag(get, rule)


def _number(get: Getter, key: str) -> float | None:
    value = get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config key {key} must be a number or null, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"config key {key} must be a finite positive number or null, got {_short(value)}")
    return number


def _sliding_window(get: Getter, family: Family) -> int | None:
    if family.sliding_ignored or (family.sliding_gated and not get("use_sliding_window")):
        return None
    value = get("sliding_window")
    if value is None or value == 0:  # qwen2_moe stores 0 for "off"
        return None
    return _positive_int(get, "sliding_window")


def _sliding_layers(get: Getter, family: Family, layers: int) -> int | None:
    """How many layers slide: layer_types when the config states it, else the family's __post_init__ rule
    (gpt-oss: even layers 0, 2, ...; OLMo 3: all but every 4th; SmolLM3: the NoPE-less layers). None: all."""
    if not family.sliding_by_layer_types:
        return None
    types = get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            raise ConfigError(f"config key layer_types must list one type per layer ({layers}), got {types!r}")
        return sum(t == "sliding_attention" for t in types)
    if family.moe == "gpt_oss":
        return sum(bool((i + 1) % 2) for i in range(layers))
    if family.post_norm:
        return sum((i + 1) % 4 != 0 for i in range(layers))
    no_rope = get("no_rope_layers")
    interval = get("no_rope_layer_interval") or 4
    has_rope = no_rope if isinstance(no_rope, list) else [int((i + 1) % interval != 0) for i in range(layers)]
    return sum(not r for r in has_rope)


def _mla(get: Getter) -> MlaSpec:
    """DeepSeek-V3 MLA ranks and head dims; q_lora_rank null builds a single q_proj (Moonlight, V2-Lite)."""
    q_rank = get("q_lora_rank")
    return MlaSpec(
        q_lora_rank=None if q_rank is None else _positive_int(get, "q_lora_rank"),
        kv_lora_rank=_positive_int(get, "kv_lora_rank"),
        qk_nope_head_dim=_positive_int(get, "qk_nope_head_dim"),
        qk_rope_head_dim=_positive_int(get, "qk_rope_head_dim"),
        v_head_dim=_positive_int(get, "v_head_dim"),
    )


def _dtype(outer: Any, cfg: dict) -> str | None:
    for source in (cfg, outer):
        value = source.get("torch_dtype") or source.get("dtype")
        if isinstance(value, str):
            return value
    return None


def _moe(get: Getter, family: Family, layers: int, intermediate: int) -> MoeSpec | None:
    """MoE shapes per family (Mixtral/OLMoE: every layer sparse, experts of intermediate_size;
    Qwen2/3-MoE: layer i is dense when i is in mlp_only_layers or (i+1) % decoder_sparse_step != 0)."""
    if family.moe is None:
        return None
    if family.moe == "gpt_oss":  # GptOssMLP: every layer sparse, experts of intermediate_size, with biases
        experts, top_k = _positive_int(get, "num_local_experts"), _positive_int(get, "num_experts_per_tok")
        return MoeSpec(num_experts=experts, top_k=top_k, expert_intermediate_size=intermediate, layout="gpt_oss")
    if family.moe == "deepseek":  # DeepseekV3MoE / Glm4MoeMoE on layers >= first_k_dense_replace
        first_dense = get("first_k_dense_replace") or 0
        moe_inter = _positive_int(get, "moe_intermediate_size")
        dense = tuple(range(min(first_dense, layers)))
        if len(dense) == layers:
            return None
        return MoeSpec(
            num_experts=_positive_int(get, "n_routed_experts"),
            top_k=_positive_int(get, "num_experts_per_tok"),
            expert_intermediate_size=moe_inter,
            shared_expert_intermediate_size=moe_inter * _positive_int(get, "n_shared_experts"),
            dense_layers=dense,
            dense_intermediate_size=intermediate if dense else None,
            layout="deepseek",
        )
    key = "num_local_experts" if family.moe == "mixtral" else "num_experts"
    if get(key) == 0 and family.moe in ("qwen2_moe", "qwen3_moe"):
        return None  # num_experts=0 builds a dense MLP in every layer
    experts = _positive_int(get, key)
    top_k = _positive_int(get, "num_experts_per_tok")
    if family.moe in ("mixtral", "olmoe"):
        return MoeSpec(num_experts=experts, top_k=top_k, expert_intermediate_size=intermediate)
    step = _positive_int(get, "decoder_sparse_step")
    only = get("mlp_only_layers") or []
    if not isinstance(only, list) or not all(isinstance(i, int) for i in only):
        raise ConfigError(f"config key mlp_only_layers must be a list of layer indices, got {only!r}")
    dense = tuple(i for i in range(layers) if i in only or (i + 1) % step)
    if len(dense) == layers:
        return None  # no sparse layer at all
    return MoeSpec(
        num_experts=experts,
        top_k=top_k,
        expert_intermediate_size=_positive_int(get, "moe_intermediate_size"),
        shared_expert_intermediate_size=(
            _positive_int(get, "shared_expert_intermediate_size") if family.moe == "qwen2_moe" else None
        ),
        shared_expert_gate=family.moe == "qwen2_moe",
        dense_layers=dense,
        dense_intermediate_size=intermediate if dense else None,
    )
