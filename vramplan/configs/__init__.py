"""Estimate from the config a user already wrote: Axolotl / LLaMA-Factory YAML, TrainingArguments /
SFTConfig JSON, PEFT adapter_config.json, a model config.json's quantization_config.

One small reader per format turns a file into the setup flags of `vramplan estimate` (a `Reading`);
`resolve` lays the files under the flags given explicitly. Pure Python: no torch, nothing executed.
"""

from .files import MAX_CONFIG_BYTES, read_config_bytes, read_config_file
from .reading import ConfigFileError, Reading
from .resolve import Resolved, model_quantization, resolve

__all__ = [
    "MAX_CONFIG_BYTES",
    "ConfigFileError",
    "Reading",
    "Resolved",
    "explicit_params",
    "model_quantization",
    "read_config_bytes",
    "read_config_file",
    "resolve",
    "resolve_command",
]


def explicit_params(ctx, names) -> set[str]:
    """The parameters of a click/typer command given on the command line (or by environment)."""
    given = ("COMMANDLINE", "ENVIRONMENT")  # click's ParameterSource names (typer may carry its own click)
    return {n for n in names if getattr(ctx.get_parameter_source(n), "name", None) in given}


def resolve_command(ctx, params: dict) -> Resolved:
    """A CLI command's locals() -> Resolved: its --from-config files under its explicit flags.
    Raises VramplanError."""
    values = {k: v for k, v in params.items() if k not in ("ctx", "from_config")}
    return resolve(values, explicit_params(ctx, values), params.get("from_config") or ())
