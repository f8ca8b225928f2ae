"""The assumptions an estimate lists: what it takes for granted about the job that the numbers depend on."""

from .memory.activations import NO_SDPA
from .memory.constants import STACK_VERSIONS
from .memory.parallel import parallel_assumptions
from .memory.stacks import stack_profile
from .specs import GpuSpec, ModelSpec, TrainingSetup


def estimate_assumptions(model: ModelSpec, setup: TrainingSetup, gpu: GpuSpec | None) -> tuple[str, ...]:
    """What an estimate of `setup` assumes, as sentences: the stack profile's, then the runtime's."""
    profile = stack_profile(setup)
    versions = ", ".join(f"{k} {v}" for k, v in {**STACK_VERSIONS, **profile.versions}.items())
    out = [
        *profile.assumptions(model, setup),
        f"constants read from {versions}",
        "fixed-length batches without padding (attention_mask=None, packed or synthetic data)",
    ]
    if setup.parallel not in ("zero2", "zero3"):  # DeepSpeed's bf16 mode keeps fp32 masters (its own line says so)
        out.append(f"weights trained in {setup.dtype}; no separate fp32 master copy (HF Trainer/accelerate keep none)")
    # families with their own attention note (models/families.py FAMILY_NOTES) say what their kernels are
    own_attention_note = model.model_type in NO_SDPA
    if setup.attn == "flash" and not own_attention_note:
        out.append("attn 'flash' = flash_attention_2 (flash-attn installed); same saved bytes as SDPA-flash")
    if setup.attn == "sdpa" and not own_attention_note:
        out.append("SDPA picks the flash kernel (bf16/fp16, head_dim <= 256, no mask)")
    if setup.grad_ckpt and not profile.offloads_checkpoints:  # Unsloth's own kind is in its profile's list
        out.append("non-reentrant gradient checkpointing of every decoder layer (Trainer default)")
    if setup.method == "qlora" and profile.kbit_fp32_upcast:
        experts = ", and the fused MoE experts" if model.moe is not None else ""
        out.append(
            "QLoRA: every nn.Linear except lm_head quantized; prepare_model_for_kbit_training upcasts all other "
            f"weights (embeddings, lm_head, norms, biases{experts}) to fp32, making the residual stream fp32"
        )
    if setup.lora is not None:
        dtype = "fp32 (PEFT autocast_adapter_dtype=True)" if profile.adapter_itemsize == 4 else "bf16"
        out.append(f"LoRA adapters in {dtype}")
    if model.moe is not None:
        out.append(
            "MoE on transformers v5: experts are fused 3-D parameters, not nn.Linear: bitsandbytes does not "
            "quantize them; LoRA all-linear wraps them (PEFT ParamWrapper) only where PEFT converts the layout"
        )
    if setup.optimizer.startswith("paged_"):
        out.append("paged optimizer states live in CUDA managed memory: outside torch's counters, counted in device peak")
    if gpu is None:
        out.append("no --gpu given: cuBLAS workspace sized for Hopper (2 x 32 MiB)")
    return tuple(out) + parallel_assumptions(setup)
