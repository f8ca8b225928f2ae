"""PyTorch's caching allocator: the closed-form rules (rules.py) and a model of the allocator (caching.py,
with the predicted allocation sequence in sequence.py and its replay in replay.py / simulated.py).

``from vramplan.memory.allocator import block_bytes`` keeps working: the rules are re-exported here. The model's
names are loaded on first use, so the default estimate path does not import it.
"""

from .rules import (
    SEGMENT_ROUND_BYTES,
    SMALL_POOL_MAX_BYTES,
    block_bytes,
    reserved_from_allocated,
    steady_loss_reserved,
    tensors_bytes,
    workspace_bytes,
)

_CACHING = ("AllocatorOOM", "CachingAllocator", "allocation_size", "round_size")

__all__ = [
    *_CACHING,
    "SEGMENT_ROUND_BYTES",
    "SMALL_POOL_MAX_BYTES",
    "block_bytes",
    "reserved_from_allocated",
    "steady_loss_reserved",
    "tensors_bytes",
    "workspace_bytes",
]


def __getattr__(name: str):
    if name in _CACHING:
        from . import caching

        return getattr(caching, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
