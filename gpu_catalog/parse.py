"""Parse one GPU TOML into a GpuSpec. Catalog entries and user files go through this same code."""

import re
import tomllib
from pathlib import Path
from typing import Any

from vramplan.errors import UnknownGpuError
from vramplan.specs import Spec, ValidationError
from vramplan.specs.fields import Field
from vramplan.specs.gpu import GpuSpec

#: ids are typed on the command line: lowercase letters/digits in words joined by '-'
_ID_PATTERN = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class GpuFileError(UnknownGpuError):
    """A GPU TOML that cannot be read or does not describe a valid GpuSpec."""


class MemoryReadings(Spec):
    """Optional `[readings]` table: the raw observations `memory_bytes` was chosen from.

    Not part of GpuSpec; the catalog keeps it so tests can check memory_bytes against it.
    """

    marketed_gb: float = Field(gt=0)
    #: torch total_memory / cuDeviceTotalMem readings seen for this SKU, in bytes
    runtime_total_bytes: tuple[int, ...] = ()
    nvidia_smi_total_mib: int | None = Field(default=None, gt=0)


def load_gpu_file(path: str | Path) -> GpuSpec:
    """Read a GPU TOML file (same format as `gpu_catalog/gpus/*.toml`).

    Raises GpuFileError (an UnknownGpuError) with a one-line message when the file cannot be
    read, is not TOML, or does not describe a valid GPU.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise GpuFileError(f"cannot read GPU file {path}: {reason}") from None
    return parse_gpu_toml(text, origin=str(path))


def parse_gpu_toml(text: str, origin: str) -> GpuSpec:
    """Parse TOML text into a GpuSpec; `origin` names the file in error messages.

    Top-level keys are GpuSpec fields. Two tables are extra: `[sources]` (field -> where the
    value comes from; a list of strings is accepted too) and `[readings]` (MemoryReadings).
    Raises GpuFileError with a one-line message.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GpuFileError(f"{origin}: not valid TOML: {exc}") from None
    data["sources"] = _sources(data.get("sources", ()), origin)
    readings = data.pop("readings", None)
    try:
        if readings is not None:
            MemoryReadings.model_validate(readings)
    except ValidationError as exc:
        raise GpuFileError(f"{origin}: invalid [readings]: {_one_line(exc, MemoryReadings)}") from None
    try:
        spec = GpuSpec.model_validate(data)
    except ValidationError as exc:
        raise GpuFileError(f"{origin}: invalid GPU spec: {_one_line(exc, GpuSpec)}") from None
    if not _ID_PATTERN.fullmatch(spec.id):
        raise GpuFileError(
            f"{origin}: id {spec.id!r} must be lowercase letters and digits joined by '-' (e.g. 'h100-sxm')"
        )
    return spec


def _sources(raw: Any, origin: str) -> tuple[str, ...]:
    """`[sources]` as GpuSpec stores it: one "field: source" string per entry."""
    if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        return tuple(raw)
    if not isinstance(raw, dict) or not all(isinstance(value, str) for value in raw.values()):
        raise GpuFileError(f"{origin}: sources must be a table of field = \"source\" strings or a list of strings")
    unknown = sorted(set(raw) - set(GpuSpec.model_fields))
    if unknown:
        raise GpuFileError(f"{origin}: sources names unknown fields {', '.join(unknown)}")
    return tuple(f"{field}: {source}" for field, source in raw.items())


def _one_line(exc: ValidationError, model: type[Spec]) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{field}: {message}")
    if any(error["type"] == "extra_forbidden" for error in exc.errors()):
        problems.append(f"accepted fields: {', '.join(model.model_fields)}")
    return "; ".join(problems)
