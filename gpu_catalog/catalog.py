"""The shipped catalog: every `gpus/*.toml` in this package, parsed once."""

from functools import lru_cache
from importlib.resources import files

from vramplan.specs.gpu import GpuSpec

from .parse import GpuFileError, parse_gpu_toml

#: package data folder holding one TOML per SKU (declared in pyproject's package-data)
_DATA_DIR = "gpus"


def load_catalog() -> dict[str, GpuSpec]:
    """All catalog GPUs by id. Parsed once per process; each call returns a fresh dict."""
    return dict(_catalog())


def list_gpus() -> list[GpuSpec]:
    """Catalog GPUs from smallest to largest memory, ties broken by id."""
    return sorted(_catalog().values(), key=lambda spec: (spec.memory_bytes, spec.id))


@lru_cache(maxsize=64)
def catalog_entry(gpu_id: str) -> GpuSpec | None:
    """The catalog GPU whose id is exactly `gpu_id`, reading only its own file (`vramplan estimate --gpu
    rtx-4090` does not parse the other 22); None when no such file. Same parser as the whole catalog."""
    if not gpu_id or "/" in gpu_id or "\\" in gpu_id or gpu_id.startswith("."):
        return None
    entry = files(__package__).joinpath(_DATA_DIR).joinpath(f"{gpu_id}.toml")
    if not entry.is_file():
        return None
    spec = parse_gpu_toml(entry.read_text(encoding="utf-8"), origin=f"gpu_catalog/{_DATA_DIR}/{gpu_id}.toml")
    return spec if spec.id == gpu_id else None


@lru_cache(maxsize=1)
def _catalog() -> dict[str, GpuSpec]:
    specs: dict[str, GpuSpec] = {}
    folder = files(__package__).joinpath(_DATA_DIR)
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".toml"):
            continue
        origin = f"gpu_catalog/{_DATA_DIR}/{entry.name}"
        spec = parse_gpu_toml(entry.read_text(encoding="utf-8"), origin=origin)
        if entry.name != f"{spec.id}.toml":
            raise GpuFileError(f"{origin}: file name must be the id, {spec.id}.toml")
        specs[spec.id] = spec
    return specs
