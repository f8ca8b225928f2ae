"""The public API: what the CLI and the Streamlit page call (no torch anywhere on this path)."""

from functools import lru_cache

from gpu_catalog import find_gpu

from .calibration import load_calibration
from .estimator import DEFAULT_HEADROOM, estimate
from .models import model_assumptions, resolve_model
from .specs import Calibration, Estimate, TrainingSetup


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
) -> Estimate:
    """Resolve names (model catalog / path, GPU catalog) and estimate. Raises VramplanError on bad input."""
    spec = resolve_model(model)
    gpu_spec = find_gpu(gpu) if gpu else None
    return estimate(
        spec,
        setup,
        gpu_spec,
        headroom=headroom,
        calibration=default_calibration(),
        assumptions=tuple(model_assumptions(model)),
    )
