"""LoRA adapters: which nn.Linear modules they wrap and how many parameters they add.

Per targeted Linear (in -> out): lora_A [r, in] + lora_B [out, r] = r * (in + out) parameters,
fp32 by default (peft tuners_utils.cast_adapter_dtype, autocast_adapter_dtype=True).
"all-linear" = every nn.Linear except the output embedding (peft tuners_utils._maybe_include_all_linear_layers).
"""

from ..errors import VramplanError
from ..models.params import linear_shapes
from ..specs import LinearShape, LoraSpec, ModelSpec
from .allocator import tensors_bytes

ADAPTER_BYTES_PER_PARAM = 4  # fp32


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
    """Trainable LoRA parameters: sum over targets of count * r * (in + out)."""
    return sum(s.count * lora.rank * (s.in_features + s.out_features) for s in lora_targets(spec, lora))


def lora_tensor_count(spec: ModelSpec, lora: LoraSpec) -> int:
    """Number of adapter tensors (lora_A and lora_B per wrapped module)."""
    return sum(2 * s.count for s in lora_targets(spec, lora))


def adapter_bytes(spec: ModelSpec, lora: LoraSpec) -> int:
    """fp32 adapter weights, each tensor rounded to allocator blocks."""
    return sum(
        tensors_bytes(s.count, lora.rank * s.in_features * ADAPTER_BYTES_PER_PARAM)
        + tensors_bytes(s.count, lora.rank * s.out_features * ADAPTER_BYTES_PER_PARAM)
        for s in lora_targets(spec, lora)
    )
