"""`from vramplan import estimate, plan, fit`: the CLI commands as Python functions.

Keyword arguments are named like the flags (`--lora-rank` -> `lora_rank`) and default like them
(tests/test_python_api.py checks both against the CLI). Each returns the object whose JSON is the
CLI's JSON: `vramplan.to_dict(result)` gives it. `from_config` takes the files `--from-config`
takes; arguments passed explicitly override them, as flags do.

    >>> from vramplan import estimate
    >>> e = estimate("llama-3.1-8b", method="qlora", lora_rank=16, seq_len=2048, grad_ckpt=True, gpu="rtx-4090")
    >>> e.verdict.fits
    True
"""

import contextvars
import functools
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import api
from .setup_flags import SETUP_PARAMS, build_setup
from .configs import Resolved, resolve
from .specs import Estimate

if TYPE_CHECKING:
    from .planner import FitResult, Plan

ConfigFiles = str | Path | Sequence[str | Path] | None

_GIVEN: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("vramplan_given", default=frozenset())


def _records_given(fn):
    """Remember which arguments the caller passed (explicit ones override config files)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _GIVEN.set(frozenset(sig.bind(*args, **kwargs).arguments))
        try:
            return fn(*args, **kwargs)
        finally:
            _GIVEN.reset(token)

    return wrapper


def _resolve(values: dict[str, Any]) -> Resolved:
    files = values.pop("from_config")
    files = [] if files is None else [files] if isinstance(files, (str, Path)) else list(files)
    return resolve(values, _GIVEN.get() - {"from_config"}, files)


def _setup(resolved: Resolved, **overrides: Any):
    values = {"num_gpus": 1, "parallel": None}
    values.update({k: resolved.params[k] for k in SETUP_PARAMS if k in resolved.params})
    values.update(overrides)
    return build_setup(**values)


@_records_given
def estimate(
    model: str | None = None,
    *,
    method: str | None = None,
    lora_rank: int = 16,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.05,
    lora_targets: str = "all-linear",
    quant: str | None = None,
    double_quant: bool = True,
    seq_len: int = 2048,
    batch_size: int = 1,
    grad_accum: int = 1,
    grad_ckpt: bool | None = None,
    optimizer: str = "adamw_torch_fused",
    dtype: str = "bf16",
    attn: str = "sdpa",
    expandable_segments: bool = False,
    stack: str = "hf",
    liger: bool = False,
    packing: bool = False,
    gpu: str | None = None,
    headroom: float = 0.05,
    num_gpus: int = 1,
    parallel: str | None = None,
    offload: str = "none",
    from_config: ConfigFiles = None,
    reserved_rule: str = "auto",
) -> Estimate:
    """`vramplan estimate`: peak memory of one setup, with a verdict when `gpu` is given. method qlora
    defaults quant to nf4; reserved_rule "auto" (default) replays an allocator model (docs/allocator_simulation.md)
    on one GPU and keeps the closed-form rules for multi-GPU and DeepSpeed setups ("rules": everywhere).
    Raises VramplanError (one line) on bad input."""
    resolved = _resolve({k: v for k, v in locals().items() if k != "reserved_rule"})
    return api.estimate_for(resolved.model, _setup(resolved), gpu=gpu, headroom=headroom,
                            assumptions=resolved.assumptions, reserved_rule=reserved_rule)  # fmt: skip


@_records_given
def plan(
    model: str | None = None,
    *,
    method: str | None = None,
    lora_rank: int = 16,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.05,
    lora_targets: str = "all-linear",
    quant: str | None = None,
    double_quant: bool = True,
    seq_len: int = 2048,
    batch_size: int = 1,
    grad_accum: int = 1,
    grad_ckpt: bool | None = None,
    optimizer: str = "adamw_torch_fused",
    dtype: str = "bf16",
    attn: str = "sdpa",
    expandable_segments: bool = False,
    stack: str = "hf",
    liger: bool = False,
    packing: bool = False,
    gpus: str = "all",
    max_gpus: int = 8,
    dataset_tokens: int | None = None,
    dataset_examples: int | None = None,
    epochs: float | None = None,
    sort: str = "cost",
    headroom: float = 0.05,
    from_config: ConfigFiles = None,
) -> "Plan":
    """`vramplan plan`: GPU x count x strategy options, best first, and what to change to fit.
    Raises VramplanError on bad input."""
    resolved = _resolve(dict(locals()))
    return api.plan_for(resolved.model, _setup(resolved), gpus=gpus, max_gpus=max_gpus, dataset_tokens=dataset_tokens,
                        dataset_examples=dataset_examples, epochs=epochs, sort=sort, headroom=headroom,
                        assumptions=resolved.assumptions)  # fmt: skip


@_records_given
def fit(
    model: str | None = None,
    *,
    gpu: str,
    solve: str,
    method: str | None = None,
    lora_rank: int = 16,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.05,
    lora_targets: str = "all-linear",
    quant: str | None = None,
    double_quant: bool = True,
    seq_len: int = 2048,
    batch_size: int = 1,
    grad_accum: int = 1,
    grad_ckpt: bool | None = None,
    optimizer: str = "adamw_torch_fused",
    dtype: str = "bf16",
    attn: str = "sdpa",
    expandable_segments: bool = False,
    stack: str = "hf",
    liger: bool = False,
    packing: bool = False,
    headroom: float = 0.05,
    num_gpus: int = 1,
    parallel: str | None = None,
    offload: str = "none",
    from_config: ConfigFiles = None,
) -> "FitResult":
    """`vramplan fit`: the largest batch-size | seq-len | lora-rank that fits `gpu`. Raises VramplanError."""
    resolved = _resolve(dict(locals()))
    return api.fit_for(resolved.model, _setup(resolved), gpu=gpu, solve=solve, headroom=headroom)


def to_dict(result: Any) -> dict:
    """The CLI's JSON object of an Estimate (`estimate --format json`, without `largest_fit`, which the CLI
    adds with --gpu), a Plan (`plan --format json`) or a FitResult (`fit --format json`)."""
    if isinstance(result, Estimate):
        from .report.estimate_view import estimate_doc

        return estimate_doc(result)
    from .planner import FitResult, Plan
    from .report.plan_view import fit_doc, plan_doc

    if isinstance(result, Plan):
        return plan_doc(result)
    if isinstance(result, FitResult):
        return fit_doc(result)
    raise TypeError(f"to_dict takes an Estimate, Plan or FitResult, not {type(result).__name__}")
