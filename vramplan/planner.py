"""plan(): rank GPU x count x strategy options for one setup, with suggestions when it does not fit one GPU;
fit(): the largest batch size, sequence length or LoRA rank that fits a GPU.

Memory is the calibrated estimate per GPU; speed comes from throughput.py. A memory estimate depends on the GPU
only through its cuBLAS workspace size, so GPUs of one workspace class share estimates: a plan over the whole
catalog with 1..8 GPUs and every strategy makes ~26 estimates, not ~300.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

from .errors import VramplanError
from .estimator import DEFAULT_HEADROOM, estimate
from .search import largest, near_fit
from .memory.allocator import workspace_bytes
from .memory.constants import GIB
from .specs import (
    Calibration,
    Estimate,
    GpuSpec,
    MemoryBreakdown,
    ModelSpec,
    TrainingSetup,
    ValidationError,
)
from .specs.setup import MAX_BATCH_SIZE, MAX_GPUS, MAX_LORA_RANK, MAX_SEQ_LEN
from .throughput import StepTime, step_time, step_work, throughput_constants

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
#: the `parallel` of a one-GPU option
SINGLE = "none"
SORTS = ("cost", "time", "memory")
SOLVES = ("batch-size", "seq-len", "lora-rank")
DEFAULT_MAX_GPUS = 8
#: LoRA targets suggested as "fewer targets" (PEFT's default for Llama-style models, memory_model.md section 2)
FEW_TARGETS = ("q_proj", "v_proj")
#: a suggested shorter sequence is rounded down to a multiple of this (kernels and packing like round lengths)
SEQ_LEN_STEP = 64


@dataclass(frozen=True)
class PlanOption:
    gpu: GpuSpec
    num_gpus: int
    parallel: str
    memory: MemoryBreakdown
    usable_bytes: int
    step: StepTime | None
    total_tokens: float | None
    #: for a near miss: single changes that make it fit (plan_rows.near_miss_fixes)
    fixes: tuple["Suggestion", ...] = ()

    @property
    def fits(self) -> bool:
        return self.memory.device_peak_bytes <= self.usable_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.gpu.memory_bytes - self.memory.device_peak_bytes

    @property
    def tokens_per_s(self) -> float | None:
        return self.step.tokens_per_s if self.step else None

    @property
    def step_time_s(self) -> float | None:
        return self.step.total_s if self.step else None

    @property
    def wall_time_s(self) -> float | None:
        return self.total_tokens / self.tokens_per_s if self.total_tokens and self.tokens_per_s else None

    @property
    def usd_per_token(self) -> float | None:
        price = self.gpu.price_usd_per_hour
        return price * self.num_gpus / 3600 / self.tokens_per_s if price is not None and self.tokens_per_s else None

    @property
    def cost_usd(self) -> float | None:
        per_token = self.usd_per_token
        return per_token * self.total_tokens if per_token is not None and self.total_tokens else None

    @property
    def why_not(self) -> str | None:
        if self.fits:
            return None
        need, usable = self.memory.device_peak_bytes / GIB, self.usable_bytes / GIB
        return f"needs {need:.1f} GiB per GPU, {usable:.1f} GiB usable"


@dataclass(frozen=True)
class Suggestion:
    change: str
    saves_bytes: int
    #: whether this change alone makes the setup fit the GPU the suggestions are for
    fits: bool


@dataclass(frozen=True)
class Plan:
    model: str
    options: tuple[PlanOption, ...]
    suggestions: tuple[Suggestion, ...]
    #: the GPU the suggestions were computed for (the largest chosen one); None when the setup fits one GPU
    suggestions_gpu: str | None
    total_tokens: float | None
    sort: str
    assumptions: tuple[str, ...]


def gpu_counts(max_gpus: int) -> tuple[int, ...]:
    """1, 2, 4, 8 ... up to max_gpus (max_gpus itself included)."""
    counts = [1]
    while counts[-1] * 2 <= max_gpus:
        counts.append(counts[-1] * 2)
    return tuple(counts) if counts[-1] == max_gpus else (*counts, max_gpus)


def plan(
    model: ModelSpec,
    setup: TrainingSetup,
    gpus: list[GpuSpec],
    *,
    max_gpus: int = DEFAULT_MAX_GPUS,
    total_tokens: float | None = None,
    sort: str = "cost",
    headroom: float = DEFAULT_HEADROOM,
    calibration: Calibration | None = None,
) -> Plan:
    """Every option over gpus x (1, 2, 4 .. max_gpus) x strategy, best first: fitting options first, ordered by
    `sort` (cost per token, time per token, or most spare memory), then the others closest to fitting first.
    setup.num_gpus/parallel are replaced by each option's; calibration None means the shipped one.
    Raises VramplanError on bad arguments."""
    _check_plan_args(gpus, max_gpus, total_tokens, sort)
    calibration = calibration or _default_calibration()
    base = _with(setup, num_gpus=1, parallel=None)
    first = estimate(model, base, gpus[0], headroom=headroom, calibration=calibration)  # bad setups raise here
    work, constants = step_work(model, base), throughput_constants()
    memo: dict[tuple[int, int, str], MemoryBreakdown | None] = {
        (workspace_bytes(gpus[0].compute_capability), 1, SINGLE): _shown(first)
    }
    options, skipped = [], set()
    for gpu in gpus:
        usable = int(gpu.memory_bytes * (1.0 - headroom))
        for n in gpu_counts(max_gpus):
            for parallel in (SINGLE,) if n == 1 else STRATEGIES:
                s = base if n == 1 else _with(base, num_gpus=n, parallel=parallel)
                key = (workspace_bytes(gpu.compute_capability), n, parallel)
                if key not in memo:
                    memo[key] = _shown_or_none(model, s, gpu, headroom, calibration, skipped)
                if memo[key] is None:
                    continue
                step = step_time(model, s, gpu, constants, work=work)
                options.append(PlanOption(gpu, n, parallel, memo[key], usable, step, total_tokens))
    options.sort(key=_sort_key(sort))
    from .plan_rows import with_near_miss_fixes  # it imports this module

    options = list(with_near_miss_fixes(model, base, tuple(options), headroom=headroom, calibration=calibration))
    target = max(gpus, key=lambda g: g.memory_bytes)
    fits_one = any(o.fits for o in options if o.num_gpus == 1)
    if fits_one:
        found: tuple[Suggestion, ...] = ()
    else:
        from .suggestions import suggestions  # it builds on this module's helpers

        found = suggestions(model, base, target, headroom=headroom, calibration=calibration, max_gpus=max_gpus)
    return Plan(
        model=model.name,
        options=tuple(options),
        suggestions=found,
        suggestions_gpu=None if fits_one else target.id,
        total_tokens=total_tokens,
        sort=sort,
        assumptions=_plan_assumptions(setup, skipped),
    )


def _check_plan_args(gpus: list[GpuSpec], max_gpus: int, total_tokens: float | None, sort: str) -> None:
    if not gpus:
        raise VramplanError("no GPU to plan for; accepted: --gpus all or a comma list of ids (vramplan gpus)")
    if not 1 <= max_gpus <= MAX_GPUS:
        raise VramplanError(f"--max-gpus {max_gpus}: accepted: 1 .. {MAX_GPUS}")
    if sort not in SORTS:
        raise VramplanError(f"--sort {sort}: accepted: {' | '.join(SORTS)}")
    if total_tokens is not None and not total_tokens > 0:
        raise VramplanError(f"dataset of {total_tokens} tokens: accepted: a positive number of tokens")


def _shown_or_none(model, setup, gpu, headroom, calibration, skipped: set[str]) -> MemoryBreakdown | None:
    try:
        e = estimate(model, setup, gpu, headroom=headroom, calibration=calibration)
    except VramplanError as exc:
        skipped.add(f"{setup.parallel} left out: {exc}")
        return None
    return _shown(e)


def _shown(e: Estimate) -> MemoryBreakdown:
    return e.calibrated or e.memory


def _sort_key(sort: str) -> Callable[[PlanOption], tuple]:
    inf = math.inf

    def key(o: PlanOption) -> tuple:
        per_token_s = 1 / o.tokens_per_s if o.tokens_per_s else inf
        usd = o.usd_per_token if o.usd_per_token is not None else inf
        strategy = (SINGLE, *STRATEGIES).index(o.parallel)
        tail = (o.num_gpus, o.gpu.id, strategy)
        if not o.fits:
            return (1, o.memory.device_peak_bytes / o.usable_bytes, *tail)
        # 3 significant digits: differences far below the model's accuracy are ties (then the other key decides)
        usd_r, time_r = _round3(usd), _round3(per_token_s)
        main = {"cost": (usd_r, time_r), "time": (time_r, usd_r), "memory": (-o.headroom_bytes, usd_r)}[sort]
        return (0, *main, *tail)

    return key


def _round3(x: float) -> float:
    return float(f"{x:.3g}") if math.isfinite(x) else x


def _plan_assumptions(setup: TrainingSetup, skipped: set[str]) -> tuple[str, ...]:
    out = [
        "memory per GPU: calibrated estimate; data parallel, micro-batch per GPU as given",
        (
            "speed: FLOPs / (dense peak x efficiency fitted per method on H100 and H200 runs) + launch overheads fitted on the "
            "same runs; other GPUs scaled by their catalog peak and bandwidth (calibration_data/throughput.json)"
        ),
        "multi-GPU: ring collectives at 80 % of the GPU-GPU link (NVLink, else host PCIe), overlapped with compute",
        "wall time = dataset tokens / tokens per s; cost = on-demand $/GPU-hour from the catalog x GPUs x wall time",
    ]
    if setup.num_gpus > 1 or setup.parallel:
        out.append("--num-gpus/--parallel are replaced by each option's count and strategy")
    return tuple(out) + tuple(sorted(skipped))


# --- inverse queries ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitResult:
    solve: str
    #: the largest value that fits; None when even the smallest does not
    value: int | None
    gpu: GpuSpec
    usable_bytes: int
    #: device peak per GPU at `value`, and at value + 1 (None when value is the search limit)
    device_peak_bytes: int | None
    next_device_peak_bytes: int | None
    #: the largest value searched (the setting's maximum, or the model's max_position_embeddings for seq-len)
    limit: int


def fit(
    model: ModelSpec,
    setup: TrainingSetup,
    gpu: GpuSpec,
    solve: str,
    *,
    headroom: float = DEFAULT_HEADROOM,
    calibration: Calibration | None = None,
    quick: bool = False,
) -> FitResult:
    """Largest batch size, sequence length or LoRA rank (other settings as given) whose device peak per GPU fits
    gpu with headroom: bisection on the estimate, so value fits and value + 1 does not (or is the limit). A probe
    whose allocated peak alone, with the memory outside the allocator, is over the usable bytes does not fit whatever
    the reserved rule says, and needs no allocator replay.

    `quick` (the hint under `vramplan estimate`, which must answer in a fraction of a second): bisection with the
    closed-form rules (0.2 ms a probe), then a few default estimates (3-16 ms each, search.near_fit): a value that
    fits, at or a little below the largest; next_device_peak_bytes is not computed."""
    if solve not in SOLVES:
        raise VramplanError(f"--solve {solve}: accepted: {' | '.join(SOLVES)}")
    if solve == "lora-rank" and setup.lora is None:
        raise VramplanError(f"--solve lora-rank needs --method lora or qlora (got --method {setup.method})")
    calibration = calibration or _default_calibration()
    usable = int(gpu.memory_bytes * (1.0 - headroom))
    estimate(model, setup, gpu, headroom=headroom, calibration=calibration)  # bad setups raise here

    def changed(v: int) -> TrainingSetup:
        if solve == "lora-rank":
            assert setup.lora is not None
            return _with(setup, lora=setup.lora.model_copy(update={"rank": v}))
        return _with(setup, **{"batch_size" if solve == "batch-size" else "seq_len": v})

    def shown(v: int, rule: str = "auto") -> MemoryBreakdown | None:
        try:
            return _shown(estimate(model, changed(v), gpu, headroom=headroom, calibration=calibration, reserved_rule=rule))
        except VramplanError:  # e.g. a rank larger than a layer
            return None

    def device(v: int) -> int | None:
        m = shown(v)
        return None if m is None else m.device_peak_bytes

    def fits(v: int) -> bool:
        rules = shown(v, "rules")
        if rules is None:
            return False
        if rules.device_peak_bytes - rules.peak_reserved_bytes + rules.peak_allocated_bytes > usable:
            return False  # the allocated peak alone is over: no reserved rule fits it
        peak = device(v)
        return peak is not None and peak <= usable

    limit = {"batch-size": MAX_BATCH_SIZE, "lora-rank": MAX_LORA_RANK, "seq-len": MAX_SEQ_LEN}[solve]
    if solve == "seq-len" and model.max_position_embeddings:
        limit = min(limit, model.max_position_embeddings)
    if quick:
        def by_rules(v: int, margin: int = 0) -> bool:
            rules = shown(v, "rules")
            return rules is not None and rules.device_peak_bytes + margin <= usable

        def shifted(g: int) -> int | None:  # the rules' threshold moved by the default estimate's difference at g
            margin = (device(g) or 0) - shown(g, "rules").device_peak_bytes
            return largest(lambda v: by_rules(v, margin), 1, limit)

        guess = largest(by_rules, 1, limit)
        value = near_fit(fits, guess, shifted) if guess is not None else None
    else:
        value = largest(fits, 1, limit)
    return FitResult(
        solve=solve,
        value=value,
        gpu=gpu,
        usable_bytes=usable,
        device_peak_bytes=device(value) if value is not None else None,
        next_device_peak_bytes=device(value + 1) if value is not None and value < limit and not quick else None,
        limit=limit,
    )


def _with(setup: TrainingSetup, **changes) -> TrainingSetup:
    """A validated copy of setup with `changes`. Raises VramplanError for an impossible combination."""
    try:
        return TrainingSetup.model_validate({**setup.model_dump(), **changes})
    except ValidationError as exc:
        raise VramplanError(str(exc.errors()[0].get("msg", "invalid setup")).removeprefix("Value error, ")) from None


def _default_calibration() -> Calibration | None:
    from .api import default_calibration  # the api imports this module

    return default_calibration()
