"""Find a catalog GPU by a name a person typed, or by the device name torch reports."""

import difflib
import re
from functools import lru_cache
from pathlib import Path

from vramplan.errors import UnknownGpuError
from vramplan.specs.gpu import GpuSpec

from .catalog import _catalog, catalog_entry
from .parse import GpuFileError, load_gpu_file

#: spaces, underscores and hyphens are interchangeable (and optional) in names
_SEPARATORS = re.compile(r"[\s_\-]+")
#: a memory-size token such as "80gb" also answers to its number ("h100-80")
_MEMORY_TOKEN = re.compile(r"(\d+)gb")
#: one SKU's CUDA totals spread <= 2% across drivers/OS (RTX 4090: 24081-24564 MiB, gpu_specs.md);
#: memory variants sharing a name differ by >= 40% (A100 40 vs 80 GB)
CUDA_TOTAL_TOLERANCE = 0.05
#: how many close ids an "unknown GPU" message suggests
_SUGGESTIONS = 3


def normalize_name(name: str) -> str:
    """Lowercase with spaces, underscores and hyphens removed: "RTX 4090" -> "rtx4090"."""
    return _SEPARATORS.sub("", name.strip().lower())


def find_gpu(name: str) -> GpuSpec:
    """The GPU a user means by `name`; a name ending in `.toml` is read as a GPU file.

    Matches, case-insensitively and ignoring spaces/underscores/hyphens: the id, an alias, the
    name or the CUDA device name. Otherwise every word of `name` must be a word of exactly one
    SKU's names ("a6000", "h100 pcie", "sxm" also matching "sxm4").
    Raises UnknownGpuError: "ambiguous GPU ..." listing the candidates when several SKUs match,
    "unknown GPU ..." with the closest ids when none does.
    """
    if name.strip().lower().endswith(".toml"):
        return load_gpu_file(Path(name.strip()))
    by_id = catalog_entry(name.strip().lower())
    if by_id is not None:
        return by_id
    catalog = _catalog()
    key = normalize_name(name)
    if not key:
        raise UnknownGpuError("empty GPU name; `vramplan gpus` lists the catalog")
    exact = _exact_index().get(key)
    if exact is not None:
        return catalog[exact]
    words = _words(name)
    candidates = sorted(gpu_id for gpu_id, gpu_words in _word_index().items() if _all_match(words, gpu_words))
    if len(candidates) == 1:
        return catalog[candidates[0]]
    if candidates:
        raise UnknownGpuError(f"ambiguous GPU {name!r}: did you mean {', '.join(candidates)}?")
    raise UnknownGpuError(_unknown_message(name, key))


def match_cuda_name(device_name: str, total_memory_bytes: int | None = None) -> GpuSpec | None:
    """The catalog entry for a measured device (`torch.cuda.get_device_name()`), or None.

    Only exact names count (case and separators aside): a MIG slice or an unlisted card gives
    None, never a neighbour. When `total_memory_bytes` (torch total_memory) is given it must lie
    within CUDA_TOTAL_TOLERANCE of the catalog's memory_bytes, else None.
    """
    gpu_id = _exact_index().get(normalize_name(device_name))
    if gpu_id is None:
        return None
    spec = _catalog()[gpu_id]
    if total_memory_bytes is not None:
        if abs(total_memory_bytes - spec.memory_bytes) > CUDA_TOTAL_TOLERANCE * spec.memory_bytes:
            return None
    return spec


def _names(spec: GpuSpec) -> list[str]:
    return [spec.id, spec.name, *spec.aliases, *([spec.cuda_device_name] if spec.cuda_device_name else [])]


@lru_cache(maxsize=1)
def _exact_index() -> dict[str, str]:
    """Normalized name -> id; a name claimed by two SKUs is a catalog error."""
    index: dict[str, str] = {}
    for spec in _catalog().values():
        for name in _names(spec):
            key = normalize_name(name)
            owner = index.setdefault(key, spec.id)
            if owner != spec.id:
                raise GpuFileError(f"gpu_catalog: name {name!r} is claimed by both {owner} and {spec.id}")
    return index


@lru_cache(maxsize=1)
def _word_index() -> dict[str, frozenset[str]]:
    """id -> every word of all its names."""
    return {spec.id: frozenset(w for name in _names(spec) for w in _words(name)) for spec in _catalog().values()}


def _words(name: str) -> set[str]:
    words = {word for word in _SEPARATORS.split(name.strip().lower()) if word}
    return words | {match.group(1) for word in words if (match := _MEMORY_TOKEN.fullmatch(word))}


def _all_match(query_words: set[str], gpu_words: frozenset[str]) -> bool:
    return all(any(_word_matches(q, w) for w in gpu_words) for q in query_words)


def _word_matches(query: str, word: str) -> bool:
    """Equal, or the query lacks only a version number: "sxm" ~ "sxm4" (but "l40" !~ "l40s")."""
    if query == word:
        return True
    rest = word[len(query) :]
    return query[-1].isalpha() and word.startswith(query) and rest.isdigit()


def _unknown_message(name: str, key: str) -> str:
    index = _exact_index()
    close = difflib.get_close_matches(key, list(index), n=4 * _SUGGESTIONS, cutoff=0.6)
    ids = list(dict.fromkeys(index[match] for match in close))[:_SUGGESTIONS]
    hint = f": closest ids {', '.join(ids)};" if ids else ";"
    return f"unknown GPU {name!r}{hint} `vramplan gpus` lists all"
