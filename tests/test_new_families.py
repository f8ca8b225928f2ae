"""The 2026 families: shipped configs against published sizes, and what each family's parser reads."""

import pytest

from vramplan.models import active_params_per_token, model_assumptions, param_counts, resolve_model, total_params
from vramplan.models.params import linear_shapes

#: published totals (model cards / release posts), and how close the exact count must come
PUBLISHED = [
    ("gpt-oss-20b", 20.9e9, 0.01),  # OpenAI model card: 20.9B total
    ("gpt-oss-120b", 116.8e9, 0.01),  # OpenAI model card: 116.8B total
    ("deepseek-v3", 671e9, 0.01),  # DeepSeek-V3 report: 671B (MTP module not counted)
    ("deepseek-r1", 671e9, 0.01),
    ("kimi-k2-instruct", 1.04e12, 0.02),  # Moonshot: "1 trillion" / 1.04T total
    ("glm-4.5-air", 106e9, 0.02),  # Z.ai: 106B total
    ("smollm3-3b", 3.08e9, 0.01),  # HF blog: 3.08B
    ("olmo-2-1124-7b", 7.3e9, 0.01),
    ("olmo-2-1124-13b", 13.7e9, 0.01),
    ("olmo-2-0325-32b", 32.2e9, 0.01),
    ("granite-3.3-8b-instruct", 8.17e9, 0.01),  # IBM: 8B; 8,170,864,640 in the safetensors
]


@pytest.mark.parametrize(("name", "published", "tolerance"), PUBLISHED)
def test_total_params_match_the_published_size(name, published, tolerance):
    assert abs(total_params(resolve_model(name)) - published) <= tolerance * published


#: published active parameters; Z.ai's 12B leaves out the embeddings and the output head
@pytest.mark.parametrize(
    ("name", "active", "with_embeddings"),
    [("deepseek-v3", 37e9, True), ("kimi-k2-instruct", 32e9, True), ("glm-4.5-air", 12e9, False)],
)
def test_active_params_match_the_published_size(name, active, with_embeddings):
    spec = resolve_model(name)
    counts = param_counts(spec)
    ours = active_params_per_token(spec) - (0 if with_embeddings else counts["embed_tokens"] + counts["lm_head"])
    assert abs(ours - active) <= 0.03 * active


def test_deepseek_v3_mla_projections():
    shapes = {s.name: (s.in_features, s.out_features) for s in linear_shapes(resolve_model("deepseek-v3"))}
    assert shapes["self_attn.q_a_proj"] == (7168, 1536)
    assert shapes["self_attn.q_b_proj"] == (1536, 128 * 192)
    assert shapes["self_attn.kv_a_proj_with_mqa"] == (7168, 512 + 64)
    assert shapes["self_attn.kv_b_proj"] == (512, 128 * (128 + 128))
    assert shapes["self_attn.o_proj"] == (128 * 128, 7168)


def test_deepseek_v3_first_three_layers_are_dense():
    spec = resolve_model("deepseek-v3")
    assert spec.moe is not None and spec.moe.dense_layers == (0, 1, 2)
    assert spec.moe.shared_expert_intermediate_size == 2048


def test_gpt_oss_sinks_biases_and_alternating_layers():
    spec = resolve_model("gpt-oss-20b")
    assert spec.attention_sinks and spec.attention_bias and spec.attention_out_bias
    assert spec.sliding_window == 128 and spec.sliding_layers == 12
    h, e, i = 2880, 32, 2880
    assert param_counts(spec)["router"] == 24 * (e * h + e)
    assert param_counts(spec)["experts"] == 24 * (e * h * 2 * i + e * 2 * i + e * i * h + e * h)


def test_gpt_oss_mxfp4_checkpoint_is_costed_dequantized_and_says_so():
    notes = model_assumptions("gpt-oss-20b")
    assert any("mxfp4" in n and "bf16" in n for n in notes)
    assert not any(n.startswith("quantization_config ignored") for n in notes)


def test_kimi_k2_model_type_is_read_as_deepseek_v3_and_says_so():
    assert resolve_model("kimi-k2").model_type == "deepseek_v3"
    assert any("kimi_k2" in n for n in model_assumptions("kimi-k2"))


def test_olmo2_qk_norms_span_the_projections():
    spec = resolve_model("olmo-2-0325-32b")
    assert param_counts(spec)["qk_norm"] == 64 * (40 * 128 + 8 * 128)
    assert spec.post_norm


def test_smollm3_ties_embeddings_by_default():
    spec = resolve_model("smollm3-3b")
    assert spec.tie_word_embeddings and param_counts(spec)["lm_head"] == 0


def test_glm_4_5_air_biases_on_qkv_only():
    spec = resolve_model("glm-4.5-air")
    assert spec.attention_bias and not spec.attention_out_bias and not spec.qk_norm


def test_deepseek_router_weights_stay_fp32_in_a_bf16_load():
    from vramplan.memory.weights import weight_bytes
    from vramplan.specs import TrainingSetup

    spec = resolve_model("deepseek-v3")
    extra = weight_bytes(spec, TrainingSetup(method="full"))["weights.fp32_router"]
    # 58 MoE layers: router [256, 7168] 2 more bytes per element, plus the fp32 [256] correction bias (512-B block)
    assert extra == 58 * (256 * 7168 * 2 + 1024)


def test_dense_models_have_no_fp32_router_term():
    from vramplan.memory.weights import weight_bytes
    from vramplan.specs import TrainingSetup

    assert weight_bytes(resolve_model("olmo-2-1124-7b"), TrainingSetup(method="full"))["weights.fp32_router"] == 0


def test_olmo3_default_layer_types_slide_three_layers_in_four():
    from vramplan.models import parse_config

    raw = {"model_type": "olmo3", "hidden_size": 64, "num_hidden_layers": 8, "num_attention_heads": 4,
           "intermediate_size": 96, "vocab_size": 101}  # fmt: skip
    spec = parse_config(raw, name="olmo3", source="test")
    assert spec.sliding_window == 4096 and spec.sliding_layers == 6


def test_granite_multipliers_are_noted_as_free():
    assert any(n.startswith("granite:") and "memory unchanged" in n for n in model_assumptions("granite-3.3-8b"))
