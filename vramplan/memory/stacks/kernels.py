"""Saved activations that a stack's own kernels change, in units of b*s*h bytes per decoder layer.

Each function takes the transformers-eager `LayerActivations` (memory/activations.py) of the setup and
returns the stack's version, replacing only the components its kernels replace.
"""

from dataclasses import replace

from ...specs import ModelSpec, TrainingSetup
from ..activations import LayerActivations

#: model types whose decoder layers Liger 0.8.5 patches with RMSNorm and SwiGLU/GeGLU kernels and whose
#: causal-LM forward it replaces with the fused linear cross-entropy
#: (liger_kernel/transformers/monkey_patch.py::MODEL_TYPE_TO_APPLY_LIGER_FN; Trainer(use_liger_kernel=True)
#: calls _apply_liger_kernel_to_instance, which does nothing for any other model_type)
LIGER_PATCHED = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "mixtral", "qwen3_moe",
    "gpt_oss", "deepseek_v3", "olmo2", "olmo3", "smollm3", "granite", "glm4",
})  # fmt: skip

#: Unsloth's offloaded checkpointing copies each checkpoint back through GPU staging buffers
#: (unsloth_zoo/gradient_checkpointing.py: GPU_BUFFERS, and GPU_BUFFERS_B when double buffering)
UNSLOTH_GPU_STAGING_BUFFERS = 2
#: a checkpoint of at most this many bytes stays on the GPU (gradient_checkpointing.py MINIMUM_SIZE)
UNSLOTH_OFFLOAD_MINIMUM_BYTES = 2 * 1024 * 1024
#: device memory outside torch's allocator that Unsloth's offloaded checkpointing adds to the device peak: on the H200
#: (2026-12-01/02) device - reserved was 764-766 MiB on every hf / TRL run and on Unsloth's two runs without
#: checkpointing, 834-840 MiB on 13 of its 14 checkpointed runs (Gemma 3 4B: 1018). Where it goes (the side
#: stream's copies of pinned host memory, or the compiled blocks' kernel images) is not read from the source yet
UNSLOTH_OFFLOAD_OUTSIDE_ALLOCATOR_BYTES = 70 * 1024**2
#: Unsloth on Gemma 3, on top of that: device - reserved 1017.6, 1017.6 and 1019.6 MiB on its three H200 runs (4B LoRA
#: at s 2048 and s 4096, 4B QLoRA; session 9's unsloth-gemma grid), 184.0 MiB above Unsloth's other checkpointed runs
#: every time. unsloth_zoo compiles Gemma 3's modules (the kernels' images are device memory outside the allocator is
#: the likely place; not read from the source). Measured with checkpointing only
UNSLOTH_GEMMA3_OUTSIDE_ALLOCATOR_BYTES = 184 * 1024**2
UNSLOTH_COMPILED_MODEL_TYPES = ("gemma3", "gemma3_text")
#: bytes per element of a bf16 activation, in the units of `LayerActivations` (bytes per b s h)
BF16_UNITS = 2
#: a torch.native_dropout mask: one bool byte per element
MASK_UNITS = 1


def liger_activations(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations, residual: int) -> LayerActivations:
    """Liger's RMSNorm, SwiGLU/GeGLU and RoPE kernels (liger_kernel/ops/rms_norm.py, swiglu.py, geglu.py, rope.py).

    * RMSNorm (``LigerRMSNormFunction`` saves X and the fp32 rstd [rows]): `residual` units per norm instead
      of the eager fp32 upcast plus normalised copy; the q/k norms of Qwen3/Gemma-3 too (2 units per width).
      The norm output is still saved by the linear layers that need it for their weight gradient (full FT).
    * SwiGLU/GeGLU (``LigerSiLUMulFunction`` saves gate and up outputs and recomputes the activation in
      backward): one I-wide tensor less than eager (the activation output). MoE expert MLPs are not patched
      here (transformers v5 fused experts): unchanged.
    * RoPE rotates q/k in place: nothing saved changes (eager saves only cos/sin too).
    * The final norm keeps only X; the fused cross-entropy does not keep the lm_head input.
    """
    units = dict(act.saved_units)
    full = setup.method == "full"
    pre_norms = 2
    if full and setup.dtype == "fp32":
        consumers = (1 if spec.fused_qkv else 3) + (1 if spec.fused_gate_up else 2)
        units["norms"] = residual * spec.norms_per_layer + 2.0 * consumers
    else:
        units["norms"] = residual * spec.norms_per_layer + (2.0 * pre_norms if full else 0.0)
    if "qk_norm" in units:
        units["qk_norm"] = 2.0 * (spec.q_width + spec.kv_width) / spec.hidden_size
    if spec.moe is None:
        elem = 4.0 if residual == 4 and setup.method == "qlora" else 2.0
        units["mlp"] = max(units["mlp"] - elem * spec.intermediate_size / spec.hidden_size, 0.0)
    return replace(act, saved_units=units, final_units=float(residual))


def fused_head_final_units(setup: TrainingSetup, act: LayerActivations) -> LayerActivations:
    """TRL's fused head saves its own gathered copy of the final hidden state (heads.trl_fused_head), so the
    lm_head input that eager full fine-tuning keeps (2 units) is not kept."""
    if setup.method != "full":
        return act
    return replace(act, final_units=max(act.final_units - 2.0, 0.0))


def unsloth_activations(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations) -> LayerActivations:
    """Unsloth's fused LoRA kernels (unsloth/kernels/fast_lora.py) and fast RMSNorm (kernels/rms_layernorm.py),
    bf16 residual stream (no prepare_model_for_kbit_training upcast). Modelled from the source, not measured.

    * ``Fast_RMS_Layernorm`` saves X and rstd: 2 units per norm; the two pre-norm outputs are saved by the
      LoRA kernels that consume them (``LoRA_QKV``, ``LoRA_MLP`` save X): 2 units each.
    * attention (flash/SDPA): q, k, v, out as in transformers.
    * ``LoRA_MLP`` saves X (counted above), the gate and up outputs e and g (2 I-wide bf16 tensors) and
      recomputes the activation and the product in backward: 4 I/h units.
    * the LoRA A/B intermediates are recomputed: nothing saved per target.
    * the attention output twice: SDPA keeps its [b, nh, s, hd] output for backward and the decoder block,
      compiled as one region (Unsloth 2026.10.9: "compiling each transformer block as one region"), saves a
      contiguous [b s, nh hd] copy for o_proj's LoRA kernel (H200 history u-l8-lora-s1024: 5 [s, h] bf16 tensors
      saved per layer where the eager modules keep 4, besides q, k, v).
    * lora_dropout > 0 runs inside the same kernels (fast_lora.py: FUSED_LORA_DROPOUT, on unless
      UNSLOTH_FUSED_LORA_DROPOUT=0): each projection's ``torch.native_dropout`` mask is saved, one byte per element
      of its input: q, k, v and gate, up read the [s, h] norm outputs, o_proj the [s, q_width] attention output,
      down_proj the [s, i] product (H200 history u-l8-qlora-gc-drop: six 8 MiB and one 28 MiB bool tensor more
      than the run without dropout, at s = 2048).
    Not modelled: that history's q, k, v and attention output are 12.5 % larger than their shapes (9 and 2.25 MiB
    instead of 8 and 2 at s = 1024: about 2 % of the layer), seen on one run only.
    Full fine-tuning runs the transformers modules: `act` as is.
    """
    if setup.method == "full" or setup.lora is None:
        return act
    h = spec.hidden_size
    units = {
        "norms": 2.0 * spec.norms_per_layer + 2.0 * 2,
        "attention": act.saved_units["attention"] + BF16_UNITS * spec.q_width / h,
    }
    if "qk_norm" in act.saved_units:
        units["qk_norm"] = 2.0 * (spec.q_width + spec.kv_width) / h
    units["mlp"] = 4.0 * spec.intermediate_size / h if spec.moe is None else act.saved_units["mlp"]
    if setup.lora.dropout > 0:
        mlp_inputs = 2.0 + spec.intermediate_size / h if spec.moe is None else 0.0
        units["dropout_masks"] = MASK_UNITS * (3.0 + spec.q_width / h + mlp_inputs)
    return replace(act, saved_units=units, final_units=2.0)


def unsloth_backward_transient_units(spec: ModelSpec, setup: TrainingSetup) -> float:
    """LoRA_MLP.backward with dropout (fast_lora.py): ``h = _dropout_replay(h, down_mask, ...)`` makes a new
    [s, i] bf16 tensor beside the in-place product, alive until the layer's dX is made (the upW dequantization,
    the layer's peak): b*s*i*2 bytes. Without dropout h is reused in place: nothing."""
    if setup.method == "full" or setup.lora is None or setup.lora.dropout == 0 or spec.moe is not None:
        return 0.0
    return BF16_UNITS * spec.intermediate_size / spec.hidden_size


def masked_attention(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations, *, packed: bool) -> LayerActivations:
    """Attention with an explicit mask: padded batches (b > 1 sequences of different lengths) or packed rows
    read through SDPA/eager. Modelled from the source, not measured.

    transformers builds a boolean mask once per forward (masking_utils.py: [b, 1, s, s] for padding; for
    packed position ids one block-diagonal [1, 1, T, T] with T = b s). With a mask, sdpa_attention_forward
    repeats K and V to every query head (enable_gqa only without a mask: +4 (qw - kw) units saved) and torch's
    SDPA converts the boolean mask to an additive bias in the query dtype per call, which the memory-efficient
    kernel saves for backward (2 bytes per mask element per layer). Eager attention adds the mask to scores it
    keeps anyway: only the mask itself. Flash (varlen) needs no mask.
    """
    if setup.attn == "flash":
        return act
    b, s, h = setup.batch_size, setup.seq_len, spec.hidden_size
    mask_elements_per_token = b * s if packed else s  # T^2 / (b s) or b s^2 / (b s)
    units = dict(act.saved_units)
    if setup.attn == "sdpa":
        units["attention_mask_bias"] = 2.0 * mask_elements_per_token / h
        units["attention"] = units["attention"] + 4.0 * (spec.q_width - spec.kv_width) / h
    return replace(act, saved_units=units, final_units=act.final_units + mask_elements_per_token / h)
