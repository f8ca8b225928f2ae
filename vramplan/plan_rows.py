"""What a plan table shows by default, and what would make a near miss fit.

`best_per_gpu`: one row per GPU type. A plan over the catalog has up to 13 options per GPU (1, 2, 4, 8 GPUs x
strategies), mostly at the same cost per token (twice the GPUs, twice the speed, twice the price), so the table
shows each GPU's best option, taking the fewest GPUs whose cost per token is within COST_TOLERANCE of that GPU's
best (then the plan's own order); a GPU where nothing fits shows its closest option. `--all` and `--format json`
keep every option.

`near_miss_fixes`: for an option that misses by at most NEAR_MISS of its usable memory, the single changes that
make it fit, with the bytes each saves: a smaller headroom, expandable segments, a 5 % shorter sequence.
"""

import itertools
from collections.abc import Callable
from dataclasses import replace

from .errors import VramplanError
from .planner import SEQ_LEN_STEP, PlanOption, Suggestion, _shown, _with
from .estimator import estimate
from .specs import Calibration, ModelSpec, TrainingSetup

#: options whose cost per token (or time per token, or headroom, as sorted) is this close to a GPU's best count as
#: equal: the fewest GPUs among them is shown (the model's speed is not more accurate than that)
COST_TOLERANCE = 0.02
#: an option whose device peak is at most this fraction above its usable memory is a near miss
NEAR_MISS = 0.10
#: the shorter sequence a near miss is tried with
SHORTER_SEQ = 0.95


def _metric(o: PlanOption, sort: str) -> float:
    """Smaller is better: $ per token (GPU-seconds per token when the GPU has no price), time per token, or minus
    the headroom."""
    per_token_s = 1 / o.tokens_per_s if o.tokens_per_s else float("inf")
    if sort == "memory":
        return -float(o.headroom_bytes)
    if sort == "cost":
        return o.usd_per_token if o.usd_per_token is not None else per_token_s * o.num_gpus
    return per_token_s


def _close(value: float, best: float) -> bool:
    return value <= best + abs(best) * COST_TOLERANCE


def best_per_gpu(options: tuple[PlanOption, ...] | list[PlanOption], sort: str) -> list[PlanOption]:
    """One option per GPU id, in the order of each GPU's best option in `options` (already sorted best first):
    among the GPU's fitting options within COST_TOLERANCE of its best, the fewest GPUs; else its closest miss."""
    by_gpu: dict[str, list[PlanOption]] = {}
    for o in options:
        by_gpu.setdefault(o.gpu.id, []).append(o)
    rows = []
    for group in by_gpu.values():
        fitting = [o for o in group if o.fits]
        if not fitting:
            rows.append(group[0])
            continue
        best = _metric(fitting[0], sort)
        near = [o for o in fitting if _close(_metric(o, sort), best)]
        rows.append(min(near, key=lambda o: (o.num_gpus, near.index(o))))
    return rows


def near_misses(options: tuple[PlanOption, ...] | list[PlanOption], shown: list[PlanOption]) -> list[PlanOption]:
    """Near misses worth a line next to `shown`: per GPU, the fewest-GPU option that one change makes fit, when it
    needs fewer GPUs than the GPU's shown fitting option (or the GPU has none)."""
    fitting_n = {o.gpu.id: o.num_gpus for o in shown if o.fits}
    out: dict[str, PlanOption] = {}
    for o in options:
        if o.fixes and o.num_gpus < fitting_n.get(o.gpu.id, 10**9):
            if o.gpu.id not in out or o.num_gpus < out[o.gpu.id].num_gpus:
                out[o.gpu.id] = o
    return list(out.values())


def near_miss_fixes(
    model: ModelSpec,
    setup: TrainingSetup,
    option: PlanOption,
    *,
    headroom: float,
    calibration: Calibration | None,
) -> tuple[Suggestion, ...]:
    """Single changes that make a near-miss option fit (empty when it fits or misses by more than NEAR_MISS)."""
    peak, usable = option.memory.device_peak_bytes, option.usable_bytes
    if option.fits or peak > usable * (1 + NEAR_MISS):
        return ()
    s = setup if option.num_gpus == 1 else _with(setup, num_gpus=option.num_gpus, parallel=option.parallel)
    fixes = []
    capacity = option.gpu.memory_bytes
    if peak < capacity:
        needed = int((1 - peak / capacity) * 100) / 100  # rounded down to whole percent
        if needed >= 0.0:
            fixes.append(Suggestion(f"--headroom {needed:.2f}", peak - usable, True))

    def device(changed: TrainingSetup) -> int:
        e = estimate(model, changed, option.gpu, headroom=headroom, calibration=calibration)
        return _shown(e).device_peak_bytes

    tries: list[tuple[str, Callable[[], TrainingSetup]]] = []
    if not s.expandable_segments:
        tries.append(("--expandable-segments", lambda: _with(s, expandable_segments=True)))
    shorter = int(s.seq_len * SHORTER_SEQ) // SEQ_LEN_STEP * SEQ_LEN_STEP or int(s.seq_len * SHORTER_SEQ)
    if 0 < shorter < s.seq_len:
        tries.append((f"--seq-len {shorter}", lambda: _with(s, seq_len=shorter)))
    for change, make in tries:
        try:
            new_peak = device(make())
        except VramplanError:
            continue
        if new_peak <= usable:
            fixes.append(Suggestion(change, peak - new_peak, True))
    return tuple(fixes)


#: combinations of up to this many single changes are tried when no single change fits
MAX_COMBINED = 4


def _diff(base: TrainingSetup, changed: TrainingSetup) -> dict:
    before, after = base.model_dump(), changed.model_dump()
    return {k: v for k, v in after.items() if before[k] != v}


def smallest_combination(
    setup: TrainingSetup,
    singles: list[tuple[str, TrainingSetup, int]],
    device: Callable[[TrainingSetup], int],
    usable_bytes: int,
    base_bytes: int,
) -> list[Suggestion]:
    """The fewest single changes (each `(flag change, changed setup, bytes saved)`) that fit together, as one
    Suggestion: the combinations of the largest savers are tried first, so among equally small combinations the
    one saving most is found; its changes are listed largest saving first. Empty when none of up to MAX_COMBINED
    changes fits."""
    ranked = sorted(singles, key=lambda t: -t[2])
    for size in range(2, min(MAX_COMBINED, len(ranked)) + 1):
        found = []
        for combo in itertools.combinations(ranked, size):
            merged: dict = {}
            for _, changed, _ in combo:
                for key, value in _diff(setup, changed).items():
                    merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
            try:
                peak = device(_with(setup, **merged))
            except VramplanError:
                continue
            if peak <= usable_bytes:
                found.append((base_bytes - peak, combo))
        if found:
            saves, combo = max(found, key=lambda f: f[0])
            return [Suggestion(" ".join(change for change, _, _ in combo), saves, True)]
    return []


def with_near_miss_fixes(
    model: ModelSpec,
    setup: TrainingSetup,
    options: tuple[PlanOption, ...],
    *,
    headroom: float,
    calibration: Calibration | None,
) -> tuple[PlanOption, ...]:
    """`options` with `fixes` filled for the near misses."""
    return tuple(
        replace(o, fixes=near_miss_fixes(model, setup, o, headroom=headroom, calibration=calibration))
        if not o.fits
        else o
        for o in options
    )
