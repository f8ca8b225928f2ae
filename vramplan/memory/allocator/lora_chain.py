"""The transients of a LoRA target's forward: what PEFT's lora.Linear allocates besides the tensors it saves.

peft tuners/lora/layer.py::Linear.forward (peft 0.21) runs, for an input x:

    result = self.base_layer(x)                          # the frozen layer's output
    x = self._cast_input_dtype(x, lora_A.weight.dtype)   # x in the adapter's dtype (fp32): a copy unless it is already
    result = result + lora_B(lora_A(dropout(x))) * scaling

Under autocast lora_A's matmul copies the dropout's fp32 output to bf16 (the copy is saved, as are the dropout mask
and lora_A's output: the estimator's LoRA units, activations._lora_units). The rest is transient: the base output and
the input copy until the sum is made, the dropout's output until its bf16 copy exists, lora_B's output and its
scaling. Recorded in every non-checkpointed LoRA history (docs/allocator_traces: s-h200-l8-lora, s-l8-trl-lora,
s-l8-liger-lora, t-q05-lora-fp32-s1024): per target, in this order, base output (14 ops), fp32 input copy (14), mask,
dropout output (4), its bf16 copy, lora_A output, lora_B output (2), scaled (3), the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...specs import ModelSpec, TrainingSetup
from ..activations import LayerActivations
from .tensors import lora_target_pieces

FP32, BF16 = 4, 2
#: the targets that read a norm's output (fp32 when the norm weights are: fp32 models, QLoRA's fp32 upcast)
_READS_NORM = ("q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj")


@dataclass(frozen=True)
class LoraChain:
    """Bytes of one target's forward transients (0: none); `pieces`: how many of its saved pieces follow in the
    layer's list (activation_tensors: the input's bf16 copy, the dropout mask if any, lora_A's output)."""

    input_cast: int  # autocast's bf16 copy of an fp32 input for the frozen matmul, freed once its output exists
    base_out: int  # the frozen layer's output (bf16 under autocast; fp32 from a 4-bit layer given fp32)
    input_copy: int  # _cast_input_dtype: the input in the adapter's dtype, alive to the sum
    dropout_out: int  # the dropout's output when autocast still copies it to bf16, freed after the copy
    lora_out: int  # lora_B's output, then its scaling: two tensors of the target's output size
    pieces: int


def lora_chains(
    model: ModelSpec,
    setup: TrainingSetup,
    act: LayerActivations,
    unit_bytes: int,
    adapter_itemsize: int,
    fp32_upcast: bool,
) -> dict[int, LoraChain]:
    """Each target's chain, by the index of its first saved piece in the layer's activation_tensors list."""
    if setup.lora is None:
        return {}
    h, L = model.hidden_size, model.num_layers
    qlora = setup.method == "qlora"
    norm_fp32 = setup.dtype == "fp32" or (qlora and fp32_upcast)
    pieces = 3 if setup.lora.dropout > 0 else 2
    out = {}
    for t, at in lora_target_pieces(model, setup, act):
        f = t.in_features / h * t.count / L  # the target's input, in b*s*h units per layer
        o = t.out_features / h * t.count / L
        leaf = t.name.rsplit(".", 1)[-1]
        # QLoRA's MLP runs in fp32 (Linear4bit returns its input's dtype: activations._mlp_units)
        in_bytes = FP32 if (leaf in _READS_NORM and norm_fp32) or (qlora and fp32_upcast and leaf == "down_proj") else BF16
        copy_bytes = adapter_itemsize if adapter_itemsize != in_bytes else 0
        x_bytes = copy_bytes or in_bytes
        out[at] = LoraChain(
            input_cast=int(BF16 * f * unit_bytes) if in_bytes == FP32 else 0,
            base_out=int((in_bytes if qlora else BF16) * o * unit_bytes),
            input_copy=int(copy_bytes * f * unit_bytes),
            # a bf16 dropout output is lora_A's input itself (the saved piece); an fp32 one is copied
            dropout_out=int(x_bytes * f * unit_bytes) if setup.lora.dropout > 0 and x_bytes == FP32 else 0,
            lora_out=int(BF16 * o * unit_bytes),
            pieces=pieces,
        )
    return out
