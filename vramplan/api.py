"""The public API: what the CLI and the Streamlit page call (no torch anywhere on this path)."""

from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING

from gpu_catalog import find_gpu, list_gpus

from .calibration import load_calibration
from .errors import VramplanError
from .estimator import DEFAULT_HEADROOM, estimate
from .models import model_assumptions, resolve_model
from .specs import Calibration, Estimate, TrainingSetup

if TYPE_CHECKING:  # the planner is imported lazily: `vramplan estimate` does not need it
    from .planner import FitResult, Plan


#: a dataset beyond these is a typo, not a job: the largest pre-training runs process ~2e13 tokens (Llama 3: 15e12)
MAX_DATASET_TOKENS = 10**15
MAX_EPOCHS = 10_000


@lru_cache(maxsize=1)
def default_calibration() -> Calibration | None:
    """The calibration estimates apply by default (shipped file, or $VRAMPLAN_CALIBRATION)."""
    return load_calibration()


def estimate_for(
    model: str,
    setup: TrainingSetup,
    *,
    gpu: str | None = None,
    headroom: float = DEFAULT_HEADROOM,
    assumptions: tuple[str, ...] = (),
    reserved_rule: str = "auto",
) -> Estimate:
    """Resolve names (model catalog / path, GPU catalog) and estimate; `assumptions`: what reading a
    config file assumed (listed first). The Estimate carries the setup. Raises VramplanError on bad input."""
    spec = resolve_model(model)
    gpu_spec = find_gpu(gpu) if gpu is not None else None  # --gpu '' is refused, not ignored
    result = estimate(
        spec,
        setup,
        gpu_spec,
        headroom=headroom,
        calibration=default_calibration(),
        assumptions=tuple(assumptions) + tuple(model_assumptions(model)),
        reserved_rule=reserved_rule,
    )
    return result.model_copy(update={"setup": setup})


def plan_for(
    model: str,
    setup: TrainingSetup,
    *,
    gpus: str = "all",
    max_gpus: int | None = None,
    dataset_tokens: int | None = None,
    dataset_examples: int | None = None,
    epochs: float | None = None,
    sort: str = "cost",
    headroom: float = DEFAULT_HEADROOM,
    assumptions: tuple[str, ...] = (),
) -> "Plan":
    """Resolve names, turn the dataset into tokens and plan. `gpus`: "all" or a comma list of catalog ids;
    max_gpus None: the planner's default (8). Raises VramplanError on bad input."""
    from .planner import DEFAULT_MAX_GPUS, plan

    spec = resolve_model(model)
    names = [g.strip() for g in gpus.split(",")]
    if not all(names):
        raise VramplanError(f"--gpus {gpus!r}: an empty GPU id; accepted: all or a comma list of ids (vramplan gpus)")
    gpu_specs = list_gpus() if gpus.strip() == "all" else [find_gpu(g) for g in names]
    total = dataset_total_tokens(setup.seq_len, dataset_tokens, dataset_examples, epochs)
    max_gpus = DEFAULT_MAX_GPUS if max_gpus is None else max_gpus
    result = plan(spec, setup, gpu_specs, max_gpus=max_gpus, total_tokens=total, sort=sort, headroom=headroom,
                  calibration=default_calibration())  # fmt: skip
    return replace(result, assumptions=tuple(assumptions) + tuple(model_assumptions(model)) + result.assumptions)


def dataset_total_tokens(
    seq_len: int, dataset_tokens: int | None, dataset_examples: int | None, epochs: float | None
) -> float | None:
    """Tokens the run processes: tokens x epochs, or examples x seq_len x epochs (each example padded or packed
    to seq_len); None without a dataset. Raises VramplanError on contradictory or non-positive values."""
    if dataset_tokens is not None and dataset_examples is not None:
        raise VramplanError("give --dataset-tokens or --dataset-examples, not both")
    if epochs is not None and not 0 < epochs <= MAX_EPOCHS:  # also refuses nan and inf
        raise VramplanError(f"--epochs {epochs}: accepted: a number > 0 and <= {MAX_EPOCHS:,}")
    for flag, value in (("--dataset-tokens", dataset_tokens), ("--dataset-examples", dataset_examples)):
        if value is not None and not 0 < value <= MAX_DATASET_TOKENS:
            shown = value if len(str(value)) <= 24 else f"of {len(str(value))} digits"
            raise VramplanError(f"{flag} {shown}: accepted: a positive integer up to {MAX_DATASET_TOKENS:.0e}")
    if dataset_tokens is None and dataset_examples is None:
        if epochs is not None:
            raise VramplanError("--epochs needs --dataset-tokens or --dataset-examples")
        return None
    tokens = dataset_tokens if dataset_tokens is not None else dataset_examples * seq_len  # type: ignore[operator]
    total = float(tokens) * (epochs if epochs is not None else 1.0)
    if total > MAX_DATASET_TOKENS:
        raise VramplanError(f"a dataset of {total:.3g} tokens in all: accepted: up to {MAX_DATASET_TOKENS:.0e} tokens")
    return total


def fit_for(
    model: str, setup: TrainingSetup, *, gpu: str, solve: str, headroom: float = DEFAULT_HEADROOM, quick: bool = False
) -> "FitResult":
    """The largest batch size / sequence length / LoRA rank that fits `gpu` (`quick`: planner.fit's few-replay search,
    a value that fits at or a little below the largest). Raises VramplanError on bad input."""
    from .planner import fit

    return fit(resolve_model(model), setup, find_gpu(gpu), solve, headroom=headroom, calibration=default_calibration(),
               quick=quick)  # fmt: skip
