"""validate: predicted vs measured for every run record, the error of each, median and worst.

Error = predicted / measured - 1 (positive: over-predicted, safe; negative: under-predicted, an OOM
risk for the user). Runs that ran out of memory, or were measured without a GPU, carry no peak to
compare and are listed as skipped.
"""

import statistics
from dataclasses import dataclass, field

from gpu_catalog import find_gpu

from .errors import VramplanError
from .estimator import estimate
from .models import resolve_model
from .specs import Calibration, MeasuredRun, setup_label

TOTALS = ("allocated", "reserved", "device")


@dataclass(frozen=True)
class RunComparison:
    run_id: str
    model: str
    summary: str
    predicted: dict[str, int]
    measured: dict[str, int | None]
    peak_phase: str
    #: which rule set the predicted reserved peak (MemoryBreakdown.reserved_rule)
    reserved_rule: str = "fragmentation"
    #: the stack profile of the run ("hf", "trl+liger", ..., "hf 1xzero3" with a strategy): accuracy is reported per stack
    stack: str = "hf"

    def error(self, total: str) -> float | None:
        m = self.measured.get(total)
        if not m:
            return None
        return self.predicted[total] / m - 1.0


@dataclass
class Validation:
    comparisons: list[RunComparison] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def errors(self, total: str) -> list[float]:
        return [e for c in self.comparisons if (e := c.error(total)) is not None]

    def stats(self, total: str, stack: str | None = None) -> dict[str, float | int | None]:
        """Error statistics of one total, over every run or over the runs of one stack profile."""
        errs = [e for c in self.comparisons if (stack is None or c.stack == stack) and (e := c.error(total)) is not None]
        if not errs:
            return {"runs": 0, "median_abs": None, "worst_abs": None, "worst_under": None}
        return {
            "runs": len(errs),
            "median_abs": statistics.median(abs(e) for e in errs),
            "worst_abs": max(abs(e) for e in errs),
            "worst_under": min(errs),
        }


    def stacks(self) -> list[str]:
        """The stack profiles of the compared runs, hf first."""
        return sorted({c.stack for c in self.comparisons}, key=lambda name: (name != "hf", name))


def setup_summary(run: MeasuredRun) -> str:
    return setup_label(run.setup)


def compare_run(run: MeasuredRun, calibration: Calibration | None = None, reserved_rule: str = "auto") -> RunComparison:
    """Estimate the run's setup on its GPU and pair it with the measured totals."""
    spec = resolve_model(run.model_source or run.model)
    gpu = None
    if run.environment.gpu_id:
        try:
            gpu = find_gpu(run.environment.gpu_id)
        except VramplanError:
            gpu = None
    e = estimate(spec, run.setup, gpu, calibration=calibration, reserved_rule=reserved_rule)
    mem = e.calibrated or e.memory
    meas = run.measurements
    return RunComparison(
        run_id=run.run_id,
        model=run.model,
        summary=setup_summary(run),
        predicted={
            "allocated": mem.peak_allocated_bytes,
            "reserved": mem.peak_reserved_bytes,
            "device": mem.device_peak_bytes,
        },
        measured={
            "allocated": meas.max_allocated_bytes,
            "reserved": meas.max_reserved_bytes,
            "device": meas.device_peak_bytes,
        },
        peak_phase=mem.peak_phase,
        reserved_rule=mem.reserved_rule,
        # a strategy's runs (DeepSpeed at world size 1, multi-GPU) are reported apart from the stack's single-GPU ones
        stack=e.stack if run.setup.parallel is None else f"{e.stack} {run.setup.num_gpus}x{run.setup.parallel}",
    )


def validate(runs: list[MeasuredRun], calibration: Calibration | None = None, reserved_rule: str = "auto") -> Validation:
    out = Validation()
    for run in runs:
        m = run.measurements
        if m.oom:
            out.skipped.append((run.run_id, f"out of memory in {m.oom_phase or 'an unknown phase'}"))
            continue
        if m.max_allocated_bytes is None:
            out.skipped.append((run.run_id, "no GPU memory measured (CPU run)"))
            continue
        if m.memory_cap_bytes is not None:
            out.skipped.append((run.run_id, "capped run (memory fraction), checked separately"))
            continue
        if (run.extra or {}).get("process_group") == "fake":  # vramplan/trainer/fake_rank.py
            out.skipped.append((run.run_id, "fake rank: a multi-GPU run's allocator history without NCCL's memory, "
                                            "not a measurement (scripts/holdout.py compares its allocated and reserved)"))  # fmt: skip
            continue
        try:
            out.comparisons.append(compare_run(run, calibration, reserved_rule))
        except VramplanError as exc:
            out.skipped.append((run.run_id, str(exc)))
    return out
