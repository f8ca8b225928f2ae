"""Run-record storage: one JSON file per MeasuredRun, written atomically, read leniently.

Layout: ``<runs_dir>/<gpu-id or 'cpu'>/<run_id>.json``. Pure Python (no torch): the estimate
and calibration paths read records through this module.

Reading never deletes or rewrites a file. A file that is not valid JSON, is cut short, or does
not match the current schema is skipped with a ``RunRecordWarning`` naming it and the reason;
``load_runs(..., problems=list)`` also collects those reasons for callers that report them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from vramplan.atomic import fsynced_temp
from vramplan.errors import RunRecordError, VramplanError
from vramplan.specs import MeasuredRun, ValidationError

#: environment variable naming the user runs directory (wins over XDG)
RUNS_DIR_ENV = "VRAMPLAN_RUNS_DIR"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
#: at most this many "-N" suffixes are tried before giving up on a free file name
_MAX_SUFFIX = 10_000


class RunRecordWarning(UserWarning):
    """A run-record file was skipped (corrupt, partial or wrong schema); the file is left as is."""


def single_gpu_run(run: MeasuredRun) -> bool:
    """Measured by one process on one GPU without DeepSpeed: the runs the single-GPU memory terms, their fitted
    constants and the single-GPU accuracy tables describe (DDP/FSDP add NCCL buffers and shards, ZeRO its
    partitioned buffers, even at world size 1)."""
    return run.environment.num_gpus == 1 and run.setup.parallel is None


def shipped_runs_dir() -> Path:
    """The runs shipped inside the package (``vramplan/runs/shipped``, declared as package data)."""
    return Path(__file__).resolve().parent / "shipped"


def user_runs_dir() -> Path:
    """Where ``vramplan measure`` writes: $VRAMPLAN_RUNS_DIR, else $XDG_DATA_HOME/vramplan/runs,
    else ~/.local/share/vramplan/runs. The directory is not created here."""
    explicit = os.environ.get(RUNS_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "vramplan" / "runs"


def _safe(name: str) -> str:
    """A path component made of letters, digits, '.', '_' and '-' only."""
    cleaned = _SAFE_NAME.sub("-", name).strip("-.")
    return cleaned or "unnamed"


def run_path(run: MeasuredRun, runs_dir: Path) -> Path:
    """The file a run is stored in when nothing else is there yet."""
    gpu = run.environment.gpu_id or "cpu"
    return Path(runs_dir) / _safe(gpu) / f"{_safe(run.run_id)}.json"


def _to_json(run: MeasuredRun) -> str:
    return run.model_dump_json(indent=2) + "\n"


def save_run(run: MeasuredRun, runs_dir: Path | str) -> Path:
    """Write ``run`` under ``runs_dir`` atomically and return the path written.

    The JSON goes to a temporary file in the target directory, is flushed and fsynced, then
    renamed over the final name with ``os.replace`` (atomic on POSIX and Windows), so a reader
    never sees half a record. An existing file holding the same record is reused; a different
    record at that name is never overwritten: the new one gets a ``-2``, ``-3``, ... suffix.

    Raises:
        RunRecordError: no free file name (more than 10,000 records share one run_id).
        OSError: the directory cannot be created or written.
    """
    target = run_path(run, Path(runs_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    text = _to_json(run)
    stem = target.stem
    for n in range(1, _MAX_SUFFIX + 1):
        candidate = target if n == 1 else target.with_name(f"{stem}-{n}.json")
        if candidate.exists():
            try:
                if candidate.read_text(encoding="utf-8") == text:
                    return candidate
            except OSError:
                pass
            continue
        tmp = fsynced_temp(target.parent, f".{stem}.", text)
        try:
            if candidate.exists():  # taken between the check and now: try the next suffix
                os.unlink(tmp)
                continue
            os.replace(tmp, candidate)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return candidate
    raise RunRecordError(f"no free file name for run {run.run_id!r} in {target.parent}")


def read_run(path: Path | str) -> MeasuredRun:
    """Parse one run-record file.

    Raises:
        RunRecordError: unreadable, not JSON, or not a valid record of the current schema; the
            message names the file and what is wrong.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunRecordError(f"{path}: cannot read run record ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunRecordError(f"{path}: not valid JSON (corrupt or partial file: {exc})") from exc
    except RecursionError:
        raise RunRecordError(f"{path}: JSON nested too deeply to be a run record") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise RunRecordError(f"{path}: a number too long to be a measurement ({str(exc).split(';')[0]})") from None
    if not isinstance(data, dict):
        raise RunRecordError(f"{path}: a run record is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    try:
        return MeasuredRun.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "record"
        shown = repr(version) if len(repr(version)) <= 20 else "(unreadable)"
        raise RunRecordError(
            f"{path}: does not match run schema (file schema_version={shown}; "
            f"{exc.error_count()} error(s), first at {where}: {first.get('msg')})"
        ) from None


def _check_model(run: MeasuredRun, path: Path, resolved: dict[str, str | None]) -> None:
    """Raises RunRecordError when the record's model does not resolve (calibration could not predict it)."""
    from vramplan.models import resolve_model  # the models package imports specs only; lazily, to keep this light

    key = run.model_source or run.model
    if key not in resolved:
        try:
            resolve_model(key)
            resolved[key] = None
        except VramplanError as exc:
            resolved[key] = str(exc)
    if resolved[key] is not None:
        raise RunRecordError(f"{path}: model {key!r} cannot be resolved here ({resolved[key]})")


def iter_run_files(runs_dir: Path | str) -> list[Path]:
    """Every ``*.json`` under ``runs_dir`` (recursively, sorted); none when it does not exist."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.json") if p.is_file() and not p.name.startswith("."))


def load_runs(
    dirs: Iterable[Path | str] | Path | str,
    *,
    problems: list[str] | None = None,
    require_model: bool = False,
) -> list[MeasuredRun]:
    """All valid run records under ``dirs`` (one directory or several), in path order.

    Corrupt, partial, too deeply nested or wrong-schema files, and with ``require_model`` (what calibrate and
    validate need: they predict every run) records whose model cannot be resolved on this machine
    (`resolve_model` of its model_source or model), are skipped: each gives a ``RunRecordWarning``
    and, when ``problems`` is a list, one line appended to it. Files are only read, never touched.
    Directories that do not exist are skipped silently (a fresh user runs dir is normal).
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    runs: list[MeasuredRun] = []
    resolved: dict[str, str | None] = {}
    for d in dirs:
        for path in iter_run_files(d):
            try:
                run = read_run(path)
                if require_model:
                    _check_model(run, path, resolved)
                runs.append(run)
            except RunRecordError as exc:
                message = f"skipped run record: {exc}"
                warnings.warn(message, RunRecordWarning, stacklevel=2)
                if problems is not None:
                    problems.append(message)
    return runs
