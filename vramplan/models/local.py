"""Find and read a config.json on this machine: a path, or an HF id in the local HF cache. No network."""

import json
import os
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def read_config(path: Path | Traversable) -> dict[str, Any]:
    """The JSON object in `path`. Raises ConfigError when unreadable, malformed or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config.json must hold a JSON object, got {type(data).__name__}")
    return data


def config_path(name_or_path: str) -> Path | None:
    """`name_or_path` as an existing config file, or a folder's config.json; None when no such path.

    Raises ConfigError for an existing folder without a config.json.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "config.json").is_file():
            return path / "config.json"
        raise ConfigError(f"folder {path} holds no config.json")
    return None


def hf_cache_dir() -> Path:
    """The HF hub cache as huggingface_hub finds it: $HF_HUB_CACHE, else $HF_HOME/hub,
    else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "huggingface" / "hub"


def hf_cache_config(hf_id: str) -> tuple[str, Path] | None:
    """(repo id as cached, config.json path) for an `org/name` id in the local HF cache, else None.

    Matches the repo folder `models--{org}--{name}` case-insensitively; takes the snapshot that
    refs/main points at, else the most recently written snapshot holding a config.json.
    """
    parts = hf_id.strip().split("/")
    root = hf_cache_dir()
    if len(parts) != 2 or not all(parts) or not root.is_dir():
        return None
    wanted = f"models--{parts[0]}--{parts[1]}".lower()
    repo = next((d for d in root.iterdir() if d.name.lower() == wanted and d.is_dir()), None)
    if repo is None:
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        pinned = repo / "snapshots" / ref.read_text().strip() / "config.json"
        if pinned.is_file():
            return _repo_id(repo), pinned
    snapshots = sorted((repo / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return (_repo_id(repo), snapshots[0]) if snapshots else None


def _repo_id(repo: Path) -> str:
    org, name = repo.name.removeprefix("models--").split("--", 1)
    return f"{org}/{name}"
