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

from ...models.params import linear_shapes
from ...specs import ModelSpec, TrainingSetup
from ..activations import LayerActivations
from ..adapters import lora_targets
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


@dataclass(frozen=True)
class CheckpointedMlp:
    """Bytes of a checkpointed QLoRA layer's MLP forward, which keeps none of its tensors (torch.utils.checkpoint
    frees each as soon as nothing refers to it), when the MLP runs in fp32 (prepare_model_for_kbit_training's
    fp32 norms: Linear4bit returns its input's dtype).

    transformers models/llama/modeling_llama.py::LlamaMLP.forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)),
    each projection a PEFT lora.Linear4bit (peft tuners/lora/bnb.py::Linear4bit.forward, peft 0.21):
    ``result = self.base_layer(x)`` (bitsandbytes Linear4bit.forward: ``x.to(compute_dtype)``, the weight
    dequantized to bf16, ``matmul_4bit(...).to(inp_dtype)``), ``result = result.clone()``, then
    ``result = result + lora_B(lora_A(dropout(x))) * scaling`` (under autocast: lora_A's bf16 copy of the dropout
    output). Recorded in r-l8-qlora-gc-s4096, r-l8-qlora-nodq-gc-s4096, r-l8-qlora-r64-gc (docs/allocator_traces),
    per projection: input cast (bf16), dequantized weight, bf16 output, weight freed, fp32 output, bf16 output and
    cast freed, clone, fp32 output freed; dropout mask, dropout output (fp32), mask freed, its bf16 copy, lora_A
    output, both freed, lora_B output, lora_A's freed, scaled, lora_B's freed, the sum, clone and scaled freed; then
    act_fn(gate) (gate freed), the product (act and up freed) before down_proj, the product freed after it. Holding
    gate, up and the product alive together instead (as the backward's recompute does) made two more (b, s, i) fp32
    segments and one fewer bf16 logits one than recorded at s4096.
    """

    h_fp32: int  # a (b, s, h) fp32 tensor: the norm output, down_proj's output
    i_fp32: int  # a (b, s, i) fp32 tensor: gate / up outputs, act_fn's, the product
    lora_a: int  # lora_A's output (b, s, r) in bf16
    dropout: bool
    targets: frozenset  # which of gate_proj, up_proj, down_proj have an adapter

    def linear(self, leaf: str) -> tuple[int, int, int, int]:
        """(input bytes in fp32, output bytes in fp32, input mask bytes, whether LoRA'd) of one projection."""
        x, y = (self.i_fp32, self.h_fp32) if leaf == "down_proj" else (self.h_fp32, self.i_fp32)
        return x, y, (x // 4 if self.dropout else 0), leaf in self.targets


def checkpointed_mlp(model: ModelSpec, setup: TrainingSetup, unit_elems: int, fp32_upcast: bool) -> CheckpointedMlp | None:
    """The checkpointed MLP forward's sizes for a QLoRA setup with the fp32 upcast and a gate / up / down MLP in every
    layer (None otherwise: the layer's tensors are made as its recompute holds them, then freed)."""
    if not (setup.grad_ckpt and setup.method == "qlora" and setup.quant != "int8" and fp32_upcast):
        return None
    if setup.lora is None or model.moe is not None:
        return None
    L = model.num_layers
    mlp = {s.name: s for s in linear_shapes(model) if s.role == "mlp"}
    if sorted(mlp) != ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"] or any(s.count != L or s.bias for s in mlp.values()):
        return None
    h, i = model.hidden_size, model.intermediate_size
    targets = frozenset(t.name.rsplit(".", 1)[-1] for t in lora_targets(model, setup.lora) if t.name in mlp)
    return CheckpointedMlp(
        h_fp32=FP32 * unit_elems,
        i_fp32=FP32 * unit_elems * i // h,
        lora_a=BF16 * unit_elems * setup.lora.rank // h,
        dropout=setup.lora.dropout > 0,
        targets=targets,
    )
