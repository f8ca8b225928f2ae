"""The built-in trainer: the only part of vramplan that imports torch/transformers/peft/bitsandbytes.

Public API (imported lazily, so ``import vramplan.trainer`` stays cheap):

* ``run_measurement(model, setup, *, steps, ...) -> MeasuredRun`` — one run in this process.
* ``measure_in_subprocess(model, setup, steps, *, runs_dir=None, ...) -> MeasuredRun`` — the same
  in a fresh process with the setup's allocator config (what ``vramplan measure`` uses).
* ``MemoryProbe`` — a ``transformers.TrainerCallback`` recording per-phase memory peaks.
* ``MeasurementError`` — a measurement that cannot be made as asked.
"""

from typing import Any

from .errors import MeasurementError

_LAZY = {
    "run_measurement": ".run",
    "measure_in_subprocess": ".worker",
    "MeasureRequest": ".worker",
    "MemoryProbe": ".probe",
}

__all__ = ["MeasureRequest", "MeasurementError", "MemoryProbe", "measure_in_subprocess", "run_measurement"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
