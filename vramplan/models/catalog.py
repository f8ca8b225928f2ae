"""Resolve a model name or path to its config, offline.

Resolution order: a catalog name, alias or HF id (case-insensitive) -> a path to a config.json or a
folder holding one -> an `org/name` HF id in the local HF cache. The Hub is never contacted.
The catalog is data: `configs/*.json` (each with its source in `configs/index.json`).
"""

import difflib
import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from ..errors import UnknownModelError
from ..specs.model import ModelSpec
from .local import config_path, hf_cache_config, hf_cache_dir, read_config
from .parse import config_notes, is_hand_modelled, parse_config, shape_config, text_config


@dataclass(frozen=True)
class CatalogEntry:
    """One shipped config: catalog name, HF id, verified parameter count and where the file came from."""

    name: str
    hf_id: str
    params: int
    source: str
    source_quality: str
    #: other names that resolve to this entry (HF id, base ids served by a sibling config, old names)
    aliases: tuple[str, ...]
    file: str


@dataclass(frozen=True)
class _Found:
    config: dict[str, Any]
    name: str
    source: str
    hf_id: str | None
    note: str | None = None


def list_models() -> list[CatalogEntry]:
    """Every shipped model, in catalog order."""
    return [
        CatalogEntry(
            name=e["name"],
            hf_id=e["hf_id"],
            params=e["params"],
            source=e["source"],
            source_quality=e["source_quality"],
            aliases=tuple(e["aliases"]),
            file=e["file"],
        )
        for e in _index()
    ]


def resolve_model(name_or_path: str) -> ModelSpec:
    """The ModelSpec of a catalog name/alias/HF id, a config path, or an HF id in the local cache.

    Raises UnknownModelError (with the closest catalog names) or ConfigError (bad config).
    """
    found = _find(name_or_path)
    if not is_hand_modelled(found.config):
        return _traced_spec(found)
    return parse_config(found.config, name=found.name, source=found.source, hf_id=found.hf_id)


def _traced_spec(found: "_Found") -> ModelSpec:
    """A model type that is not hand-modelled: its cached trace (traced_cache.py; torch only if never traced)."""
    from .traced_cache import traced_model_spec

    return traced_model_spec(shape_config(found.config), name=found.name, source=found.source, hf_id=found.hf_id)


def load_raw_config(name_or_path: str) -> dict[str, Any]:
    """The config dict a trainer hands to transformers (`AutoConfig.for_model(**config)`).

    For a Gemma 3 multimodal config: its text config, model_type gemma3_text, Gemma3TextConfig
    defaults filled. Keys that describe a copy (auto_map, quantization, _attn_implementation) are dropped.
    """
    found = _find(name_or_path)
    if not is_hand_modelled(found.config):
        return shape_config(found.config)
    return text_config(found.config)


def model_assumptions(name_or_path: str) -> list[str]:
    """What resolving this model assumed (sibling config used, defaults filled, keys ignored)."""
    found = _find(name_or_path)
    notes = ([found.note] if found.note else []) + config_notes(found.config)
    if not is_hand_modelled(found.config):
        from .traced_cache import traced_notes

        notes += traced_notes(_traced_spec(found))
    return notes


def _find(name_or_path: str) -> _Found:
    key = name_or_path.strip()
    if not key:
        raise UnknownModelError(
            "empty model name: give a catalog name (see `vramplan models`) or a path to a config.json"
        )
    hit = _aliases().get(key.lower())
    if hit is not None:
        entry, note = hit
        config = read_config(_configs_dir().joinpath(entry["file"]))
        return _Found(config, entry["name"], f"catalog: {entry['source']}", entry["hf_id"], note)
    path = config_path(key)
    if path is not None:
        name = path.parent.name if path.name == "config.json" else path.stem
        return _Found(read_config(path), name or str(path), str(path), None)
    cached = hf_cache_config(key)
    if cached is not None:
        repo_id, path = cached
        return _Found(read_config(path), repo_id, f"HF cache: {path}", repo_id)
    raise UnknownModelError(_unknown_message(key))


def _unknown_message(key: str) -> str:
    short = [a for a in _aliases() if "/" not in a]
    wanted = key.lower().rsplit("/", 1)[-1]
    close = difflib.get_close_matches(wanted, short, n=3, cutoff=0.5)
    hint = f"closest catalog names: {', '.join(close)}; " if close else ""
    return (
        f"unknown model {key!r}: {hint}a path to a config.json (or a folder holding one) also works, "
        f"as does an HF id already in the local HF cache ({hf_cache_dir()}); `vramplan models` lists the catalog"
    )


def _configs_dir() -> Traversable:
    return files("vramplan.models").joinpath("configs")


@cache
def _index() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(_configs_dir().joinpath("index.json").read_text(encoding="utf-8")))


@cache
def _aliases() -> dict[str, tuple[dict[str, Any], str | None]]:
    """lowercase name/alias/HF id -> (index entry, assumption note or None)."""
    table: dict[str, tuple[dict[str, Any], str | None]] = {}
    for entry in _index():
        table[entry["name"]] = (entry, None)
        table[entry["hf_id"].lower()] = (entry, None)
        for alias, note in entry["aliases"].items():
            table.setdefault(alias.lower(), (entry, note))
    return table
