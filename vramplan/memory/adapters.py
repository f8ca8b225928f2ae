"""LoRA adapters: which nn.Linear modules they wrap and how many parameters they add.

Per targeted Linear (in -> out): lora_A [r, in] + lora_B [out, r] = r * (in + out) parameters,
fp32 by default (peft tuners_utils.cast_adapter_dtype, autocast_adapter_dtype=True).
"all-linear" = every nn.Linear except the output embedding (peft tuners_utils._maybe_include_all_linear_layers),
except on the MoE families whose v4 -> v5 weight layout PEFT converts (`PEFT_CONVERTED_MOE`): there
peft utils/transformers_weight_conversion.py::_resolve_string_target_modules/_convert_peft_config_moe turn the
names gate_proj/up_proj/down_proj and gate into target_parameters (the fused experts and the router), so
nn.Linear modules of those names (dense first layers, shared experts) get no LoRA. Checked on meta-device
tiny models with peft 0.21.2 + transformers 5.24 (tests/test_lora_targets.py).
"""

from dataclasses import dataclass

from ..errors import VramplanError
from ..models.params import linear_shapes, moe_layers
from ..specs import LinearShape, LoraSpec, ModelSpec, TrainingSetup
from .allocator import block_bytes, tensors_bytes

ADAPTER_BYTES_PER_PARAM = 4  # fp32

#: model types transformers maps to a MoE conversion pattern that PEFT follows (conversion_mapping.py
#: _MODEL_TO_CONVERSION_PATTERN, plus mixtral's own): all-linear wraps their experts and router with ParamWrapper.
#: Not listed: qwen2_moe and gpt_oss, whose experts and router all-linear leaves alone (not nn.Linear).
PEFT_CONVERTED_MOE = frozenset({"mixtral", "olmoe", "qwen3_moe", "deepseek_v3", "glm4_moe"})

#: nn.Linear leaf names PEFT re-targets to the fused experts on those families (so the Linears get no LoRA)
_CONVERTED_LINEAR_NAMES = frozenset({"gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"})


def wraps_experts(spec: ModelSpec, lora: LoraSpec) -> bool:
    """True when LoRA all-linear puts ParamWrapper adapters on the fused experts and the router."""
    return lora.all_linear and spec.moe is not None and spec.model_type in PEFT_CONVERTED_MOE


@dataclass(frozen=True)
class AdapterPair:
    """One wrapped module kind: lora_A [a_rows, a_cols] and lora_B [b_rows, b_cols], `count` of them."""

    name: str
    count: int
    a_rows: int
    a_cols: int
    b_rows: int
    b_cols: int

    @property
    def params(self) -> int:
        return self.count * (self.a_rows * self.a_cols + self.b_rows * self.b_cols)


def adapter_pairs(spec: ModelSpec, lora: LoraSpec) -> list[AdapterPair]:
    """Every lora_A/lora_B pair PEFT creates.

    nn.Linear targets: lora_A [r, in], lora_B [out, r]. With all-linear on a transformers-v5 MoE model,
    PEFT 0.21 also wraps the bare 3-D expert parameters and the router with ParamWrapper
    (peft tuners/lora/layer.py::ParamWrapper.update_layer: lora_A Linear(in, r*E), lora_B Linear(r*E, out));
    measured on CPU with peft 0.21.2 and on the H100 (OLMoE: 189,284,352 trainable at r=16):
    router [E, h] -> A [r, h], B [E, r]; gate_up_proj [E, 2I, h] -> A [2rE, h], B [2I, 2rE];
    down_proj [E, h, I] -> A [rE, I], B [h, rE].
    """
    r = lora.rank
    pairs = [AdapterPair(s.name, s.count, r, s.in_features, s.out_features, r) for s in lora_targets(spec, lora)]
    if wraps_experts(spec, lora):
        assert spec.moe is not None
        n = len(moe_layers(spec))
        e, i, h = spec.moe.num_experts, spec.moe.expert_intermediate_size, spec.hidden_size
        pairs += [
            AdapterPair("mlp.gate", n, r, h, e, r),
            AdapterPair("mlp.experts.gate_up_proj", n, 2 * r * e, h, 2 * i, 2 * r * e),
            AdapterPair("mlp.experts.down_proj", n, r * e, i, h, r * e),
        ]
    return pairs


#: autocast's lower-precision copy of an fp32 adapter weight: bf16 / fp16
ADAPTER_COPY_BYTES_PER_PARAM = 2


def adapter_autocast_copy_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """autocast's bf16 copies of the fp32 LoRA weights under gradient checkpointing: (all layers', one layer's).

    torch aten/src/ATen/autocast_mode.cpp::cached_cast caches the cast of an fp32 leaf that requires grad (the
    trainable lora_A / lora_B; not the frozen base weights) until autocast exits, so every layer's copies are alive
    at the forward's end (accelerate's autocast wraps the forward with the loss); a checkpointed layer's recompute
    makes its own again, saved until that layer's backward ends. Only nn.Linear targets (lora_targets): PEFT's
    ParamWrapper on fused MoE experts is left out. Without checkpointing the copies are saved for backward with
    the layer's activations (not added here). Bytes: sum over targets of count x (r x in + out x r) x 2, per layer
    k*L//count as allocator/tensors.py::spread places them."""
    if setup.lora is None or not setup.grad_ckpt or setup.stack != "hf" or setup.num_gpus != 1:
        return 0, 0
    L = spec.num_layers
    per_layer = [0] * L
    for p in adapter_pairs(spec, setup.lora)[: len(lora_targets(spec, setup.lora))]:
        pair = block_bytes(p.a_rows * p.a_cols * ADAPTER_COPY_BYTES_PER_PARAM) + block_bytes(
            p.b_rows * p.b_cols * ADAPTER_COPY_BYTES_PER_PARAM
        )
        for k in range(p.count):
            per_layer[k * L // p.count] += pair
    return sum(per_layer), max(per_layer)


def check_lora_supported(spec: ModelSpec, lora: LoraSpec) -> None:
    """PEFT's ParamWrapper (LoRA on fused MoE experts) refuses dropout (peft tuners/lora/layer.py::ParamWrapper:
    "does not work with lora_dropout != 0"): say so, with the two ways out, before the user finds out."""
    if wraps_experts(spec, lora) and lora.dropout > 0:
        attention = ",".join(s.name.rsplit(".", 1)[-1] for s in linear_shapes(spec) if s.role == "attention")
        raise VramplanError(
            f"--lora-dropout {lora.dropout}: PEFT cannot put LoRA with dropout on the fused experts of {spec.name} "
            f"(all-linear wraps them); use --lora-dropout 0 or attention-only targets (--lora-targets {attention})"
        )


def lora_targets(spec: ModelSpec, lora: LoraSpec) -> list[LinearShape]:
    """The Linear kinds LoRA wraps. Raises VramplanError for names that match no module or a rank too large."""
    candidates = [s for s in linear_shapes(spec) if s.role != "lm_head"]
    if lora.all_linear:
        converted = spec.moe is not None and spec.model_type in PEFT_CONVERTED_MOE
        chosen = [s for s in candidates if not (converted and s.name.rsplit(".", 1)[-1] in _CONVERTED_LINEAR_NAMES)]
    else:
        by_name = {s.name.rsplit(".", 1)[-1]: s for s in candidates}
        unknown = [t for t in lora.targets if t not in by_name]
        if unknown:
            raise VramplanError(
                f"--lora-targets {','.join(unknown)} match no module of {spec.name}; "
                f"accepted: all-linear or a comma list of {', '.join(sorted(by_name))}"
            )
        chosen = [by_name[t] for t in dict.fromkeys(lora.targets)]
    for s in chosen:
        if s.out_features == 1:  # Qwen2-MoE's shared_expert_gate Linear(h, 1): PEFT wraps it at any rank
            continue
        if lora.rank > min(s.in_features, s.out_features):
            raise VramplanError(
                f"--lora-rank {lora.rank} is larger than {s.name} ({s.in_features}->{s.out_features}) of {spec.name}; "
                f"accepted: 1..{min(s.in_features, s.out_features)}"
            )
    return chosen


def lora_param_count(spec: ModelSpec, lora: LoraSpec) -> int:
    """Trainable LoRA parameters: for a Linear target count * r * (in + out)."""
    return sum(p.params for p in adapter_pairs(spec, lora))


def adapter_bytes(spec: ModelSpec, lora: LoraSpec, *, itemsize: int = ADAPTER_BYTES_PER_PARAM) -> int:
    """fp32 adapter weights, each tensor rounded to allocator blocks."""
    return sum(
        tensors_bytes(p.count, p.a_rows * p.a_cols * itemsize)
        + tensors_bytes(p.count, p.b_rows * p.b_cols * itemsize)
        for p in adapter_pairs(spec, lora)
    )
