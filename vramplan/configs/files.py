"""Load one config file safely and hand it to the reader of its kind.

YAML goes through `yaml.safe_load`: a `!!python/...` tag (or any tag outside YAML's standard set)
is refused, never constructed. JSON through `json`. Nothing in a file is imported or executed; a
model path a file names is later read for its shapes only.
"""

import json
from pathlib import Path
from typing import Any

from . import axolotl, hf_args, llamafactory, peft_adapter
from .reading import ConfigFileError, Reading
from .shared_keys import deepspeed_value

#: larger files are refused (real training configs are a few KiB)
MAX_CONFIG_BYTES = 1024 * 1024
KINDS = "an Axolotl or LLaMA-Factory YAML, a TrainingArguments/SFTConfig JSON, a PEFT adapter_config.json, " \
        "a model config.json or a DeepSpeed JSON"  # fmt: skip


def read_config_file(path: str | Path) -> Reading:
    """The Reading of one config file. Raises ConfigFileError (one line) when it is missing,
    too large, malformed, unsafe or of no known kind."""
    path = Path(path).expanduser()
    name = path.name or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigFileError(f"--from-config {path}: no such file") from None
    except OSError as err:
        raise ConfigFileError(f"--from-config {path}: cannot read ({err.strerror or err})") from None
    reading = read_config_bytes(data, name, base=path.parent)
    if reading.kind == "model-config":
        reading.model = str(path)  # the model's own config.json: estimate that model
    return reading


def read_config_bytes(data: bytes, name: str, *, base: Path = Path(".")) -> Reading:
    """The Reading of a config file's bytes (an upload); relative paths inside resolve against
    `base`, then the working directory. Raises ConfigFileError."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{name}: {len(data)} bytes is too large for a training config (limit {MAX_CONFIG_BYTES})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(f"{name}: not UTF-8 text; accepted: {KINDS}") from None
    doc = _parse(text, name)
    return classify_and_read(doc, name, base)


def _parse(text: str, name: str) -> dict[str, Any]:
    if name.lower().endswith(".json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigFileError(f"{name}: not valid JSON ({err.msg} at line {err.lineno})") from None
    else:
        doc = _safe_yaml(text, name)
    if not isinstance(doc, dict):
        raise ConfigFileError(f"{name}: a config must hold a mapping of keys, got {type(doc).__name__}")
    return doc


def _safe_yaml(text: str, name: str) -> Any:
    import yaml  # PyYAML: imported on use, `vramplan estimate` without --from-config never needs it

    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        tag = getattr(err, "problem", "") or "an unsupported tag"
        raise ConfigFileError(f"{name}: refused: {tag} (a YAML tag that would construct objects; "
                              f"accepted: plain YAML)") from None  # fmt: skip
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or type(err).__name__
        raise ConfigFileError(f"{name}: not valid YAML ({what}{where})") from None


def classify_and_read(doc: dict[str, Any], name: str, base: Path) -> Reading:
    """Tell the kind from the keys (the file extension only chooses the parser) and read it."""
    if _has(doc, llamafactory.MARKERS[:1]) or _has(doc, ("finetuning_type",)):
        r = Reading(source=name, kind="llamafactory")
        llamafactory.read(doc, r, base)
    elif _has(doc, ("base_model",)) or _has(doc, axolotl.MARKERS[1:]) and not _has(doc, hf_args.MARKERS[:1]):
        r = Reading(source=name, kind="axolotl")
        axolotl.read(doc, r, base)
    elif "peft_type" in doc or ("r" in doc and "target_modules" in doc):
        r = Reading(source=name, kind="peft-adapter")
        peft_adapter.read(doc, r)
    elif "model_type" in doc and ("architectures" in doc or "hidden_size" in doc or "text_config" in doc):
        r = Reading(source=name, kind="model-config", model=None)
        peft_adapter.read_quantization(doc, r)
    elif _has(doc, hf_args.MARKERS):
        r = Reading(source=name, kind="sft-config" if hf_args.is_sft(doc) else "training-args")
        hf_args.read(doc, r, base)
    elif "zero_optimization" in doc:
        r = Reading(source=name, kind="deepspeed")
        deepspeed_value(r, name, doc, base)
    else:
        raise ConfigFileError(f"{name}: not a training config vramplan knows; accepted: {KINDS}")
    if r.model and not Path(r.model).is_absolute() and (base / r.model).exists():
        r.model = str(base / r.model)  # a local model folder named relative to the config file
    return r


def _has(doc: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return any(k in doc for k in keys)
