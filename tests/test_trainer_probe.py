"""MemoryProbe bookkeeping, driven by a fake memory reader (no CUDA needed)."""

from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

from vramplan.trainer.probe import MemoryProbe


class FakeReader:
    """A scripted allocator: tests set ``current`` and raise ``peak`` as if tensors came and went."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.peak_reserved = 0
        self.resets = 0

    def alloc(self, nbytes: int) -> None:
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        self.peak_reserved = max(self.peak_reserved, self.current + 10)

    def free(self, nbytes: int) -> None:
        self.current -= nbytes

    def allocated(self):
        return self.current

    def max_allocated(self):
        return self.peak

    def reserved(self):
        return self.current + 10

    def max_reserved(self):
        return self.peak_reserved

    def reset_peak(self):
        self.resets += 1
        self.peak = self.current
        self.peak_reserved = self.current + 10

    def synchronize(self):
        pass

    def alloc_retries(self):
        return 0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeIds:
    def __init__(self, n: int) -> None:
        self.n = n

    def numel(self) -> int:
        return self.n


def drive_step(probe, reader, clock, step, *, micro=1, fwd=100, bwd=50, opt=30, tokens=8, seconds=1.0):
    """One optimizer step through the events the Trainer fires, with scripted transient peaks."""
    state = SimpleNamespace(global_step=step)
    probe.on_step_begin(None, state, None)
    for i in range(micro):
        probe._forward_start(None, (), {"input_ids": FakeIds(tokens)})
        reader.alloc(fwd + i)  # transient inside forward (i: later micro-steps peak higher)
        reader.free(fwd + i)
        probe._forward_end(None, (), None)
        reader.alloc(bwd)
        reader.free(bwd)
        if i < micro - 1:
            probe.on_substep_end(None, state, None)
    probe.on_pre_optimizer_step(None, state, None)
    reader.alloc(opt)
    reader.free(opt)
    probe.on_optimizer_step(None, state, None)
    clock.t += seconds
    probe.on_step_end(None, state, None)


def new_probe():
    reader, clock = FakeReader(), Clock()
    probe = MemoryProbe(reader, clock=clock)
    reader.alloc(1000)  # the loaded model
    probe.on_train_begin(None, SimpleNamespace(global_step=0), None)
    return probe, reader, clock


def test_memory_after_load_is_allocated_at_train_begin():
    probe, _, _ = new_probe()
    assert probe.memory_after_load_bytes == 1000


def test_step0_and_steady_phases_are_reported_apart():
    probe, reader, clock = new_probe()
    drive_step(probe, reader, clock, 0, opt=500)  # lazy optimizer states: a big step-0 optimizer peak
    reader.alloc(200)  # optimizer states stay resident from now on
    drive_step(probe, reader, clock, 1)
    drive_step(probe, reader, clock, 2, fwd=300)
    s = probe.summary()
    assert (s["step0"].forward, s["step0"].backward, s["step0"].optimizer) == (1100, 1050, 1500)
    assert (s["steady"].forward, s["steady"].backward, s["steady"].optimizer) == (1500, 1250, 1230)


def test_grad_accumulation_takes_the_max_over_micro_steps():
    probe, reader, clock = new_probe()
    drive_step(probe, reader, clock, 0, micro=4, fwd=100)
    assert probe.phase_peaks(steady=False).forward == 1000 + 100 + 3


def test_run_maxima_cover_gaps_between_phases():
    probe, reader, clock = new_probe()
    drive_step(probe, reader, clock, 0)
    reader.alloc(5000)  # e.g. something between optimizer step and the next forward
    reader.free(5000)
    drive_step(probe, reader, clock, 1)
    s = probe.summary()
    assert s["max_allocated_bytes"] == 6000
    assert s["max_reserved_bytes"] == 6010


def test_load_peak_is_kept_in_run_maxima():
    reader = FakeReader()
    reader.alloc(3000)
    reader.free(2000)  # transient during load (e.g. quantization)
    probe = MemoryProbe(reader, clock=Clock())
    probe.on_train_begin(None, SimpleNamespace(global_step=0), None)
    assert probe.load_peak_allocated_bytes == 3000
    assert probe.summary()["max_allocated_bytes"] == 3000


def test_tokens_per_s_uses_steady_steps_only():
    probe, reader, clock = new_probe()
    drive_step(probe, reader, clock, 0, tokens=8, seconds=10.0)  # slow warm-up step
    drive_step(probe, reader, clock, 1, micro=2, tokens=8, seconds=2.0)
    drive_step(probe, reader, clock, 2, micro=2, tokens=8, seconds=2.0)
    assert probe.step_times_s == [10.0, 2.0, 2.0]
    assert probe.tokens_per_s() == pytest.approx(32 / 4.0)
    assert probe.summary()["steps"] == 3


def test_tokens_per_s_is_none_with_a_single_step():
    probe, reader, clock = new_probe()
    drive_step(probe, reader, clock, 0)
    assert probe.tokens_per_s() is None


@pytest.mark.parametrize(
    "where,expected",
    [("before_train", "load"), ("forward", "forward"), ("backward", "backward"), ("optimizer", "optimizer")],
)
def test_record_failure_reports_the_phase_and_keeps_peaks(where, expected):
    reader, clock = FakeReader(), Clock()
    probe = MemoryProbe(reader, clock=clock)
    reader.alloc(1000)
    if where != "before_train":
        probe.on_train_begin(None, SimpleNamespace(global_step=0), None)
        probe.on_step_begin(None, SimpleNamespace(global_step=0), None)
        probe._forward_start(None, (), {})
        if where in ("backward", "optimizer"):
            probe._forward_end(None, (), None)
        if where == "optimizer":
            probe.on_pre_optimizer_step(None, SimpleNamespace(global_step=0), None)
    reader.alloc(777)  # the allocation that was about to fail pushed the peak
    assert probe.record_failure() == expected
    assert probe.summary()["max_allocated_bytes"] == 1777
    if expected != "load":
        assert getattr(probe.phase_peaks(steady=False), expected) == 1777


def test_null_reader_gives_none_everywhere():
    from vramplan.trainer.gpu_memory import NullMemoryReader

    probe = MemoryProbe(NullMemoryReader(), clock=Clock())
    probe.on_train_begin(None, SimpleNamespace(global_step=0), None)
    s = probe.summary()
    assert s["memory_after_load_bytes"] is None
    assert s["max_allocated_bytes"] is None and s["device_peak_bytes"] is None
    assert s["step0"].forward is None


def test_device_peak_is_max_used_minus_baseline():
    class FakeMonitor:
        max_used_bytes = 9_000

        def sample(self):
            return 0

    probe = MemoryProbe(FakeReader(), FakeMonitor(), device_baseline_bytes=1_000, clock=Clock())
    assert probe.device_peak_bytes() == 8_000


def test_device_state_reads_what_can_make_identical_runs_time_differently():
    from vramplan.trainer.gpu_memory import DeviceMonitor

    class FakeNvml:
        class NVMLError(Exception):
            pass

        NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

        def nvmlDeviceGetClockInfo(self, h, kind):
            return {1: 1980, 2: 3201}[kind]

        def nvmlDeviceGetPowerUsage(self, h):
            return 412_345  # milliwatts

        def nvmlDeviceGetTemperature(self, h, sensor):
            return 51

        def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
            return 4

        def nvmlDeviceGetComputeRunningProcesses(self, h):
            raise FakeNvml.NVMLError("not visible in this sandbox")

    state = DeviceMonitor(object(), FakeNvml()).state()
    assert state == {"sm_clock_mhz": 1980, "mem_clock_mhz": 3201, "power_w": 412, "temperature_c": 51,
                     "throttle_reasons": 4}  # the unreadable process count is left out, not a crash
