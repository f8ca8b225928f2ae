"""CLI flag values -> a validated TrainingSetup (shared by the CLI, the fast entry point, the Python API and the
what-if page). No typer here: the fast path of `vramplan estimate|fit|plan` never imports it."""

from .errors import VramplanError
from .specs import LoraSpec, TrainingSetup, ValidationError

#: gradient checkpointing when --grad-ckpt/--no-grad-ckpt is not given: what each stack does by default
#: (Trainer: TrainingArguments.gradient_checkpointing=False; TRL: SFTConfig gradient_checkpointing=True;
#: Unsloth: get_peft_model(use_gradient_checkpointing="unsloth"))
STACK_DEFAULT_GRAD_CKPT = {"hf": False, "trl": True, "unsloth": True}

#: TrainingSetup / LoraSpec field -> CLI flag, for error messages
FIELD_FLAGS = {
    "method": "--method",
    "rank": "--lora-rank",
    "alpha": "--lora-alpha",
    "dropout": "--lora-dropout",
    "targets": "--lora-targets",
    "quant": "--quant",
    "seq_len": "--seq-len",
    "batch_size": "--batch-size",
    "grad_accum": "--grad-accum",
    "optimizer": "--optimizer",
    "dtype": "--dtype",
    "attn": "--attn",
    "stack": "--stack",
    "num_gpus": "--num-gpus",
    "parallel": "--parallel",
    "offload": "--offload",
}


def build_setup(
    *,
    method: str,
    lora_rank: int,
    lora_alpha: float | None,
    lora_dropout: float,
    lora_targets: str,
    quant: str | None,
    double_quant: bool,
    seq_len: int,
    batch_size: int,
    grad_accum: int,
    grad_ckpt: bool | None,
    optimizer: str,
    dtype: str,
    attn: str,
    expandable_segments: bool,
    stack: str,
    num_gpus: int,
    parallel: str | None,
    offload: str = "none",
    liger: bool = False,
    packing: bool = False,
) -> TrainingSetup:
    """Flags -> validated TrainingSetup. Raises VramplanError with a one-line message naming the flag."""
    if method == "full":
        _refuse_lora_flags(lora_rank, lora_alpha, lora_dropout, lora_targets)
    try:
        lora = None
        if method in ("lora", "qlora"):
            lora = LoraSpec(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, targets=parse_targets(lora_targets))
        if method == "qlora" and quant is None:
            quant = "nf4"
        if grad_ckpt is None:
            grad_ckpt = STACK_DEFAULT_GRAD_CKPT.get(stack, False)
        return TrainingSetup(
            method=method,
            lora=lora,
            quant=quant,
            double_quant=double_quant,
            seq_len=seq_len,
            batch_size=batch_size,
            grad_accum=grad_accum,
            grad_ckpt=grad_ckpt,
            optimizer=optimizer,
            dtype=dtype,
            attn=attn,
            expandable_segments=expandable_segments,
            stack=stack,
            num_gpus=num_gpus,
            parallel=parallel,
            offload=offload,
            liger=liger,
            packing=packing,
        )
    except ValidationError as exc:
        raise VramplanError(validation_message(exc)) from None


#: the LoRA flags' defaults (the commands' signatures use the same values)
LORA_DEFAULTS = {"lora_rank": 16, "lora_alpha": None, "lora_dropout": 0.05, "lora_targets": "all-linear"}


def parse_targets(text: str) -> tuple[str, ...]:
    """`--lora-targets` as module names: "all-linear" or "q_proj,v_proj". Raises VramplanError for an empty
    list or an empty name (",," or a trailing comma), which would otherwise silently mean something else."""
    names = tuple(t.strip() for t in text.split(","))
    if not all(names):
        raise VramplanError(
            f"--lora-targets {text!r}: an empty module name; accepted: all-linear or a comma list such as q_proj,v_proj"
        )
    return names


def _refuse_lora_flags(lora_rank: int, lora_alpha: float | None, lora_dropout: float, lora_targets: str) -> None:
    """LoRA flags changed from their defaults with --method full describe a job that does not exist."""
    given = {"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "lora_targets": lora_targets}
    changed = [f"--{k.replace('_', '-')} {v}" for k, v in given.items() if v != LORA_DEFAULTS[k]]
    if changed:
        raise VramplanError(f"{', '.join(changed)} given with --method full; LoRA flags apply to --method lora | qlora")


SETUP_PARAMS = (
    "method", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "quant", "double_quant", "seq_len",
    "batch_size", "grad_accum", "grad_ckpt", "optimizer", "dtype", "attn", "expandable_segments", "stack",
    "num_gpus", "parallel", "offload", "liger", "packing",
)  # fmt: skip


def setup_from(params: dict, **overrides) -> TrainingSetup:
    """A command's parameters (its locals()) -> TrainingSetup; commands without --num-gpus get 1 GPU."""
    values = {"num_gpus": 1, "parallel": None}
    values.update({k: params[k] for k in SETUP_PARAMS if k in params})
    values.update(overrides)
    return build_setup(**values)


def validation_message(exc: ValidationError) -> str:
    """First validation error as one line: '--seq-len 0: Input should be greater than 0'."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if not str(p).isdigit()]
    field = loc[-1] if loc else ""
    flag = FIELD_FLAGS.get(field, field)
    value = err.get("input")
    msg = err.get("msg", "invalid value")
    if flag and not isinstance(value, dict):
        return f"{flag} {value!s}: {msg}"
    return msg.removeprefix("Value error, ")
