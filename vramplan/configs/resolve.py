"""Lay config files under the flags: a flag given explicitly wins, then the files (later files win),
then the model's own quantization_config, then the command's defaults."""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, VramplanError
from ..models.local import config_path, hf_cache_config, read_config
from .files import read_config_file
from .peft_adapter import read_quantization
from .reading import Reading


@dataclass(frozen=True)
class Resolved:
    """The model to estimate, every parameter of the command (files laid under explicit flags) and
    what reading the files assumed."""

    model: str
    params: dict[str, Any]
    assumptions: tuple[str, ...]


def resolve(
    values: Mapping[str, Any],
    explicit: Collection[str],
    files: Sequence[str | Path] = (),
    readings: Sequence[Reading] = (),
) -> Resolved:
    """`values`: the command's parameters (given or default), with `model` and `method` None when not
    given; `explicit`: the names given explicitly; `files`: --from-config paths, read in order
    (`readings`: already read ones, e.g. an upload or a live trainer, laid after the files).

    Raises VramplanError (one line) for a bad file, a value a file sets that cannot be modelled
    (unless its flag is given), or a missing model or method."""
    readings = [read_config_file(f) for f in files] + list(readings)
    model = values.get("model") if values.get("model") else next((r.model for r in reversed(readings) if r.model), None)
    if not model:
        raise VramplanError("--model is required (or a --from-config file that names the model)")
    if not any(r.kind in ("model-config", "live") for r in readings):  # those read the quantization already
        quant = model_quantization(model)
        if quant is not None:
            readings.append(quant)
    merged: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for r in readings:
        for key in r.values:
            problems.pop(key, None)
        problems.update(r.problems)
        merged.update(r.values)
    params = dict(values, model=model)
    notes = [a for r in readings for a in r.assumptions]
    for key, value in merged.items():
        if key not in params:  # the command has no such flag (plan chooses the GPU count and strategy itself)
            if key == "parallel" and value:
                notes.append(f"the config's {value} is one of the strategies plan ranks; the file does not fix the "
                             "GPU count or strategy here")  # fmt: skip
            continue
        if key in explicit:
            if params[key] != value:
                notes.append(f"{_flag(key)} {params[key]} (command line) overrides {value} from the config")
        else:
            params[key] = value
    for key, message in problems.items():
        if key in params and key not in explicit:
            raise VramplanError(message)
    if not params.get("method"):
        raise VramplanError("--method is required: full | lora | qlora (the config files do not say; "
                            "a PEFT adapter_config.json means lora)")  # fmt: skip
    if params["method"] != "qlora" and "quant" not in explicit:
        params["quant"] = None
    _single_gpu(params, merged, explicit, notes)
    return Resolved(model=model, params=params, assumptions=tuple(dict.fromkeys(notes)))


def _single_gpu(params: dict[str, Any], merged: dict[str, Any], explicit: Collection[str], notes: list[str]) -> None:
    """A file's FSDP/DDP choice applies once --num-gpus says how many GPUs the launch uses; DeepSpeed ZeRO (and its
    offload) is estimated at one GPU as it is (world size 1, an upper bound per GPU for more)."""
    if "num_gpus" not in params or params["num_gpus"] != 1 or "parallel" in explicit:
        return
    if params.get("parallel") in ("zero2", "zero3") and "parallel" in merged:
        notes.append(f"the config uses DeepSpeed {params['parallel']}: estimated at world size 1 (give --num-gpus N "
                     "for the per-GPU memory of a larger launch)")  # fmt: skip
        return
    if params.get("parallel") is not None and "parallel" in merged:
        notes.append(f"the config uses {params['parallel']}, but the GPU count is chosen at launch: estimated on "
                     f"1 GPU (give --num-gpus N)")  # fmt: skip
        params["parallel"] = None
    if "offload" in params and "offload" not in explicit:
        params["offload"] = "none"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def model_quantization(model: str) -> Reading | None:
    """The QLoRA settings a local model's config.json implies (its `quantization_config`); None for a
    catalog model (shipped configs describe unquantized models) or a config without quantization."""
    try:
        path = config_path(model)
    except ConfigError:
        return None
    if path is None and model.count("/") == 1:
        cached = hf_cache_config(model)
        path = cached[1] if cached else None
    if path is None:
        return None
    try:
        config = read_config(path)
    except ConfigError:
        return None  # resolve_model reports it with the model
    if not isinstance(config.get("quantization_config"), dict):
        return None
    reading = Reading(source=f"{path.parent.name}/{path.name}", kind="model-quantization")
    read_quantization(config, reading)
    return reading
