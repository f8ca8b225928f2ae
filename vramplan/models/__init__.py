"""Model shapes: parse HF config.json into a ModelSpec, the shipped offline catalog, exact counts.

Pure Python (json, pathlib, difflib): the estimate path never imports torch or transformers.
"""

from .catalog import CatalogEntry, list_models, load_raw_config, model_assumptions, resolve_model
from .params import (
    ROLES,
    active_params_per_token,
    expert_param_shapes,
    largest_linear,
    linear_shapes,
    moe_layers,
    param_counts,
    quantizable_params,
    total_params,
)
from .parse import config_notes, parse_config

__all__ = [
    "ROLES",
    "CatalogEntry",
    "active_params_per_token",
    "config_notes",
    "expert_param_shapes",
    "largest_linear",
    "linear_shapes",
    "list_models",
    "load_raw_config",
    "model_assumptions",
    "moe_layers",
    "param_counts",
    "parse_config",
    "quantizable_params",
    "resolve_model",
    "total_params",
]
