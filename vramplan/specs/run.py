"""MeasuredRun: one real training run's record (a JSON file with a schema_version)."""

from typing import Annotated, Literal

from .fields import Field

from .base import Spec
from .setup import MAX_GPUS, TrainingSetup

RUN_SCHEMA_VERSION = 1
#: no GPU job measures a petabyte: a memory field at or above this is a corrupt record, not a measurement
MAX_RECORD_BYTES = 10**15

#: a measured number of bytes: non-negative and below a petabyte
Bytes = Annotated[int, Field(ge=0, lt=MAX_RECORD_BYTES)]
#: a measured non-negative finite number (seconds, tokens/s)
Measured = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, lt=MAX_RECORD_BYTES)]


class RunEnvironment(Spec):
    gpu_name: str | None = None
    gpu_id: str | None = None
    total_memory_bytes: Bytes | None = None
    num_gpus: int = Field(default=1, gt=0, le=MAX_GPUS)
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

    forward: Bytes | None = None
    backward: Bytes | None = None
    optimizer: Bytes | None = None


class Measurements(Spec):
    params_total: Count | None = None
    params_trainable: Count | None = None
    memory_after_load_bytes: Bytes | None = None
    #: step 0 (optimizer states created lazily here) and steady state (steps >= 1, max over them)
    step0: PhasePeaks = Field(default_factory=PhasePeaks)
    steady: PhasePeaks = Field(default_factory=PhasePeaks)
    max_allocated_bytes: Bytes | None = None
    max_reserved_bytes: Bytes | None = None
    device_peak_bytes: Bytes | None = None
    cuda_context_bytes: Bytes | None = None
    num_alloc_retries: Count | None = None
    step_times_s: tuple[Measured, ...] = ()
    tokens_per_s: Measured | None = None
    oom: bool = False
    oom_phase: str | None = None
    #: the memory cap used to simulate a smaller card (bytes), if any
    memory_cap_bytes: Bytes | None = None
    steps: Count = 0


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
