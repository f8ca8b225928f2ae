"""What single change makes a setup fit a GPU, smallest change first, with the bytes each saves (and, when no
single change does, the smallest combination that does: plan_rows.py)."""

from collections.abc import Callable, Iterator

from .errors import VramplanError
from .estimator import DEFAULT_HEADROOM, estimate
from .planner import (
    DEFAULT_MAX_GPUS,
    FEW_TARGETS,
    SEQ_LEN_STEP,
    Suggestion,
    _default_calibration,
    _shown,
    _with,
    gpu_counts,
)
from .search import largest
from .specs import Calibration, GpuSpec, LoraSpec, ModelSpec, TrainingSetup

def suggestions(
    model: ModelSpec,
    setup: TrainingSetup,
    gpu: GpuSpec,
    *,
    headroom: float = DEFAULT_HEADROOM,
    calibration: Calibration | None = None,
    max_gpus: int = DEFAULT_MAX_GPUS,
) -> tuple[Suggestion, ...]:
    """Single changes that lower the per-GPU device peak on `gpu`, smallest change first; only those that save.
    When none fits alone, the smallest combination of them that fits is added last (plan_rows.smallest_combination)."""
    calibration = calibration or _default_calibration()
    usable = int(gpu.memory_bytes * (1.0 - headroom))

    def device(s: TrainingSetup) -> int:
        return _shown(estimate(model, s, gpu, headroom=headroom, calibration=calibration)).device_peak_bytes

    base = device(setup)
    out, saving = [], []
    for change, changed in _changes(model, setup, lambda s: device(s) <= usable, max_gpus):
        try:
            peak = device(changed)
        except VramplanError:
            continue
        saving.append((change, changed, base - peak))  # a change may only pay off combined (QLoRA + checkpointing)
        if peak < base:
            out.append(Suggestion(change, base - peak, peak <= usable))
    if out and not any(s.fits for s in out):
        from .plan_rows import smallest_combination  # it imports this module

        out += smallest_combination(setup, saving, lambda s: device(s), usable, base)
    return tuple(out)


def _changes(model: ModelSpec, s: TrainingSetup, fits: Callable[[TrainingSetup], bool], max_gpus: int) -> Iterator[tuple[str, TrainingSetup]]:
    """(flag change, changed setup), in the order a user would rather make them."""
    if not s.grad_ckpt:
        yield "--grad-ckpt", _with(s, grad_ckpt=True)
    # the stack that runs the job: TRL's tiled LM head and Liger's fused cross-entropy never build the logits
    # (as flags: --stack trl turns checkpointing on unless told otherwise, so a setup without it says so)
    if s.stack == "hf":
        yield "--stack trl" + ("" if s.grad_ckpt else " --no-grad-ckpt"), _with(s, stack="trl")
    if _unsloth_can_run(s):  # measured on the H200 (README "Stacks"); its fused LoRA kernels want dropout 0
        lora = s.lora.model_copy(update={"dropout": 0.0}) if s.lora else None
        flags = "--stack unsloth" + (" --lora-dropout 0" if s.lora and s.lora.dropout else "")
        yield flags + ("" if s.grad_ckpt else " --no-grad-ckpt"), _with(s, stack="unsloth", lora=lora)
    if s.stack in ("hf", "trl") and not s.liger:
        yield "--liger", _with(s, liger=True)
    if s.batch_size > 1:
        b = largest(lambda v: _fits_or_false(fits, s, batch_size=v), 1, s.batch_size - 1) or 1
        ga = -(-s.batch_size * s.grad_accum // b)
        yield f"--batch-size {b} --grad-accum {ga}", _with(s, batch_size=b, grad_accum=ga)
    if s.optimizer not in ("adamw_8bit", "paged_adamw_8bit"):
        yield "--optimizer adamw_8bit", _with(s, optimizer="adamw_8bit")
    if s.method != "qlora":
        lora = s.lora or LoraSpec()
        rank = "" if s.lora else f" --lora-rank {lora.rank}"
        dtype = {"dtype": "bf16"} if s.dtype == "fp32" else {}
        yield f"--method qlora --quant nf4{rank}", _with(s, method="qlora", quant="nf4", lora=lora, **dtype)
    if s.lora is not None and not set(s.lora.targets) <= set(FEW_TARGETS):
        yield f"--lora-targets {','.join(FEW_TARGETS)}", _with(s, lora=s.lora.model_copy(update={"targets": FEW_TARGETS}))
    if s.seq_len > 1:
        seq = largest(lambda v: _fits_or_false(fits, s, seq_len=v), 1, s.seq_len - 1) or s.seq_len // 2
        seq = seq // SEQ_LEN_STEP * SEQ_LEN_STEP or seq
        yield f"--seq-len {seq}", _with(s, seq_len=seq)
    if not s.expandable_segments:
        yield "--expandable-segments", _with(s, expandable_segments=True)
    if s.num_gpus == 1:
        counts = gpu_counts(max(max_gpus, 2))[1:]
        n = next((c for c in counts if _fits_or_false(fits, s, num_gpus=c, parallel="fsdp")), counts[-1])
        yield f"--num-gpus {n} --parallel fsdp", _with(s, num_gpus=n, parallel="fsdp")


def _unsloth_can_run(s: TrainingSetup) -> bool:
    """The command line the suggestion is appended to can take --stack unsloth (no --liger: the setup would be
    refused; no --packing). What Unsloth itself cannot run (several GPUs, fp4/int8, eager attention) is refused
    by the estimate (memory/stacks.check_stack_supported), and suggestions() skips a change that is refused."""
    return s.stack in ("hf", "trl") and not s.liger and not s.packing


def _fits_or_false(fits: Callable[[TrainingSetup], bool], s: TrainingSetup, **changes) -> bool:
    try:
        return fits(_with(s, **changes))
    except VramplanError:
        return False
