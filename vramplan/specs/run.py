"""MeasuredRun: one real training run's record (a JSON file with a schema_version)."""

from typing import Literal

from pydantic import Field

from .base import Spec
from .setup import TrainingSetup

RUN_SCHEMA_VERSION = 1


class RunEnvironment(Spec):
    gpu_name: str | None = None
    gpu_id: str | None = None
    total_memory_bytes: int | None = None
    num_gpus: int = 1
    driver: str | None = None
    cuda: str | None = None
    python: str | None = None
    torch: str | None = None
    transformers: str | None = None
    peft: str | None = None
    bitsandbytes: str | None = None
    accelerate: str | None = None
    allocator_conf: str | None = None
    hostname: str | None = None


class PhasePeaks(Spec):
    """max_memory_allocated within each phase (bytes); None where not measured (CPU)."""

    forward: int | None = None
    backward: int | None = None
    optimizer: int | None = None


class Measurements(Spec):
    params_total: int | None = None
    params_trainable: int | None = None
    memory_after_load_bytes: int | None = None
    #: step 0 (optimizer states created lazily here) and steady state (steps >= 1, max over them)
    step0: PhasePeaks = Field(default_factory=PhasePeaks)
    steady: PhasePeaks = Field(default_factory=PhasePeaks)
    max_allocated_bytes: int | None = None
    max_reserved_bytes: int | None = None
    device_peak_bytes: int | None = None
    cuda_context_bytes: int | None = None
    num_alloc_retries: int | None = None
    step_times_s: tuple[float, ...] = ()
    tokens_per_s: float | None = None
    oom: bool = False
    oom_phase: str | None = None
    #: the memory cap used to simulate a smaller card (bytes), if any
    memory_cap_bytes: int | None = None
    steps: int = 0


class MeasuredRun(Spec):
    schema_version: Literal[1] = RUN_SCHEMA_VERSION
    run_id: str
    created_utc: str
    model: str
    #: hash-free description of where the architecture came from (catalog name or config path)
    model_source: str = ""
    setup: TrainingSetup
    environment: RunEnvironment
    measurements: Measurements
    tool_version: str = ""
    notes: str = ""
    extra: dict[str, float | int | str | None] = Field(default_factory=dict)
