"""The public API: what the CLI and the Streamlit page call (no torch anywhere on this path)."""

from gpu_catalog import find_gpu

from .estimator import DEFAULT_HEADROOM, estimate
from .models import model_assumptions, resolve_model
from .specs import Estimate, TrainingSetup


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
    return estimate(spec, setup, gpu_spec, headroom=headroom, assumptions=tuple(model_assumptions(model)))
