"""Find and read a config.json on this machine: a path, or an HF id in the local HF cache. No network."""

import errno
import json
import os
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def read_config(path: Path | Traversable) -> dict[str, Any]:
    """The JSON object in `path`. Raises ConfigError when unreadable, malformed or not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    data = parse_json_text(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config.json must hold a JSON object, got {type(data).__name__}")
    return data


def parse_json_text(text: str, origin: str) -> Any:
    """json.loads with every failure as one ConfigError line: malformed JSON, nesting deeper than the parser
    recurses (RecursionError) and integers of more digits than Python converts (ValueError, > 4300 digits)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{origin}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise ConfigError(f"{origin}: JSON nested too deeply to be a model config") from None
    except ValueError as err:  # int_max_str_digits
        raise ConfigError(f"{origin}: a number in the JSON is too long ({str(err).split(';')[0]})") from None


def broken_link(path: Path) -> str | None:
    """What is wrong with `path` when it is a symbolic link that leads nowhere, else None."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 raises RuntimeError for a loop
        return f"{path} is a symbolic link loop"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop"
        return f"{path} is a dangling symbolic link (its target {os.readlink(path)} does not exist)"
    return None


def config_path(name_or_path: str) -> Path | None:
    """`name_or_path` as an existing config file, or a folder's config.json; None when no such path.

    Raises ConfigError for an existing folder without a config.json.
    """
    path = Path(name_or_path).expanduser()
    for candidate in (path, path / "config.json"):
        problem = broken_link(candidate)
        if problem:
            raise ConfigError(problem)
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
        _refuse_broken_blob(pinned)
    found = list((repo / "snapshots").glob("*/config.json"))
    snapshots = sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)
    if not snapshots:
        for link in found:
            _refuse_broken_blob(link)
    return (_repo_id(repo), snapshots[0]) if snapshots else None


def _refuse_broken_blob(link: Path) -> None:
    problem = broken_link(link)
    if problem:
        raise ConfigError(f"HF cache: {problem}; the download was interrupted or the blob deleted: download it again")


def _repo_id(repo: Path) -> str:
    org, name = repo.name.removeprefix("models--").split("--", 1)
    return f"{org}/{name}"
