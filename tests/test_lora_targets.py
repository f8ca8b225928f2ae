"""LoRA all-linear: the adapters vramplan counts equal what the installed PEFT creates on a meta-device model.

PEFT 0.21 on transformers v5 MoE models: the families whose weight layout it converts (mixtral, olmoe,
qwen3_moe, deepseek_v3, glm4_moe) get ParamWrapper adapters on the fused experts and the router, and their
nn.Linear modules named gate_proj/up_proj/down_proj (dense first layers, shared experts) get none; qwen2_moe
and gpt_oss keep their experts and router unwrapped.
"""

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from test_models_params import SYNTHETIC  # noqa: E402

from vramplan.errors import VramplanError  # noqa: E402
from vramplan.memory.adapters import check_lora_supported, lora_param_count  # noqa: E402
from vramplan.models import parse_config  # noqa: E402
from vramplan.specs import LoraSpec  # noqa: E402

RANK = 4


def _peft_trainable(raw: dict) -> int:
    config = transformers.AutoConfig.for_model(**json.loads(json.dumps(raw)))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=RANK, target_modules="all-linear", lora_dropout=0.0))
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_all_linear_adapter_params_equal_peft(case):
    raw = SYNTHETIC[case]
    spec = parse_config(raw, name=case, source="test")
    lora = LoraSpec(rank=RANK, dropout=0.0)
    assert lora_param_count(spec, lora) == _peft_trainable(raw)


def test_gpt_oss_all_linear_is_attention_only():
    spec = parse_config(SYNTHETIC["gpt-oss"], name="gpt-oss", source="test")
    h, q, kv = spec.hidden_size, spec.q_width, spec.kv_width
    per_layer = RANK * ((h + q) + 2 * (h + kv) + (q + h))
    assert lora_param_count(spec, LoraSpec(rank=RANK, dropout=0.0)) == spec.num_layers * per_layer


def test_gpt_oss_accepts_dropout_because_no_expert_is_wrapped():
    spec = parse_config(SYNTHETIC["gpt-oss"], name="gpt-oss", source="test")
    check_lora_supported(spec, LoraSpec(rank=RANK, dropout=0.05))


def test_dropout_on_wrapped_experts_is_refused_with_the_way_out():
    spec = parse_config(SYNTHETIC["deepseek-v3-mla-q-lora"], name="dsv3", source="test")
    with pytest.raises(VramplanError, match="use --lora-dropout 0 or attention-only targets") as err:
        check_lora_supported(spec, LoraSpec(rank=RANK, dropout=0.05))
    assert "q_a_proj,q_b_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj" in str(err.value)
