"""What a measurement does to CUDA before anything else touches it (the NVML baseline, the context, the allocator
mode, the memory cap) and the optional allocator-history recording (``measure --memory-snapshot``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramplan.specs import TrainingSetup

from .environment import expandable_segments_active
from .errors import MeasurementError


@dataclass
class CudaStart:
    reader: Any
    monitor: Any = None
    baseline: int | None = None
    context_bytes: int | None = None
    cap_bytes: int | None = None
    driver: str | None = None


def start_cuda(
    setup: TrainingSetup, memory_cap_gib: float | None, extra: dict[str, Any], notes: list[str], device: int = 0
) -> CudaStart:
    """Read the NVML baseline, create the CUDA context, measure it, check the allocator mode and
    apply the memory cap, on CUDA device ``device`` (a rank's LOCAL_RANK). Must run before
    anything else in the process touches CUDA.

    cuda_context_bytes = NVML used after ``torch.cuda.init()`` + a 4-byte tensor, minus the
    baseline, minus the allocator's reserved bytes (the tensor's 2 MiB segment).

    Raises:
        MeasurementError: the live allocator's expandable_segments differs from the setup's.
    """
    import torch

    from .gpu_memory import CudaMemoryReader, DeviceMonitor

    was_initialized = torch.cuda.is_initialized()
    monitor = DeviceMonitor.open(device)
    start = CudaStart(reader=CudaMemoryReader(device), monitor=monitor)
    if monitor is not None:
        start.driver = monitor.driver_version()
        if not was_initialized:
            start.baseline = monitor.used()
    torch.cuda.init()
    torch.cuda.set_device(device)
    tiny = torch.empty(1, device=f"cuda:{device}")
    torch.cuda.synchronize(device)
    if monitor is not None and start.baseline is not None:
        start.context_bytes = monitor.used() - start.baseline - torch.cuda.memory_reserved(device)
    active = expandable_segments_active()
    del tiny
    extra["expandable_segments_active"] = None if active is None else str(active).lower()
    extra["device_baseline_used_bytes"] = start.baseline
    if active is not None and active != setup.expandable_segments:
        raise MeasurementError(
            f"the CUDA allocator has expandable_segments={active} but the setup asks for "
            f"{setup.expandable_segments}: set PYTORCH_CUDA_ALLOC_CONF before the process starts"
        )
    if was_initialized:
        notes.append("CUDA was initialized before this run: device-level numbers omitted")
    if memory_cap_gib is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        start.cap_bytes = int(memory_cap_gib * 2**30)
        torch.cuda.set_per_process_memory_fraction(min(1.0, start.cap_bytes / total), device)
    torch.cuda.reset_peak_memory_stats(device)
    return start


#: allocator events kept by --memory-snapshot (a few steps of an 8B model log ~10^5)
MEMORY_HISTORY_MAX_ENTRIES = 2_000_000


def start_memory_history(path: str | Path | None, notes: list[str]) -> bool:
    """Start recording the allocator's alloc/free/segment events with Python stacks; False if not asked."""
    if path is None:
        return False
    import torch

    # VRAMPLAN_MEMORY_HISTORY_FRAMES=0 records the events without Python stacks (a campaign that also times steps)
    frames = os.environ.get("VRAMPLAN_MEMORY_HISTORY_FRAMES", "1") != "0"
    torch.cuda.memory._record_memory_history(
        enabled="all", context="all" if frames else None, stacks="python", max_entries=MEMORY_HISTORY_MAX_ENTRIES
    )
    notes.append("allocator history recorded (--memory-snapshot" + ("" if frames else ", without stacks") + ")")
    return True


def dump_memory_history(path: Path, extra: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.cuda.memory._dump_snapshot(str(path))
    torch.cuda.memory._record_memory_history(enabled=None)
    extra["memory_snapshot"] = path.name
