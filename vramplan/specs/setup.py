"""TrainingSetup: how the model is trained (method, LoRA, batch, optimizer, runtime)."""

from typing import Literal

from .fields import Field, model_validator

from .base import Spec

Method = Literal["full", "lora", "qlora"]
Quant = Literal["nf4", "fp4", "int8"]
Optimizer = Literal[
    "adamw_torch_fused",
    "adamw_torch",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
]
Dtype = Literal["bf16", "fp16", "fp32"]
Attn = Literal["sdpa", "flash", "eager"]
Parallel = Literal["ddp", "fsdp", "zero2", "zero3"]
Offload = Literal["none", "optimizer", "all"]
Stack = Literal["hf", "trl", "unsloth"]

OPTIMIZERS: tuple[str, ...] = Optimizer.__args__  # type: ignore[attr-defined]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]
ATTNS: tuple[str, ...] = Attn.__args__  # type: ignore[attr-defined]
DTYPES: tuple[str, ...] = Dtype.__args__  # type: ignore[attr-defined]
QUANTS: tuple[str, ...] = Quant.__args__  # type: ignore[attr-defined]
PARALLELS: tuple[str, ...] = Parallel.__args__  # type: ignore[attr-defined]
OFFLOADS: tuple[str, ...] = Offload.__args__  # type: ignore[attr-defined]
STACKS: tuple[str, ...] = Stack.__args__  # type: ignore[attr-defined]
#: what each framework can move to CPU memory (FSDP CPUOffload moves parameters, gradients and optimizer
#: states together; ZeRO-2 offload_optimizer; ZeRO-3 offload_optimizer and offload_param)
OFFLOAD_SUPPORT: dict[str, tuple[str, ...]] = {"fsdp": ("all",), "zero2": ("optimizer",), "zero3": ("optimizer", "all")}

#: sizes beyond these are refused as absurd (one clear error instead of a silly number)
MAX_SEQ_LEN = 1_048_576
MAX_BATCH_SIZE = 4096
MAX_LORA_RANK = 16384
MAX_GPUS = 1024


class LoraSpec(Spec):
    """PEFT LoraConfig fields that change memory."""

    rank: int = Field(default=16, gt=0, le=MAX_LORA_RANK)
    #: None means PEFT's scaling default used by vramplan: 2 * rank (alpha does not change memory)
    alpha: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, allow_inf_nan=False)
    #: "all-linear" or explicit module names such as ("q_proj", "v_proj")
    targets: tuple[str, ...] = ("all-linear",)

    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    @property
    def all_linear(self) -> bool:
        return self.targets == ("all-linear",)


class TrainingSetup(Spec):
    """One fine-tuning job's settings, as the CLI flags name them."""

    method: Method
    lora: LoraSpec | None = None
    quant: Quant | None = None
    double_quant: bool = True
    seq_len: int = Field(default=2048, gt=0, le=MAX_SEQ_LEN)
    batch_size: int = Field(default=1, gt=0, le=MAX_BATCH_SIZE)
    grad_accum: int = Field(default=1, gt=0, le=65536)
    grad_ckpt: bool = False
    optimizer: Optimizer = "adamw_torch_fused"
    #: dtype the weights are loaded in; compute runs under bf16 autocast (fp16 when dtype is fp16)
    dtype: Dtype = "bf16"
    attn: Attn = "sdpa"
    expandable_segments: bool = False
    #: software stack profile (design.md "Stack profiles"): hf Trainer, TRL SFTTrainer, Unsloth
    stack: Stack = "hf"
    #: use_liger_kernel=True (hf, trl): Liger's fused linear cross-entropy and kernels
    liger: bool = False
    #: sequences packed into each row without padding (TRL packing=True / padding-free with position ids)
    packing: bool = False
    num_gpus: int = Field(default=1, gt=0, le=MAX_GPUS)
    parallel: Parallel | None = None
    #: CPU offload of the sharded training state where the framework offers it (see OFFLOAD_SUPPORT)
    offload: Offload = "none"

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingSetup":
        if self.method == "full":
            if self.lora is not None:
                raise ValueError("LoRA settings given with --method full; use --method lora or qlora")
            if self.quant is not None:
                raise ValueError("--quant applies to --method qlora only")
        else:
            if self.lora is None:
                raise ValueError(f"--method {self.method} needs LoRA settings")
        if self.method == "lora" and self.quant is not None:
            raise ValueError("--quant applies to --method qlora only (use --method qlora)")
        if self.method == "qlora" and self.quant is None:
            raise ValueError("--method qlora needs --quant nf4|fp4|int8")
        if self.liger and self.stack == "unsloth":
            raise ValueError("--liger applies to --stack hf|trl (Unsloth brings its own kernels)")
        if self.num_gpus > 1 and self.parallel is None:
            raise ValueError("--num-gpus > 1 needs --parallel ddp|fsdp|zero2|zero3")
        if self.offload != "none":
            offered = OFFLOAD_SUPPORT.get(self.parallel or "", ())
            if self.offload not in offered:
                where = ", ".join(f"{k}: {'|'.join(v)}" for k, v in OFFLOAD_SUPPORT.items())
                raise ValueError(
                    f"--offload {self.offload} is not offered with --parallel {self.parallel or 'none'}; accepted: {where}"
                )
        return self

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.batch_size * self.seq_len


def setup_label(setup: TrainingSetup) -> str:
    """Compact one-line label: 'qlora nf4 r16 s2048 b1 gc adamw_torch_fused bf16 sdpa'."""
    parts = [setup.method]
    if setup.quant:
        parts.append(setup.quant + ("" if setup.double_quant or setup.quant == "int8" else "-nodq"))
    if setup.lora:
        parts.append(f"r{setup.lora.rank}" + ("" if setup.lora.all_linear else ":" + "+".join(setup.lora.targets)))
    parts += [f"s{setup.seq_len}", f"b{setup.batch_size}"]
    if setup.grad_accum > 1:
        parts.append(f"ga{setup.grad_accum}")
    parts += ["gc" if setup.grad_ckpt else "nogc", setup.optimizer, setup.dtype, setup.attn]
    if setup.expandable_segments:
        parts.append("es")
    if setup.num_gpus > 1 or setup.parallel is not None:
        parts.append(f"{setup.num_gpus}x{setup.parallel}")
    if setup.offload != "none":
        parts.append(f"offload-{setup.offload}")
    if setup.stack != "hf":
        parts.append(setup.stack)
    if setup.liger:
        parts.append("liger")
    if setup.packing:
        parts.append("packed")
    return " ".join(parts)
