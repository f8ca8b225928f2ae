"""The shipped model catalog, config parsing, and model resolution (no torch, no network)."""

import json
import subprocess
import sys
from importlib.resources import files

import pytest

from vramplan.errors import ConfigError, UnknownModelError
from vramplan.models import (
    list_models,
    load_raw_config,
    model_assumptions,
    parse_config,
    resolve_model,
    total_params,
)
from vramplan.specs.model import SUPPORTED_MODEL_TYPES

CONFIGS = files("vramplan.models").joinpath("configs")
ENTRIES = {e.name: e for e in list_models()}
TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "vocab_size": 100,
}


def _parse(**changes):
    return parse_config({**TINY, **changes}, name="tiny", source="test")


# --- the shipped catalog -------------------------------------------------------------------


def test_index_lists_every_shipped_config_file():
    shipped = {p.name for p in CONFIGS.iterdir() if p.name.endswith(".json") and p.name != "index.json"}
    assert {e.file for e in ENTRIES.values()} == shipped


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_shipped_config_parses(name):
    spec = resolve_model(name)
    assert spec.model_type in SUPPORTED_MODEL_TYPES
    assert spec.name == name
    assert spec.hf_id == ENTRIES[name].hf_id


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_total_params_equal_verified_count(name):
    assert total_params(resolve_model(name)) == ENTRIES[name].params


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=lambda e: e.name)
def test_catalog_name_is_lowercase_hf_basename(entry):
    assert entry.name == entry.hf_id.split("/")[1].lower()
    assert entry.source


def test_aliases_never_shadow_another_entry():
    owners: dict[str, str] = {}
    for e in ENTRIES.values():
        for key in {e.name, e.hf_id.lower(), *(a.lower() for a in e.aliases)}:
            assert owners.setdefault(key, e.name) == e.name, f"{key} claimed by {owners[key]} and {e.name}"


@pytest.mark.parametrize(
    "name", ["Llama-3.1-8B", "meta-llama/Llama-3.1-8B", "META-LLAMA/LLAMA-3.1-8B", " llama-3.1-8b "]
)
def test_catalog_lookup_is_case_insensitive_by_name_or_hf_id(name):
    assert resolve_model(name).name == "llama-3.1-8b"


@pytest.mark.parametrize(
    ("alias", "shipped"),
    [
        ("llama-3.2-1b", "llama-3.2-1b-instruct"),
        ("gemma-2-2b", "gemma-2-2b-it"),
        ("google/gemma-3-4b-pt", "gemma-3-4b-it"),
    ],
)
def test_base_name_uses_sibling_config_and_says_so(alias, shipped):
    assert resolve_model(alias).name == shipped
    notes = model_assumptions(alias)
    assert any(n.startswith(f"{alias} uses the shipped") and "same architecture" in n for n in notes)


def test_own_name_has_no_sibling_note():
    assert not any("uses the shipped" in n for n in model_assumptions("llama-3.2-1b-instruct"))


# --- family specifics ------------------------------------------------------------------


def test_gemma3_multimodal_yields_text_config_with_transformers_defaults():
    raw = load_raw_config("gemma-3-4b-it")
    assert raw["model_type"] == "gemma3_text"
    assert (raw["num_attention_heads"], raw["num_key_value_heads"], raw["head_dim"], raw["vocab_size"]) == (
        8,
        4,
        256,
        262_208,
    )
    assert "vision_config" not in raw
    assert any("Gemma3TextConfig defaults" in n for n in model_assumptions("gemma-3-4b-it"))


def test_head_dim_is_honoured_when_it_differs_from_hidden_over_heads():
    spec = resolve_model("mistral-nemo-base-2407")
    assert (spec.hidden_size // spec.num_heads, spec.head_dim) == (160, 128)


def test_qwen2_has_qkv_bias_but_no_o_proj_bias():
    spec = resolve_model("qwen2.5-7b")
    assert spec.attention_bias and not spec.attention_out_bias


def test_gemma_ties_embeddings_by_default():
    assert parse_config({**TINY, "model_type": "gemma2"}, name="g", source="t").tie_word_embeddings
    assert not _parse().tie_word_embeddings


def test_olmoe_qk_norm_is_full_width():
    spec = resolve_model("olmoe-1b-7b-0924")
    assert spec.qk_norm and not spec.qk_norm_per_head


def test_phi3_is_fused():
    spec = resolve_model("phi-3-mini-4k-instruct")
    assert spec.fused_qkv and spec.fused_gate_up


def test_qwen_sliding_window_only_when_enabled():
    assert resolve_model("qwen2.5-7b").sliding_window is None
    enabled = {**TINY, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 512}
    assert parse_config(enabled, name="q", source="t").sliding_window == 512


def test_gemma2_softcapping_defaults():
    spec = resolve_model("gemma-2-9b")
    assert (spec.attn_logit_softcapping, spec.final_logit_softcapping) == (50.0, 30.0)


def test_qwen3_moe_dense_layers_from_sparse_step_and_mlp_only_layers():
    raw = {
        **TINY,
        "model_type": "qwen3_moe",
        "num_hidden_layers": 6,
        "num_key_value_heads": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [3],
    }
    moe = parse_config(raw, name="m", source="t").moe
    assert moe.dense_layers == (0, 2, 3, 4)
    assert moe.dense_intermediate_size == 96


def test_mixtral_moe_fields():
    moe = resolve_model("mixtral-8x7b-v0.1").moe
    assert (moe.num_experts, moe.top_k, moe.expert_intermediate_size, moe.dense_layers) == (8, 2, 14336, ())


def test_quantized_copy_keys_are_ignored_and_noted():
    assert "quantization" not in load_raw_config("gemma-3-12b-pt")
    assert any(n.startswith("quantization") for n in model_assumptions("gemma-3-12b-pt"))


# --- bad input ---------------------------------------------------------------------------


def test_unsupported_model_type_lists_supported_ones():
    with pytest.raises(ConfigError, match=r"unsupported model_type 'gpt2'; supported: llama, mistral, .*olmoe"):
        _parse(model_type="gpt2")


def test_missing_model_type_is_a_config_error():
    with pytest.raises(ConfigError, match="no model_type"):
        parse_config({k: v for k, v in TINY.items() if k != "model_type"}, name="x", source="t")


def test_missing_hidden_size_names_the_key():
    with pytest.raises(ConfigError, match="missing required key.*hidden_size"):
        parse_config({k: v for k, v in TINY.items() if k != "hidden_size"}, name="x", source="t")


@pytest.mark.parametrize("value", [-2, 0, 2.0, "2", True, None])
def test_bad_layer_count_names_the_key(value):
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        _parse(num_hidden_layers=value)


def test_heads_not_a_multiple_of_kv_heads():
    with pytest.raises(ConfigError, match="num_attention_heads=4 is not a multiple of num_key_value_heads=3"):
        _parse(num_key_value_heads=3)


def test_missing_kv_heads_take_the_family_default():
    no_kv = {k: v for k, v in TINY.items() if k != "num_key_value_heads"}
    assert parse_config(no_kv, name="x", source="t").num_kv_heads == 4  # llama: = num_attention_heads
    mistral = {**no_kv, "model_type": "mistral", "num_attention_heads": 16}
    assert parse_config(mistral, name="x", source="t").num_kv_heads == 8  # MistralConfig default


def test_hidden_not_divisible_by_heads_without_head_dim():
    with pytest.raises(ConfigError, match="set head_dim"):
        _parse(hidden_size=66)
    assert _parse(hidden_size=66, head_dim=16).head_dim == 16


@pytest.mark.parametrize("config", [[1, 2], "llama", None, 3])
def test_config_that_is_not_an_object(config):
    with pytest.raises(ConfigError, match="JSON object"):
        parse_config(config, name="x", source="t")


def test_bad_value_types_are_config_errors():
    with pytest.raises(ConfigError, match="tie_word_embeddings"):
        _parse(tie_word_embeddings="yes")
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        parse_config({**TINY, "model_type": "mixtral", "num_experts_per_tok": -1}, name="x", source="t")
    with pytest.raises(ConfigError, match="top_k"):
        parse_config(
            {**TINY, "model_type": "mixtral", "num_local_experts": 2, "num_experts_per_tok": 3}, name="x", source="t"
        )


def test_auto_map_is_ignored_and_nothing_is_imported(tmp_path):
    config = {**TINY, "auto_map": {"AutoModelForCausalLM": "evil_module.Evil"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_model(str(tmp_path)).num_layers == 2
    assert "evil_module" not in sys.modules
    assert "auto_map" not in load_raw_config(str(tmp_path))
    assert any(n.startswith("auto_map ignored") for n in model_assumptions(str(tmp_path)))


# --- resolution from paths and the local HF cache ---------------------------------------


def test_folder_holding_config_json_resolves(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    spec = resolve_model(str(folder))
    assert (spec.name, spec.source, spec.hf_id) == ("my-model", str(folder / "config.json"), None)


def test_path_to_config_file_resolves(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(TINY))
    assert resolve_model(str(path)).name == "custom"


def test_folder_without_config_json(tmp_path):
    with pytest.raises(ConfigError, match="holds no config.json"):
        resolve_model(str(tmp_path))


def test_malformed_json_is_a_config_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama",')
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_model(str(path))


def _fake_snapshot(hub, repo, revision, config):
    snapshot = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot


def test_hf_id_found_in_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _fake_snapshot(tmp_path, "SomeOrg/Tiny-Model", "abc123", TINY)
    spec = resolve_model("someorg/tiny-model")
    assert (spec.name, spec.hf_id) == ("SomeOrg/Tiny-Model", "SomeOrg/Tiny-Model")
    assert spec.source.startswith("HF cache:")


def test_hf_cache_prefers_the_snapshot_refs_main_points_at(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    hub = tmp_path / "hub"
    _fake_snapshot(hub, "org/m", "old", {**TINY, "num_hidden_layers": 3})
    _fake_snapshot(hub, "org/m", "new", {**TINY, "num_hidden_layers": 5})
    (hub / "models--org--m" / "refs").mkdir()
    (hub / "models--org--m" / "refs" / "main").write_text("old")
    assert resolve_model("org/m").num_layers == 3


def test_unknown_name_suggests_closest_catalog_names(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UnknownModelError) as err:
        resolve_model("llama-3.1-8")
    message = str(err.value)
    assert "llama-3.1-8b" in message and "config.json" in message
    assert "\n" not in message


def test_unknown_hf_id_not_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UnknownModelError, match="unknown model 'nobody/nothing'"):
        resolve_model("nobody/nothing")


def test_models_package_never_imports_torch_or_transformers():
    code = (
        "import sys; from vramplan.models import resolve_model, param_counts, linear_shapes;"
        "s = resolve_model('mixtral-8x7b-v0.1'); param_counts(s); linear_shapes(s);"
        "bad = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_every_catalog_model_estimates_every_method(entry):
    # full fine-tuning sizes every parameter group: the groups must hold exactly the model's parameters
    from vramplan.estimator import estimate
    from vramplan.specs import LoraSpec, TrainingSetup

    spec = resolve_model(entry.name)
    full = estimate(spec, TrainingSetup(method="full", grad_ckpt=True))
    assert full.params.trainable == full.params.total
    lora = LoraSpec(dropout=0.0)  # dropout on fused experts is refused by PEFT, and by vramplan
    for setup in (TrainingSetup(method="lora", lora=lora), TrainingSetup(method="qlora", quant="nf4", lora=lora)):
        e = estimate(spec, setup)
        assert 0 < e.params.trainable < e.params.total
        assert sum(e.memory.breakdown.values()) == e.memory.peak_allocated_bytes
