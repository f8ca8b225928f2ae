"""The trainable tensors of a setup: what gradients and optimizer states are sized by."""

from dataclasses import dataclass

from ..models.params import linear_shapes, param_counts, total_params
from ..specs import ModelSpec, TrainingSetup
from .adapters import ADAPTER_BYTES_PER_PARAM, adapter_pairs
from .constants import BYTES_PER_DTYPE


@dataclass(frozen=True)
class TensorGroup:
    """`count` trainable tensors of shape (rows, cols) (cols = 1 for vectors), `itemsize` bytes each element."""

    name: str
    count: int
    rows: int
    cols: int
    itemsize: int
    is_embedding: bool = False

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def params(self) -> int:
        return self.count * self.numel


def trainable_groups(
    spec: ModelSpec, setup: TrainingSetup, *, adapter_itemsize: int = ADAPTER_BYTES_PER_PARAM
) -> list[TensorGroup]:
    """Full FT: every parameter in the load dtype. LoRA/QLoRA: the adapters only (fp32 unless the stack casts)."""
    if setup.method != "full":
        assert setup.lora is not None
        groups = []
        for p in adapter_pairs(spec, setup.lora):
            groups.append(TensorGroup(f"lora_A.{p.name}", p.count, p.a_rows, p.a_cols, adapter_itemsize))
            groups.append(TensorGroup(f"lora_B.{p.name}", p.count, p.b_rows, p.b_cols, adapter_itemsize))
        return groups
    itemsize = BYTES_PER_DTYPE[setup.dtype]
    counts = param_counts(spec)
    h, v = spec.hidden_size, spec.vocab_size
    groups = [TensorGroup("embed_tokens", 1, v, h, itemsize, is_embedding=True)]
    if counts["lm_head"]:
        groups.append(TensorGroup("lm_head", 1, v, h, itemsize))
    for s in linear_shapes(spec):
        if s.role == "lm_head":
            continue
        groups.append(TensorGroup(s.name, s.count, s.out_features, s.in_features, itemsize))
        if s.bias:
            groups.append(TensorGroup(f"{s.name}.bias", s.count, s.out_features, 1, itemsize))
    norm_count = spec.num_layers * spec.norms_per_layer + 1
    if spec.traced is not None:  # a traced model: as many h-wide norm weights as its norms role holds
        norm_count = counts["norms"] // h
    groups.append(TensorGroup("norms", norm_count, h, 1, itemsize))
    listed = sum(g.params for g in groups)
    rest = total_params(spec) - listed
    if rest > 0 and spec.traced is not None:  # whatever the trace holds beyond the listed tensors, exactly
        groups.append(TensorGroup("other", 1, rest, 1, itemsize))
    elif rest > 0:
        # q/k norms, fused MoE experts and bare-parameter routers: sized as one tensor per layer, and what does not
        # divide evenly (dense first layers, MLA norms) as one more, so the groups hold exactly `rest` parameters
        per_layer, remainder = divmod(rest, spec.num_layers)
        if per_layer:
            groups.append(TensorGroup("other", spec.num_layers, per_layer, 1, itemsize))
        if remainder:
            groups.append(TensorGroup("other.remainder", 1, remainder, 1, itemsize))
    return groups


def trainable_params(groups: list[TensorGroup]) -> int:
    return sum(g.params for g in groups)
