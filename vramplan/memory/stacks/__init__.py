"""Stack profiles: what the software that runs the job changes in the memory model (design.md "Stack profiles").

A profile is data plus the few term functions it swaps in: the LM-head/loss term (heads.py), the saved
activations of its kernels (kernels.py), whether QLoRA upcasts the frozen weights to fp32, the adapters'
dtype, whether checkpoints stay on the GPU. The estimator asks the profile; no term asks for a stack name.

| profile | what runs | source read |
|---|---|---|
| hf | transformers Trainer, the model's own loss | transformers 5.23, peft 0.21.2 |
| hf+liger | Trainer(use_liger_kernel=True): Liger FLCE, RMSNorm, SwiGLU, RoPE | liger-kernel 0.8.5 |
| trl | SFTTrainer: tiled LM head, no prepare_model_for_kbit_training, bf16 QLoRA adapters | trl 1.16.0 |
| trl+liger | SFTTrainer(use_liger_kernel=True): TRL's head stays, Liger's layer kernels only | trl 1.16.0 |
| unsloth | FastLanguageModel + its trainer patches (modelled, not measured) | unsloth / unsloth_zoo 2026.10.9 |
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

from ...errors import VramplanError
from ...models.params import largest_linear
from ...specs import ModelSpec, TrainingSetup
from ..constants import NF4_BLOCKSIZE
from ..activations import LayerActivations, layer_activations, residual_bytes_per_element
from .heads import HeadBytes, hf_head, liger_flce_head, trl_fused_head, unsloth_chunked_head
from .kernels import (
    LIGER_PATCHED,
    UNSLOTH_GPU_STAGING_BUFFERS,
    UNSLOTH_OFFLOAD_MINIMUM_BYTES,
    UNSLOTH_COMPILED_MODEL_TYPES,
    UNSLOTH_GEMMA3_OUTSIDE_ALLOCATOR_BYTES,
    UNSLOTH_OFFLOAD_OUTSIDE_ALLOCATOR_BYTES,
    fused_head_final_units,
    liger_activations,
    masked_attention,
    unsloth_activations,
    unsloth_backward_transient_units,
)

#: library versions each profile's constants were read from
PROFILE_VERSIONS: dict[str, dict[str, str]] = {
    "hf": {"transformers": "5.23.0", "peft": "0.21.2"},
    "trl": {"transformers": "5.23.0", "peft": "0.21.2", "trl": "1.16.0"},
    "unsloth": {"unsloth": "2026.10.9", "unsloth_zoo": "2026.10.9", "peft": "0.21.2"},
}
LIGER_VERSION = {"liger-kernel": "0.8.5"}
#: SFTConfig.max_length default (trl/trainer/sft_config.py)
TRL_DEFAULT_MAX_LENGTH = 1024
FP32 = 4
BF16 = 2


@dataclass(frozen=True)
class StackProfile:
    """What one stack changes; `name` is the label estimates and run records show."""

    name: str
    versions: dict[str, str]
    #: QLoRA: prepare_model_for_kbit_training casts every non-quantized weight to fp32 (fp32 residual stream)
    kbit_fp32_upcast: bool
    #: bytes per element of the LoRA adapters (and so of their gradients and Adam states)
    adapter_itemsize: int
    #: checkpoints live in host memory (only staging buffers on the GPU)
    offloads_checkpoints: bool
    head: Callable[[ModelSpec, TrainingSetup, "StackProfile"], HeadBytes]
    kernels: Callable[[ModelSpec, TrainingSetup, LayerActivations, int], LayerActivations]
    assumptions: Callable[[ModelSpec, TrainingSetup], list[str]]
    liger: bool = False
    #: buffers the stack itself keeps allocated from the first step on (name -> bytes, "weights.*" terms)
    buffers: Callable[[ModelSpec, TrainingSetup], dict[str, int]] = lambda spec, setup: {}
    #: extra layer-backward transients of the stack's kernels, in units of b*s*h bytes
    backward_transient_units: Callable[[ModelSpec, TrainingSetup], float] = lambda spec, setup: 0.0
    #: every method loads a saved checkpoint with from_pretrained (ties before loading: no tied lm_head copy)
    loads_checkpoint: bool = False
    #: the cache is emptied between the first forward and its backward (every Unsloth history of 2026-12-01/02, 11
    #: of 11: right after the loss's last chunk is freed, before the first recompute; the caller is not in unsloth
    #: or unsloth_zoo 2026.10.9's Python, so most likely the first backward's torch.compile / Triton set-up)
    empties_cache_before_first_backward: bool = False

    def activation_setup(self, setup: TrainingSetup) -> TrainingSetup:
        """The setup whose transformers-eager activations this stack starts from: QLoRA without the fp32 upcast
        saves what bf16 LoRA saves (memory_model.md 5.4: base Linear4bit keeps only its packed weight)."""
        if setup.method == "qlora" and not self.kbit_fp32_upcast:
            return setup.model_copy(update={"method": "lora", "quant": None})
        return setup

    def residual_bytes(self, setup: TrainingSetup) -> int:
        return residual_bytes_per_element(self.activation_setup(setup))

    def lm_head_fp32(self, setup: TrainingSetup) -> bool:
        return setup.dtype == "fp32" or (setup.method == "qlora" and self.kbit_fp32_upcast)

    def owns_lm_head(self, spec: ModelSpec) -> bool:
        """The loss multiplies hidden states by the lm_head weight itself (TRL's fused head, Liger's FLCE on a
        family it patches, Unsloth's chunked CE) instead of calling lm_head's forward. Then autocast keeps no
        bf16 copy of an fp32 lm_head (the head casts per tile), and the tied lm_head gradient comes back from
        the custom autograd Function contiguous, so autograd adds the embedding's gradient into it in place
        (measured on the H200, 2026-12-01: one [V, h] buffer at the embedding backward, not two)."""
        if self.head is _head_hf:
            return False
        return not (self.head is _head_liger and spec.model_type not in LIGER_PATCHED)

    def activations(self, spec: ModelSpec, setup: TrainingSetup) -> LayerActivations:
        act_setup = self.activation_setup(setup)
        act = layer_activations(spec, act_setup)
        return self.kernels(spec, act_setup, act, residual_bytes_per_element(act_setup))

    def head_bytes(self, spec: ModelSpec, setup: TrainingSetup) -> HeadBytes:
        return self.head(spec, setup, self)

    def offloaded(self, setup: TrainingSetup, checkpoint_bytes: int) -> bool:
        """Whether the layers' checkpoints go to host memory: Unsloth offloads a checkpoint of more than MINIMUM_SIZE
        bytes (unsloth_zoo gradient_checkpointing.py: ``new_size > MINIMUM_SIZE``) and keeps a smaller one."""
        return setup.grad_ckpt and self.offloads_checkpoints and checkpoint_bytes > UNSLOTH_OFFLOAD_MINIMUM_BYTES

    def checkpoint_copies(self, num_layers: int, setup: TrainingSetup, checkpoint_bytes: int) -> int:
        """How many layer checkpoints are resident on the GPU under gradient checkpointing, as activations. Unsloth's
        offloaded checkpointing keeps one: from the second forward on, the last layer's input (unsloth_zoo
        gradient_checkpointing.py: LAST_GC_INDEX, counted in the first pass, is not offloaded) until that layer's
        backward, the first; its staging buffers are checkpoint_buffers."""
        return 1 if self.offloaded(setup, checkpoint_bytes) else num_layers

    def outside_allocator(self, spec: ModelSpec, setup: TrainingSetup, checkpoint_bytes: int) -> int:
        """Device memory the stack takes outside torch's caching allocator (in the device peak, not in reserved):
        Unsloth's offloaded checkpointing, UNSLOTH_OFFLOAD_OUTSIDE_ALLOCATOR_BYTES, and on Gemma 3
        UNSLOTH_GEMMA3_OUTSIDE_ALLOCATOR_BYTES more (both measured, their source not read)."""
        offload = UNSLOTH_OFFLOAD_OUTSIDE_ALLOCATOR_BYTES if self.offloaded(setup, checkpoint_bytes) else 0
        compiled = self.name == "unsloth" and spec.model_type in UNSLOTH_COMPILED_MODEL_TYPES
        return offload + (UNSLOTH_GEMMA3_OUTSIDE_ALLOCATOR_BYTES if compiled else 0)

    def checkpoint_buffers(self, setup: TrainingSetup, checkpoint_bytes: int) -> dict[str, int]:
        """Buffers of offloaded checkpointing, kept from the first forward to the end ("weights.*" terms): Unsloth's
        GPU_BUFFERS and GPU_BUFFERS_B staging buffers, each grown to one checkpoint (sequence.py _staging_buffers)."""
        if not self.offloaded(setup, checkpoint_bytes):
            return {}
        return {"weights.checkpoint_staging_buffers": UNSLOTH_GPU_STAGING_BUFFERS * checkpoint_bytes}


def _lm_head_trainable(setup: TrainingSetup) -> bool:
    return setup.method == "full"


def _head_hf(spec: ModelSpec, setup: TrainingSetup, p: StackProfile) -> HeadBytes:
    return hf_head(spec, setup)


def _head_trl(spec: ModelSpec, setup: TrainingSetup, p: StackProfile) -> HeadBytes:
    e_w = FP32 if p.lm_head_fp32(setup) else BF16
    return trl_fused_head(spec, setup, e_h=p.residual_bytes(setup), e_w=e_w, lm_head_trainable=_lm_head_trainable(setup))


def _head_liger(spec: ModelSpec, setup: TrainingSetup, p: StackProfile) -> HeadBytes:
    if spec.model_type not in LIGER_PATCHED:
        return _head_hf(spec, setup, p)
    e_w = FP32 if p.lm_head_fp32(setup) else BF16
    return liger_flce_head(spec, setup, e_h=p.residual_bytes(setup), e_w=e_w, lm_head_trainable=_lm_head_trainable(setup))


def _head_unsloth(spec: ModelSpec, setup: TrainingSetup, p: StackProfile) -> HeadBytes:
    return unsloth_chunked_head(spec, setup, e_h=p.residual_bytes(setup))


def _packed_mask(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations) -> LayerActivations:
    return masked_attention(spec, setup, act, packed=True) if setup.packing else act


def _kernels_eager(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations, residual: int) -> LayerActivations:
    return _packed_mask(spec, setup, act)


def _kernels_trl(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations, residual: int) -> LayerActivations:
    """TRL's collator pads each batch to its longest row: with b > 1 there is padding, so a mask."""
    act = fused_head_final_units(setup, act)
    if setup.packing:
        return _packed_mask(spec, setup, act)
    return masked_attention(spec, setup, act, packed=False) if setup.batch_size > 1 else act


def _liger_layers(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations, residual: int) -> LayerActivations:
    return liger_activations(spec, setup, act, residual) if spec.model_type in LIGER_PATCHED else act


def _kernels_liger(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations, residual: int) -> LayerActivations:
    return _packed_mask(spec, setup, _liger_layers(spec, setup, act, residual))


def _kernels_trl_liger(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations, residual: int) -> LayerActivations:
    return _liger_layers(spec, setup, _kernels_trl(spec, setup, act, residual), residual)


def _kernels_unsloth(spec: ModelSpec, setup: TrainingSetup, act: LayerActivations, residual: int) -> LayerActivations:
    return _packed_mask(spec, setup, unsloth_activations(spec, setup, act))


def _buffers_unsloth(spec: ModelSpec, setup: TrainingSetup) -> dict[str, int]:
    """QLoRA: the LoRA kernels' forward dequantizes each 4-bit weight into one global buffer
    (unsloth/kernels/utils.py::matmul_lora -> fast_dequantize(use_global_buffer=True): WEIGHT_BUFFERS grows
    to the largest weight in the compute dtype, ABSMAX_BUFFERS to its fp32 absmax, one per 64 elements) that
    is never freed. Seen in the H200 histories: 112 MiB for Llama-3.1-8B, 129.5 MiB for Qwen2.5-7B.
    With lora_dropout > 0 the kernels take their dropout route (``_matmul_lora_ext``: use_global_buffer=False,
    ``ctx.global_buffer = plain``): every dequantization is a transient, no buffer stays (history
    u-l8-qlora-gc-drop: no 112 MiB tensor alive from the first forward on)."""
    if setup.method != "qlora" or (setup.lora is not None and setup.lora.dropout > 0):
        return {}
    out_f, in_f = largest_linear(spec)
    n = out_f * in_f
    return {"weights.unsloth_dequant_buffer": n * (FP32 if setup.dtype == "fp32" else BF16) + n // NF4_BLOCKSIZE * FP32}


def _assume_hf(spec: ModelSpec, setup: TrainingSetup) -> list[str]:
    out = [f"stack 'hf': transformers Trainer with {'fp16' if setup.dtype == 'fp16' else 'bf16'} autocast, "
           "the model's own cross-entropy over fp32 (b, s, V) logits"]  # fmt: skip
    if setup.packing:
        out.append(_packing_note(setup, "DataCollatorWithFlattening"))
    return out


def _packing_note(setup: TrainingSetup, how: str) -> str:
    if setup.attn == "flash":
        return f"--packing: padding-free rows ({how}, position ids): flash varlen attention, no mask"
    return (
        f"--packing with --attn {setup.attn}: one block-diagonal mask over the b*s packed tokens per forward"
        + (" and SDPA's masked kernel (repeated K/V, a bf16 bias per layer); modelled, not measured" if setup.attn == "sdpa" else "")
    )


def _assume_trl(spec: ModelSpec, setup: TrainingSetup) -> list[str]:
    out = [
        "stack 'trl': TRL SFTTrainer with SFTConfig defaults; its fused LM head scores b x (s-1) positions in "
        "4096 x 32768 tiles (no (b, s, V) logits) and computes entropy and token accuracy for its logs",
    ]
    if setup.method == "qlora":
        out.append(
            "TRL QLoRA: SFTTrainer(peft_config=...) on a 4-bit model does not call prepare_model_for_kbit_training "
            "(embeddings, lm_head and norms stay bf16) and casts the LoRA adapters to bf16"
        )
    if setup.seq_len > TRL_DEFAULT_MAX_LENGTH:
        out.append(
            f"this estimate is for {setup.seq_len}-token rows: SFTConfig's default max_length is "
            f"{TRL_DEFAULT_MAX_LENGTH}, so TRL truncates to it unless max_length is set that high"
        )
    if setup.packing:
        out.append(_packing_note(setup, "SFTConfig(packing=True), bfd strategy"))
    elif setup.batch_size > 1:
        out.append(
            "batches are padded to their longest sequence (--seq-len): a [b, 1, s, s] padding mask"
            + ("; SDPA's masked kernel repeats K/V and saves a bf16 bias per layer (modelled, not measured)"
               if setup.attn == "sdpa" else "")
        )
    out.append("activation_offloading=False (SFTConfig default)")
    return out


def _assume_liger(base: Callable[[ModelSpec, TrainingSetup], list[str]], trl: bool):
    def assume(spec: ModelSpec, setup: TrainingSetup) -> list[str]:
        out = base(spec, setup)
        if spec.model_type not in LIGER_PATCHED:
            out.append(f"--liger: Liger 0.8.5 does not patch model_type '{spec.model_type}': the hf terms apply")
        elif trl:
            out.append(
                "--liger with TRL 1.16: SFTTrainer keeps its fused LM head (it sets fused_linear_cross_entropy=False) "
                "and applies Liger's RMSNorm, SwiGLU/GeGLU and RoPE kernels"
            )
        else:
            out.append("--liger: Liger fused linear cross-entropy (no logits), RMSNorm, SwiGLU/GeGLU and RoPE kernels")
        return out

    return assume


def _assume_unsloth(spec: ModelSpec, setup: TrainingSetup) -> list[str]:
    out = [
        "stack 'unsloth': modelled from Unsloth 2026.10.9's source and measured on the H200 (12 runs): fused linear "
        "cross-entropy in fp32 chunks of at least 512 rows within a 2 GiB budget, no fp32 upcast of frozen weights",
    ]
    if setup.grad_ckpt:
        out.append("use_gradient_checkpointing='unsloth': checkpoints offloaded to host memory (2 GPU staging buffers)")
    if setup.method == "full":
        out.append("Unsloth full fine-tuning trains bf16 weights with bf16 Adam states on bf16 GPUs (its default; "
                   "float32_mixed_precision=True would upcast them)")
    else:
        out.append("Unsloth fused LoRA kernels (LoRA_MLP, LoRA_QKV, LoRA_W): activations recomputed in backward")
        if setup.lora is not None and setup.lora.dropout > 0:
            out.append("lora_dropout > 0 runs inside Unsloth's kernels (UNSLOTH_FUSED_LORA_DROPOUT=1, its default): "
                       "one bool mask saved per projection input, no global dequantization buffer")
        elif spec.model_type in UNSLOTH_COMPILED_MODEL_TYPES and setup.grad_ckpt:
            out.append("Unsloth's compiled Gemma 3: each layer's backward as recorded on the H200 (allocator/"
                       "unsloth_gemma3_layer.py, five patterns; a setup between them takes the nearest); step 0's "
                       "Inductor autotuning buffers (60 MiB each) are not modelled: reserved may be up to ~3 % higher")
    return out


_PROFILES: dict[tuple[str, bool], StackProfile] = {
    ("hf", False): StackProfile("hf", PROFILE_VERSIONS["hf"], True, FP32, False, _head_hf, _kernels_eager, _assume_hf),
    ("hf", True): StackProfile(
        "hf+liger", {**PROFILE_VERSIONS["hf"], **LIGER_VERSION}, True, FP32, False, _head_liger, _kernels_liger,
        _assume_liger(_assume_hf, trl=False), liger=True,
    ),
    ("trl", False): StackProfile("trl", PROFILE_VERSIONS["trl"], False, BF16, False, _head_trl, _kernels_trl, _assume_trl),
    ("trl", True): StackProfile(
        "trl+liger", {**PROFILE_VERSIONS["trl"], **LIGER_VERSION}, False, BF16, False, _head_trl, _kernels_trl_liger,
        _assume_liger(_assume_trl, trl=True), liger=True,
    ),
    ("unsloth", False): StackProfile(
        "unsloth", PROFILE_VERSIONS["unsloth"], False, FP32, True, _head_unsloth, _kernels_unsloth, _assume_unsloth,
        buffers=_buffers_unsloth, backward_transient_units=unsloth_backward_transient_units, loads_checkpoint=True,
        empties_cache_before_first_backward=True,
    ),
}  # fmt: skip


def stack_profile(setup: TrainingSetup) -> StackProfile:
    """The profile of `setup.stack` (with `setup.liger`), its adapter dtype resolved for the method."""
    profile = _PROFILES[(setup.stack, setup.liger)]
    if setup.method != "qlora" and profile.adapter_itemsize != FP32:
        # TRL casts the adapters to bf16 only for quantized models (sft_trainer.py: `if _is_quantized_model`)
        profile = replace(profile, adapter_itemsize=FP32)
    return profile


def check_stack_supported(spec: ModelSpec, setup: TrainingSetup) -> None:
    """Refuse what a stack cannot run. Raises VramplanError with the accepted alternatives."""
    if setup.stack != "unsloth":
        return
    if setup.num_gpus > 1:
        raise VramplanError("--stack unsloth runs on one GPU; accepted: --num-gpus 1 (or --stack hf|trl for multi-GPU)")
    if setup.method == "qlora" and setup.quant != "nf4":
        raise VramplanError(f"--stack unsloth loads 4-bit NF4 checkpoints; --quant {setup.quant} accepted: nf4")
    if setup.attn == "eager":
        raise VramplanError("--stack unsloth uses its own flash/SDPA attention; accepted: --attn sdpa|flash")
