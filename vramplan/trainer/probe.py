"""MemoryProbe: a ``transformers.TrainerCallback`` that records where GPU memory peaks.

Add it to any Trainer::

    probe = MemoryProbe()
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[probe])
    trainer.train()
    print(probe.summary())   # keys are vramplan.specs.Measurements fields

How the phases are split (transformers 5.x ``Trainer._inner_training_loop``, trainer.py
~L1890-1961; the callback events exist since 4.47):

* load: everything before ``on_train_begin``; ``memory_after_load_bytes`` = allocated there.
* forward: from a forward pre-hook on the top model (reset peak) to its forward hook (read peak).
  With ``bf16=True`` accelerate wraps ``model.forward`` itself (autocast + fp32 output copy) and
  transformers models compute the loss inside ``forward`` when labels are given, so both are
  inside this window. Gradient-checkpoint recomputation calls the layers, not the top model,
  so the hooks fire once per micro-batch.
* backward: from the end of forward to ``on_pre_optimizer_step`` (which the Trainer calls after
  gradient clipping) or ``on_substep_end`` (micro-steps of gradient accumulation).
* optimizer: ``on_pre_optimizer_step`` .. ``on_optimizer_step`` (optimizer.step() alone).

Each window ends by folding ``max_memory_allocated``/``max_memory_reserved`` into run-wide
maxima and then resetting the peak counters, so the run maxima still cover every byte of the
timeline, including the gaps between windows (zero_grad, scheduler, data). With gradient
accumulation a phase's peak is the max over the micro-steps of that optimizer step. Step 0 is
reported apart (optimizer states are created lazily inside its optimizer step); "steady" is
the max over steps >= 1.

Memory is read through a ``MemoryReader`` (``gpu_memory.py``) so the bookkeeping runs on CPU
with a fake; on CPU without a fake every memory value is None.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from vramplan.specs import PhasePeaks

from .gpu_memory import CudaMemoryReader, DeviceMonitor, MemoryReader, NullMemoryReader

PHASES = ("forward", "backward", "optimizer")
#: phase names used for OOM reporting besides PHASES: before training starts, and the gaps
LOAD = "load"
OTHER = "other"


def default_reader() -> MemoryReader:
    """CUDA counters of device 0 when CUDA is usable, else the all-None reader."""
    import torch

    return CudaMemoryReader(0) if torch.cuda.is_available() else NullMemoryReader()


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class MemoryProbe(TrainerCallback):
    """Records memory after load, per-phase peaks (step 0 and steady state), run maxima,
    allocator retries, step times and tokens/s; and the device-level peak when given a
    ``DeviceMonitor`` plus the NVML 'used' baseline read before the CUDA context existed."""

    def __init__(
        self,
        reader: MemoryReader | None = None,
        device_monitor: DeviceMonitor | None = None,
        *,
        device_baseline_bytes: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.reader: MemoryReader = reader if reader is not None else default_reader()
        self.device_monitor = device_monitor
        self.device_baseline_bytes = device_baseline_bytes
        self._clock = clock
        #: where the run is now: "load", one of PHASES, or "other"
        self.phase: str = LOAD
        self.step: int = 0
        #: optimizer step -> phase -> peak allocated bytes (max over micro-steps)
        self.peaks: dict[int, dict[str, int]] = {}
        self.max_allocated_bytes: int | None = None
        self.max_reserved_bytes: int | None = None
        self.memory_after_load_bytes: int | None = None
        self.load_peak_allocated_bytes: int | None = None
        self.load_peak_reserved_bytes: int | None = None
        self.step_times_s: list[float] = []
        self.step_tokens: list[int] = []
        self._tokens = 0
        self._t0: float | None = None
        self._handles: list[Any] = []

    # ------------------------------------------------------------------ windows
    def _fold(self) -> int | None:
        """Fold the current window's peaks into the run maxima; return its peak allocated."""
        peak = self.reader.max_allocated()
        self.max_allocated_bytes = _max(self.max_allocated_bytes, peak)
        self.max_reserved_bytes = _max(self.max_reserved_bytes, self.reader.max_reserved())
        return peak

    def _end_window(self, record_as: str | None) -> None:
        peak = self._fold()
        if record_as is not None and peak is not None:
            slot = self.peaks.setdefault(self.step, {})
            slot[record_as] = max(slot.get(record_as, 0), peak)
        self.reader.reset_peak()
        if self.device_monitor is not None:
            self.device_monitor.sample()

    # ------------------------------------------------------------------ model hooks
    def attach(self, model) -> MemoryProbe:
        """Register the forward pre-hook and forward hook on ``model`` (the top module the
        Trainer calls). Called by ``on_train_begin``; call it yourself for a custom loop."""
        if not self._handles:
            self._handles = [
                model.register_forward_pre_hook(self._forward_start, with_kwargs=True),
                model.register_forward_hook(self._forward_end),
            ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward_start(self, module, args, kwargs) -> None:
        self._end_window("backward" if self.phase == "backward" else None)
        self.phase = "forward"
        ids = kwargs.get("input_ids") if kwargs else None
        if ids is None and args:
            ids = args[0]
        numel = getattr(ids, "numel", None)
        if callable(numel):
            self._tokens += int(numel())

    def _forward_end(self, module, args, output) -> None:
        if self.phase == "forward":
            self._end_window("forward")
            self.phase = "backward"

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.memory_after_load_bytes = self.reader.allocated()
        self.load_peak_allocated_bytes = self.reader.max_allocated()
        self.load_peak_reserved_bytes = self.reader.max_reserved()
        self._end_window(None)
        self.phase = OTHER
        if model is not None:
            self.attach(model)

    def on_step_begin(self, args, state, control, **kwargs):
        self.reader.synchronize()
        self.step = state.global_step
        self._tokens = 0
        self._t0 = self._clock()

    def on_substep_end(self, args, state, control, **kwargs):
        if self.phase == "backward":
            self._end_window("backward")
            self.phase = OTHER

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._end_window("backward" if self.phase == "backward" else None)
        self.phase = "optimizer"

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._end_window("optimizer")
        self.phase = OTHER

    def on_step_end(self, args, state, control, **kwargs):
        self.reader.synchronize()
        if self._t0 is not None:
            self.step_times_s.append(self._clock() - self._t0)
            self.step_tokens.append(self._tokens)
        self._t0 = None

    def on_train_end(self, args, state, control, **kwargs):
        self._end_window(None)
        self.phase = OTHER
        self.detach()

    # ------------------------------------------------------------------ failures
    def record_failure(self) -> str:
        """Close the window open when an exception (OOM) hit and return the phase it hit in:
        "load" (before training), "forward", "backward", "optimizer" or "other"."""
        phase = self.phase
        self._end_window(phase if phase in PHASES else None)
        self.detach()
        return phase

    # ------------------------------------------------------------------ results
    def phase_peaks(self, steady: bool) -> PhasePeaks:
        """Step 0's peaks, or the steady state's (max over optimizer steps >= 1)."""
        steps = [s for s in self.peaks if (s >= 1 if steady else s == 0)]
        values: dict[str, int] = {}
        for s in steps:
            for phase, peak in self.peaks[s].items():
                values[phase] = max(values.get(phase, 0), peak)
        return PhasePeaks(**values)

    def tokens_per_s(self) -> float | None:
        """Tokens per second over steady steps (>= 1); None with fewer than two steps."""
        tokens = sum(self.step_tokens[1:])
        seconds = sum(self.step_times_s[1:])
        if len(self.step_times_s) < 2 or seconds <= 0 or tokens <= 0:
            return None
        return tokens / seconds

    def device_peak_bytes(self) -> int | None:
        """Process footprint at its peak: max NVML 'used' minus the pre-context baseline."""
        if self.device_monitor is None or self.device_baseline_bytes is None:
            return None
        peak = self.device_monitor.max_used_bytes
        return None if peak is None else peak - self.device_baseline_bytes

    def summary(self) -> dict[str, Any]:
        """The probe's readings as ``vramplan.specs.Measurements`` keyword arguments."""
        self._fold()
        return {
            "memory_after_load_bytes": self.memory_after_load_bytes,
            "step0": self.phase_peaks(steady=False),
            "steady": self.phase_peaks(steady=True),
            "max_allocated_bytes": self.max_allocated_bytes,
            "max_reserved_bytes": self.max_reserved_bytes,
            "device_peak_bytes": self.device_peak_bytes(),
            "num_alloc_retries": self.reader.alloc_retries(),
            "step_times_s": tuple(self.step_times_s),
            "tokens_per_s": self.tokens_per_s(),
            "steps": len(self.step_times_s),
        }
