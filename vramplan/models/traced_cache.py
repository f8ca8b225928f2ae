"""Traced models as data: `$XDG_CACHE_HOME/vramplan/traced/<config-hash>.json` (default ~/.cache/vramplan/traced).

Pure Python: reading a cached trace needs no torch, so an estimate of a traced model stays fast. Only a model
that was never traced imports `vramplan.models.traced` (torch + transformers, extra `[trace]`).
The hash covers the config's shape keys (the keys that describe a copy are dropped first) and the tracer
version; the record names the transformers version it was traced with.
"""

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import replace_atomically
from ..errors import ConfigError
from ..specs.model import LinearShape, ModelSpec, TracedActivations, TracedSpec

#: bump with models/traced.py TRACER_VERSION (kept here so that a cache lookup needs no torch)
TRACER_VERSION = 1


def cache_dir() -> Path:
    """Where traced records live: $XDG_CACHE_HOME/vramplan/traced, else ~/.cache/vramplan/traced."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vramplan" / "traced"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of the config and the tracer version."""
    payload = json.dumps({"tracer": TRACER_VERSION, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_path(config: dict[str, Any]) -> Path:
    return cache_dir() / f"{config_hash(config)}.json"


def traced_record(config: dict[str, Any]) -> dict[str, Any]:
    """The cached trace of `config`, tracing it first (torch + transformers) when there is none.

    Raises ConfigError when the trace extra is not installed or transformers cannot build the model.
    """
    path = cache_path(config)
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            pass  # a corrupt cache entry is traced again
    try:
        import torch  # noqa: F401  (only here: a model that was never traced)
        import transformers  # noqa: F401

        from .traced import trace_config
    except ImportError:
        raise ConfigError(
            f"model_type {config.get('model_type')!r} is not hand-modelled; install the trace extra "
            "(pip install 'vramplan[trace]') to trace it with transformers on the meta device"
        ) from None
    record = trace_config(config)
    _write_atomic(path, json.dumps(record, indent=1, sort_keys=True))
    return record


def traced_model_spec(config: dict[str, Any], *, name: str, source: str, hf_id: str | None) -> ModelSpec:
    """A ModelSpec whose counts and activations come from the trace of `config`."""
    record = traced_record(config)
    shapes = record["shapes"]
    traced = TracedSpec(
        model_type=record["model_type"],
        transformers_version=record["transformers_version"],
        param_counts=record["param_counts"],
        linears=tuple(LinearShape(**s) for s in record["linears"]),
        activations={
            mode: {attn: TracedActivations(**units) for attn, units in by_attn.items()}
            for mode, by_attn in record["activations"].items()
        },
        cache_file=str(cache_path(config)),
    )
    return ModelSpec(name=name, model_type=record["model_type"], source=source, hf_id=hf_id, traced=traced, **shapes)


def traced_notes(spec: ModelSpec) -> list[str]:
    """What an estimate of a traced model assumes."""
    if spec.traced is None:
        return []
    t = spec.traced
    installed = _installed_transformers()
    stale = f" (installed: {installed})" if installed and installed != t.transformers_version else ""
    return [
        f"traced: {t.model_type} is not hand-modelled; parameters and saved activations traced with transformers "
        f"{t.transformers_version}{stale} on the meta device (flash-kernel semantics for sdpa/flash), cached in {t.cache_file}",
        "traced: LoRA/QLoRA activations = the traced frozen base + the per-target LoRA terms; QLoRA's fp32 residual "
        "stream and MoE expert transients are not traced",
    ]


def _installed_transformers() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, text)
