"""GPU catalog: one TOML per SKU in `gpus/` (each number with its source), parsed into GpuSpec.

The catalog is data read by the same parser as a user's own GPU file (`load_gpu_file`).
"""

from .catalog import list_gpus, load_catalog
from .lookup import CUDA_TOTAL_TOLERANCE, find_gpu, match_cuda_name, normalize_name
from .parse import GpuFileError, MemoryReadings, load_gpu_file, parse_gpu_toml

__all__ = [
    "CUDA_TOTAL_TOLERANCE",
    "GpuFileError",
    "MemoryReadings",
    "find_gpu",
    "list_gpus",
    "load_catalog",
    "load_gpu_file",
    "match_cuda_name",
    "normalize_name",
    "parse_gpu_toml",
]
