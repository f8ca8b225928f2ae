"""LoRA adapters: which nn.Linear modules they wrap and how many parameters they add.

Per targeted Linear (in -> out): lora_A [r, in] + lora_B [out, r] = r * (in + out) parameters,
fp32 by default (peft tuners_utils.cast_adapter_dtype, autocast_adapter_dtype=True).
"all-linear" = every nn.Linear except the output embedding (peft tuners_utils._maybe_include_all_linear_layers).
"""

from dataclasses import dataclass

from ..errors import VramplanError
from ..models.params import linear_shapes, moe_layers
from ..specs import LinearShape, LoraSpec, ModelSpec
from .allocator import tensors_bytes

ADAPTER_BYTES_PER_PARAM = 4  # fp32


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
    if lora.all_linear and spec.moe is not None:
        n = len(moe_layers(spec))
        e, i, h = spec.moe.num_experts, spec.moe.expert_intermediate_size, spec.hidden_size
        pairs += [
            AdapterPair("mlp.gate", n, r, h, e, r),
            AdapterPair("mlp.experts.gate_up_proj", n, 2 * r * e, h, 2 * i, 2 * r * e),
            AdapterPair("mlp.experts.down_proj", n, r * e, i, h, r * e),
        ]
    return pairs


def check_lora_supported(spec: ModelSpec, lora: LoraSpec) -> None:
    """PEFT's ParamWrapper (LoRA on fused MoE experts) refuses dropout: say so before the user finds out."""
    if lora.all_linear and spec.moe is not None and lora.dropout > 0:
        raise VramplanError(
            f"--lora-dropout {lora.dropout}: PEFT cannot put LoRA with dropout on the fused experts of {spec.name} "
            "(all-linear wraps them); accepted: --lora-dropout 0, or explicit --lora-targets such as q_proj,v_proj"
        )


def lora_targets(spec: ModelSpec, lora: LoraSpec) -> list[LinearShape]:
    """The Linear kinds LoRA wraps. Raises VramplanError for names that match no module or a rank too large."""
    candidates = [s for s in linear_shapes(spec) if s.role != "lm_head"]
    if lora.all_linear:
        chosen = candidates
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
