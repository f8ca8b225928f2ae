"""calibrate: fit the few named, bounded constants of the memory model from run records.

The analytic terms (weights, states, activations, loss buffers ...) are not scaled: where a term is
off, its formula is fixed. What is fitted is what no formula predicts from first principles:
* `cuda_context_bytes` — the process's GPU memory outside torch's reserved pool (CUDA context, module
  images, cuBLAS/cuDNN handles): the median of device peak - reserved peak over the runs;
* `fragmentation` / `fragmentation_logits` (and their `_expandable` twins for expandable_segments) — the
  caching allocator's reserved/allocated gap, modelled as a fraction of allocated plus a multiple of the
  fp32 logits buffer (4 N V): least squares over the runs whose reserved peak the steady-step loss-segment
  rule does not already explain, then the 4 N V multiple raised until no fitted run is under-predicted by
  more than MAX_FITTED_UNDER_PREDICTION.
Each is clipped to its bound. `leave_one_out` predicts every run with constants fitted without it.
"""

import json
import os
import statistics
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from .atomic import replace_atomically
from .errors import VramplanError
from .estimator import CALIBRATED_DEFAULTS, estimate
from .memory.loss import logits_count
from .memory.constants import GIB, MIB, STACK_VERSIONS
from .models import resolve_model
from .specs import Calibration, MeasuredRun, ValidationError
from .validation import Validation, compare_run, validate

CALIBRATION_VERSION_PREFIX = "cal"

BOUNDS: dict[str, tuple[float, float]] = {
    "cuda_context_bytes": (200 * MIB, 2 * GIB),
    "fragmentation": (0.0, 0.25),
    "fragmentation_expandable": (0.0, 0.25),
    "fragmentation_logits": (0.0, 3.0),
    "fragmentation_logits_expandable": (0.0, 3.0),
}


#: fewer runs than fitted constants is an under-determined fit: refused
MIN_RUNS = len(BOUNDS)


def usable_runs(runs: list[MeasuredRun]) -> list[MeasuredRun]:
    """Runs with a measured peak: not OOM, not capped, measured on one GPU.

    Multi-GPU runs (``environment.num_gpus > 1``) are left out of the fit: the constants here
    are single-process allocator constants, while DDP/FSDP runs add NCCL buffers and FSDP's
    gather/reduce-scatter segments (their reserved-allocated gap is several times a 1-GPU run's,
    and ``_safe_fraction`` would raise the fragmentation of every estimate to cover them).
    DeepSpeed ZeRO runs at world size 1 are left out for the same reason (their partitioned buffers and, with
    offload, pinned staging leave reserved far above allocated). ``validation.validate`` still compares them."""
    from .runs import single_gpu_run  # not at import: the estimate path loads this module

    return [
        r
        for r in runs
        if not r.measurements.oom
        and r.measurements.memory_cap_bytes is None
        and r.measurements.max_allocated_bytes
        and r.measurements.max_reserved_bytes
        and single_gpu_run(r)
    ]


def fitting_runs(runs: list[MeasuredRun]) -> list[MeasuredRun]:
    """The usable runs the constants are fitted on: those of the plain `hf` stack. The allocator constants
    describe what the hf loss chain strands; the other stacks' runs (TRL, Liger) are judged against them, never
    fitted, so their accuracy is a hold-out (fitting on all runs also lowered the hf accuracy: reserved median
    3.3 % instead of 2.3 %, leave-one-out over the 115 single-GPU runs of 2026-12-01)."""
    return [r for r in usable_runs(runs) if r.setup.stack == "hf" and not r.setup.liger]


def fit(runs: list[MeasuredRun], *, version: str | None = None) -> Calibration:
    """Fit the calibrated constants from `runs` (their `fitting_runs`). Raises VramplanError when no run can be
    used."""
    runs = fitting_runs(runs)
    if not runs:
        raise VramplanError("no run record with measured GPU memory to calibrate from; run `vramplan measure` first")
    if len(runs) < MIN_RUNS:
        raise VramplanError(
            f"{len(runs)} usable run record(s) cannot fit {len(BOUNDS)} constants: calibrate needs at least "
            f"{MIN_RUNS} (single-GPU, not OOM, not memory-capped); the shipped calibration stays in use"
        )
    context: list[float] = []
    default_rows: list[tuple[float, float, float]] = []  # (allocated, 4NV, reserved - allocated)
    expandable_rows: list[tuple[float, float, float]] = []
    for run in runs:
        m = run.measurements
        spec = resolve_model(run.model_source or run.model)
        raw = estimate(spec, run.setup, reserved_rule="rules").memory  # the rules' own terms are fitted
        if m.device_peak_bytes:
            context.append(m.device_peak_bytes - m.max_reserved_bytes - raw.outside_allocator_bytes)
        if raw.steady_loss_reserved_bytes >= (1 - MAX_FITTED_UNDER_PREDICTION) * m.max_reserved_bytes:
            continue  # the steady-step loss segments explain this reserved peak; no fragmentation to fit
        logits = 4.0 * logits_count(spec, run.setup)
        row = (float(raw.peak_allocated_bytes), logits, float(m.max_reserved_bytes - raw.peak_allocated_bytes))
        (expandable_rows if run.setup.expandable_segments else default_rows).append(row)
    constants: dict[str, float] = {}
    if context:
        constants["cuda_context_bytes"] = _clip("cuda_context_bytes", statistics.median(context))
    if default_rows:
        constants.update(_fit_allocator_gap(default_rows, "fragmentation", "fragmentation_logits"))
    if expandable_rows:
        constants.update(
            _fit_allocator_gap(expandable_rows, "fragmentation_expandable", "fragmentation_logits_expandable")
        )
    gpus = sorted({r.environment.gpu_id or r.environment.gpu_name or "unknown" for r in runs})
    stack = _stack_versions(runs)
    return Calibration(
        version=version or f"{CALIBRATION_VERSION_PREFIX}-{'+'.join(gpus)}-{len(runs)}runs",
        constants=constants,
        bounds={k: BOUNDS[k] for k in constants},
        fitted_on=tuple(r.run_id for r in runs),
        stack_versions=stack,
        notes=f"fitted {datetime.now(timezone.utc):%Y-%m-%d} on {', '.join(gpus)}; constants read from "
        + ", ".join(f"{k} {v}" for k, v in STACK_VERSIONS.items()),
    )


#: calibration keeps every fitted run's reserved prediction at least this close from below: an under-prediction
#: is an OOM for the user, an over-prediction only a little unused memory
MAX_FITTED_UNDER_PREDICTION = 0.048


def _fit_allocator_gap(rows: list[tuple[float, float, float]], fraction: str, logits: str) -> dict[str, float]:
    """The fraction-of-allocated and 4 N V constants named `fraction` / `logits` for one allocator mode:
    least squares, then the 4 N V coefficient raised to the safety margin, then the fraction if that
    coefficient hit its bound; each clipped to its bounds."""
    frag, frag_logits = _fit_gap(rows, prior_b=CALIBRATED_DEFAULTS[logits])
    frag = _clip(fraction, frag)
    frag_logits = _clip(logits, max(frag_logits, _safe_logits_coef(rows, frag)))
    return {fraction: _clip(fraction, max(frag, _safe_fraction(rows, frag_logits))), logits: frag_logits}


def _safe_logits_coef(rows: list[tuple[float, float, float]], frag: float) -> float:
    """Smallest 4 N V coefficient that under-predicts no fitted run's reserved peak by more than the margin.

    The misses the least-squares fit leaves are holes next to the loss buffers: a 4 N V request that finds
    the cache's largest hole a little too small (allocator replays: 0.87 GiB free for a 0.98 GiB request
    in a QLoRA load segment; a 32 MiB block left inside a freed 0.58 GiB loss segment), so the margin is
    taken on the 4 N V term, which leaves runs with small loss buffers alone."""
    need = [((1 - MAX_FITTED_UNDER_PREDICTION) * (alloc + gap) - alloc * (1 + frag)) / nv for alloc, nv, gap in rows if nv > 0]
    return max(need, default=0.0)


def _safe_fraction(rows: list[tuple[float, float, float]], logits_coef: float) -> float:
    """Smallest fragmentation fraction that under-predicts no fitted run's reserved peak by more than the margin
    (after the 4 N V coefficient: only where that one reached its bound)."""
    need = [((1 - MAX_FITTED_UNDER_PREDICTION) * (alloc + gap) - logits_coef * nv) / alloc - 1 for alloc, nv, gap in rows]
    return max(need)


def _fit_gap(rows: list[tuple[float, float, float]], prior_b: float) -> tuple[float, float]:
    """Least squares of gap = a * allocated + b * 4NV, weighted by 1/reserved^2 (relative error).

    With fewer than 3 runs, or a degenerate system, b keeps its prior and a is the median ratio."""
    if len(rows) >= 3:
        w = [1.0 / (alloc + gap) ** 2 for alloc, _, gap in rows]
        s_aa = sum(wi * a * a for wi, (a, _, _) in zip(w, rows))
        s_bb = sum(wi * b * b for wi, (_, b, _) in zip(w, rows))
        s_ab = sum(wi * a * b for wi, (a, b, _) in zip(w, rows))
        s_ay = sum(wi * a * y for wi, (a, _, y) in zip(w, rows))
        s_by = sum(wi * b * y for wi, (_, b, y) in zip(w, rows))
        det = s_aa * s_bb - s_ab * s_ab
        if det > 1e-12 * s_aa * s_bb:
            a = (s_ay * s_bb - s_by * s_ab) / det
            b = (s_by * s_aa - s_ay * s_ab) / det
            if a >= 0 and b >= 0:
                return a, b
    return statistics.median((gap - prior_b * nv) / alloc for alloc, nv, gap in rows), prior_b


def _clip(name: str, value: float) -> float:
    lo, hi = BOUNDS[name]
    return float(min(max(value, lo), hi))


def _stack_versions(runs: list[MeasuredRun]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        seen = sorted({v for r in runs if (v := getattr(r.environment, key))})
        if seen:
            out[key] = ",".join(seen)
    return out


def leave_one_out(runs: list[MeasuredRun], reserved_rule: str = "auto") -> Validation:
    """Each usable run predicted by a calibration fitted on all the other runs (with reserved_rule "simulated"
    only the CUDA context constant is used: the simulation has no fragmentation constant). The runs no fit uses
    (multi-GPU, DeepSpeed: usable_runs) are predicted with the calibration fitted on all the usable ones, as a user's
    estimate is with the shipped one: none of them is in it."""
    usable = usable_runs(runs)
    others_of: Callable[[int], list[MeasuredRun]] = lambda i: usable[:i] + usable[i + 1 :]  # noqa: E731
    whole = fit(usable) if len(fitting_runs(usable)) >= MIN_RUNS else None
    result = validate([r for r in runs if r not in usable], whole, reserved_rule=reserved_rule)
    for i, run in enumerate(usable):
        others = others_of(i)
        calibration = fit(others) if len(fitting_runs(others)) >= MIN_RUNS else None
        try:
            result.comparisons.append(compare_run(run, calibration, reserved_rule))
        except VramplanError as exc:
            result.skipped.append((run.run_id, str(exc)))
    return result


# --- the shipped calibration file ---------------------------------------------------------------

SHIPPED_FILE = "default.json"


def shipped_calibration_path() -> Path:
    return Path(str(resources.files("vramplan") / "calibration_data" / SHIPPED_FILE))


CALIBRATION_ENV = "VRAMPLAN_CALIBRATION"


def load_calibration(path: Path | str | None = None) -> Calibration | None:
    """`path`, else $VRAMPLAN_CALIBRATION, else the shipped calibration; None when the shipped file is absent.

    Raises VramplanError when a file named by `path` or $VRAMPLAN_CALIBRATION does not exist or is a folder,
    or when the file is corrupt (the message names the first bad field)."""
    named = path or os.environ.get(CALIBRATION_ENV)
    p = Path(named or shipped_calibration_path())
    origin = f"${CALIBRATION_ENV}" if named and not path else "calibration file"
    if not p.is_file():
        if named is None:
            return None
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise VramplanError(f"{origin} {p} {what}; accepted: a calibration JSON written by `vramplan calibrate --out`")
    try:
        calibration = Calibration.model_validate_json(p.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "file"
        raise VramplanError(f"calibration file {p} is not valid: {where}: {first.get('msg')}") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise VramplanError(f"calibration file {p} is not valid: {str(exc).splitlines()[0]}") from None
    for name, value in calibration.constants.items():
        if name not in BOUNDS:
            raise VramplanError(f"calibration file {p} is not valid: constants.{name}: unknown; accepted: {', '.join(BOUNDS)}")
        lo, hi = BOUNDS[name]
        if not lo <= value <= hi:
            raise VramplanError(f"calibration file {p} is not valid: constants.{name} = {value:g} is outside {lo:g} .. {hi:g}")
    return calibration


def save_calibration(calibration: Calibration, path: Path | str, *, force: bool = False) -> Path:
    """Write `calibration` to `path` atomically: a uniquely named temporary file in the same folder, fsynced,
    then renamed over `path` (concurrent writers each write whole files; the last rename wins).

    Raises VramplanError when `path` is a folder, or is the package's shipped calibration and not `force`."""
    p = Path(path)
    if p.is_dir():
        raise VramplanError(f"--out {p} is a folder; accepted: a file path such as {p / 'calibration.json'}")
    if not force and p.resolve() == shipped_calibration_path().resolve():
        raise VramplanError(f"--out {p} is the calibration shipped with vramplan; add --force to replace it")
    p.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(calibration.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"
    replace_atomically(p, text)
    return p
