"""The setup flags shared by estimate, plan, fit and measure (one definition, reused by every command); their values
become a TrainingSetup in setup_flags.py."""

from typing import Annotated, Optional

import typer

from .setup_flags import (  # noqa: F401 - re-exported: the commands and the page use them through this module
    FIELD_FLAGS,
    LORA_DEFAULTS,
    SETUP_PARAMS,
    STACK_DEFAULT_GRAD_CKPT,
    build_setup,
    parse_targets,
    setup_from,
    validation_message,
)

Model = Annotated[Optional[str], typer.Option("--model", "-m", help="catalog name (vramplan models), HF id in the local cache, or a config.json path")]
MethodOpt = Annotated[Optional[str], typer.Option("--method", help="full | lora | qlora")]
FromConfig = Annotated[
    Optional[list[str]],
    typer.Option("--from-config", help="Axolotl / LLaMA-Factory YAML, TrainingArguments / SFTConfig JSON or PEFT "
                 "adapter_config.json (repeatable); flags given explicitly override the files"),
]
LoraRank = Annotated[int, typer.Option("--lora-rank", help="LoRA rank r")]
LoraAlpha = Annotated[Optional[float], typer.Option("--lora-alpha", help="LoRA alpha (default 2*rank; no memory effect)")]
LoraDropout = Annotated[float, typer.Option("--lora-dropout", help="LoRA dropout (0 removes the dropout masks)")]
LoraTargets = Annotated[str, typer.Option("--lora-targets", help="all-linear or a comma list such as q_proj,v_proj")]
QuantOpt = Annotated[Optional[str], typer.Option("--quant", help="qlora: nf4 | fp4 | int8 (default nf4)")]
DoubleQuant = Annotated[bool, typer.Option("--double-quant/--no-double-quant", help="qlora: nested quantization of absmax")]
SeqLen = Annotated[int, typer.Option("--seq-len", help="tokens per sample")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="micro-batch size per GPU")]
GradAccum = Annotated[int, typer.Option("--grad-accum", help="gradient accumulation steps")]
GradCkpt = Annotated[Optional[bool], typer.Option("--grad-ckpt/--no-grad-ckpt", help="gradient checkpointing (default: the stack's: off for hf, on for trl and unsloth)", show_default=False)]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", help="adamw_torch_fused | adamw_torch | adamw_8bit | paged_adamw_8bit | paged_adamw_32bit | adafactor | sgd")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="dtype the weights are loaded in: bf16 | fp16 | fp32")]
AttnOpt = Annotated[str, typer.Option("--attn", help="sdpa | flash | eager")]
Expandable = Annotated[bool, typer.Option("--expandable-segments", help="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")]
StackOpt = Annotated[str, typer.Option("--stack", help="software stack: hf (Trainer) | trl (SFTTrainer) | unsloth")]
LigerOpt = Annotated[bool, typer.Option("--liger", help="use_liger_kernel=True (hf, trl): Liger fused linear cross-entropy and kernels")]
PackingOpt = Annotated[bool, typer.Option("--packing", help="pack sequences without padding (TRL packing=True / padding-free)")]
NumGpus = Annotated[int, typer.Option("--num-gpus", help="GPUs in the job")]
ParallelOpt = Annotated[Optional[str], typer.Option("--parallel", help="ddp | fsdp | zero2 | zero3")]
OffloadOpt = Annotated[str, typer.Option("--offload", help="CPU offload: none | optimizer (zero2, zero3) | all (fsdp, zero3)")]
Headroom = Annotated[float, typer.Option("--headroom", help="fraction of GPU memory kept free")]
FormatOpt = Annotated[str, typer.Option("--format", help="table | json")]
