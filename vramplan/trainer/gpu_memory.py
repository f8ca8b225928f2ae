"""Reading GPU memory: the PyTorch caching allocator's counters and the device's NVML 'used'.

Two small readers, each replaceable by a fake in tests:

* ``MemoryReader`` (protocol): allocator counters. ``CudaMemoryReader`` reads ``torch.cuda``;
  ``NullMemoryReader`` (CPU) answers ``None`` everywhere.
* ``DeviceMonitor``: a background thread that polls NVML's device-level used memory
  (``nvmlDeviceGetMemoryInfo(handle).used``) every few milliseconds and keeps the maximum.
  ``used`` includes every process on the card and the driver's reservation, so the process's own
  footprint is ``max(used) - baseline`` with the baseline read *before* this process created
  its CUDA context (see ``read_baseline``).
"""

from __future__ import annotations

import os
import threading
from typing import Protocol


class MemoryReader(Protocol):
    """Allocator counters of one device, in bytes; ``None`` where not measured."""

    def allocated(self) -> int | None: ...

    def max_allocated(self) -> int | None: ...

    def reserved(self) -> int | None: ...

    def max_reserved(self) -> int | None: ...

    def reset_peak(self) -> None:
        """Restart the peak counters (``max_*``) from the current values."""

    def synchronize(self) -> None:
        """Wait for queued device work, so counters and timers see it."""

    def alloc_retries(self) -> int | None:
        """How often the allocator freed its cache and retried a failed cudaMalloc."""


class NullMemoryReader:
    """CPU runs: no allocator counters; every reading is ``None``."""

    def allocated(self) -> None:
        return None

    def max_allocated(self) -> None:
        return None

    def reserved(self) -> None:
        return None

    def max_reserved(self) -> None:
        return None

    def reset_peak(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def alloc_retries(self) -> None:
        return None


class CudaMemoryReader:
    """``torch.cuda`` memory counters of one device.

    ``reset_peak`` calls ``torch.cuda.reset_peak_memory_stats``, which resets the peak of both
    allocated and reserved bytes (``c10/cuda/CUDACachingAllocator.cpp::resetPeakStats``).
    """

    def __init__(self, device: int = 0) -> None:
        import torch

        self._cuda = torch.cuda
        self.device = device

    def allocated(self) -> int:
        return int(self._cuda.memory_allocated(self.device))

    def max_allocated(self) -> int:
        return int(self._cuda.max_memory_allocated(self.device))

    def reserved(self) -> int:
        return int(self._cuda.memory_reserved(self.device))

    def max_reserved(self) -> int:
        return int(self._cuda.max_memory_reserved(self.device))

    def reset_peak(self) -> None:
        self._cuda.reset_peak_memory_stats(self.device)

    def synchronize(self) -> None:
        self._cuda.synchronize(self.device)

    def alloc_retries(self) -> int:
        return int(self._cuda.memory_stats(self.device).get("num_alloc_retries", 0))


def nvml_device_index(cuda_device: int = 0) -> int | None:
    """The NVML index of CUDA device ``cuda_device``, honouring CUDA_VISIBLE_DEVICES.

    NVML numbers all devices of the host and ignores CUDA_VISIBLE_DEVICES. When that variable
    lists integer indices, the n-th listed one is the NVML index; UUIDs are looked up by NVML.
    Returns None when NVML cannot resolve it.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return cuda_device if visible is None else None
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if cuda_device >= len(entries):
        return None
    entry = entries[cuda_device]
    if entry.isdigit():
        return int(entry)
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        for i in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            if uuid.startswith(entry) or entry.startswith(uuid):
                return i
    except pynvml.NVMLError:
        return None
    return None


class DeviceMonitor:
    """Polls NVML device memory 'used' in a daemon thread and keeps the maximum seen.

    Create with ``DeviceMonitor.open()``, which returns None when NVML (nvidia-ml-py) or the device
    is not available. ``sample()`` may also be called from the training thread at phase ends, so
    short peaks between two polls are still caught there.
    """

    #: polling period; 5 ms resolves allocator growth, costs well under 1 % of a core
    DEFAULT_INTERVAL_S = 0.005

    def __init__(self, handle, nvml, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._handle = handle
        self._nvml = nvml
        self.interval_s = interval_s
        self.max_used_bytes: int | None = None
        self.samples = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, cuda_device: int = 0, interval_s: float = DEFAULT_INTERVAL_S) -> DeviceMonitor | None:
        try:
            import pynvml
        except ImportError:
            return None
        index = nvml_device_index(cuda_device)
        if index is None:
            return None
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError:
            return None
        return cls(handle, pynvml, interval_s)

    def used(self) -> int:
        """Device-wide used bytes right now (all processes, driver reservation included)."""
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def sample(self) -> int:
        value = self.used()
        with self._lock:
            self.samples += 1
            if self.max_used_bytes is None or value > self.max_used_bytes:
                self.max_used_bytes = value
        return value

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except self._nvml.NVMLError:  # a hiccup: keep polling, the maximum so far stays valid
                self.errors += 1

    def start(self) -> None:
        if self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._loop, name="vramplan-nvml", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2.0)
            self._thread = None
        try:
            self.sample()
        except self._nvml.NVMLError:
            self.errors += 1

    def state(self) -> dict[str, int]:
        """What can make identical runs time differently, read once (NVML; a value it cannot read is left out):
        SM and memory clocks (MHz), power draw (W), temperature (C), the clock-throttle reason bits
        (nvmlClocksEventReasons, 0 = none) and how many compute processes NVML sees on the device (others'
        jobs sharing it show up there, where the sandbox lets NVML see them)."""
        nvml, h = self._nvml, self._handle
        reads = {
            "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM),
            "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(h) // 1000,
            "temperature_c": lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
            "throttle_reasons": lambda: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h),
            "compute_processes": lambda: len(nvml.nvmlDeviceGetComputeRunningProcesses(h)),
        }
        out = {}
        for name, read in reads.items():
            try:
                out[name] = int(read())
            except (nvml.NVMLError, AttributeError, TypeError):
                continue
        return out

    def driver_version(self) -> str | None:
        try:
            v = self._nvml.nvmlSystemGetDriverVersion()
        except self._nvml.NVMLError:
            return None
        return v.decode() if isinstance(v, bytes) else str(v)

    def pci_bus_id(self) -> str | None:
        try:
            info = self._nvml.nvmlDeviceGetPciInfo(self._handle)
        except self._nvml.NVMLError:
            return None
        bus = info.busId
        return bus.decode() if isinstance(bus, bytes) else str(bus)
