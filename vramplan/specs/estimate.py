"""Estimate: what the analytic model predicts for one model + setup (+ optional GPU)."""

from .fields import Field

from .base import Spec
from .setup import TrainingSetup


class ParamCounts(Spec):
    """Parameter counts; `by_role` sums to `total` (adapters excluded from total, counted in trainable)."""

    total: int
    trainable: int
    adapters: int = 0
    by_role: dict[str, int] = Field(default_factory=dict)


class MemoryBreakdown(Spec):
    """Bytes per term at the peak phase, plus each phase's allocated total."""

    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_peak_bytes: int
    peak_phase: str
    #: term -> bytes alive at the peak phase (sums to peak_allocated_bytes)
    breakdown: dict[str, int]
    #: phase -> allocated bytes at that phase's own peak
    phases: dict[str, int]
    #: bytes outside allocated: fragmentation (reserved - allocated) and CUDA context
    fragmentation_bytes: int
    cuda_context_bytes: int
    #: resident managed memory (paged optimizers) counted in device peak only
    outside_allocator_bytes: int = 0
    #: what set peak_reserved_bytes: "fragmentation" (peak allocated x (1 + f) + f_logits x 4 N V) or
    #: "steady_loss_segments" (step 0's weights, states and gradients, then the next step's three
    #: 4 N V loss buffers in new segments; vramplan.memory.allocator.steady_loss_reserved)
    reserved_rule: str = "fragmentation"
    #: the "steady_loss_segments" bound itself (0 with expandable segments or no loss buffers)
    steady_loss_reserved_bytes: int = 0
    #: reserved_rule "simulated" (estimate(reserved_rule="simulated"), memory/allocator/simulated.py): what the
    #: closed-form rules gave, and at the simulated reserved peak the allocated bytes, the free bytes inside
    #: segments and the largest free block (None with the rules)
    rules_reserved_bytes: int | None = None
    allocated_at_reserved_peak_bytes: int | None = None
    free_in_segments_at_reserved_peak_bytes: int | None = None
    largest_free_block_at_reserved_peak_bytes: int | None = None


class GpuVerdict(Spec):
    gpu: str
    gpu_name: str
    capacity_bytes: int
    usable_bytes: int
    headroom_fraction: float
    fits: bool
    headroom_bytes: int


class Estimate(Spec):
    model: str
    method: str
    #: the stack profile the estimate is for ("hf", "hf+liger", "trl", "trl+liger", "unsloth") and the
    #: library versions its terms were read from
    stack: str = "hf"
    stack_versions: dict[str, str] = Field(default_factory=dict)
    params: ParamCounts
    memory: MemoryBreakdown
    #: memory after applying the calibration file (None when no calibration applies)
    calibrated: MemoryBreakdown | None = None
    calibration_version: str | None = None
    assumptions: tuple[str, ...] = ()
    verdict: GpuVerdict | None = None
    #: the setup estimated, as resolved from flags and config files (set by vramplan.api.estimate_for)
    setup: TrainingSetup | None = None
