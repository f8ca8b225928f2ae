"""PyTorch's caching allocator: the closed-form rules (rules.py) and a model of the allocator (caching.py).

``from vramplan.memory.allocator import block_bytes`` keeps working: the rules are re-exported here.
"""

from .caching import AllocatorOOM, CachingAllocator, allocation_size, round_size
from .rules import (
    SEGMENT_ROUND_BYTES,
    SMALL_POOL_MAX_BYTES,
    block_bytes,
    reserved_from_allocated,
    steady_loss_reserved,
    tensors_bytes,
    workspace_bytes,
)

__all__ = [
    "AllocatorOOM",
    "CachingAllocator",
    "SEGMENT_ROUND_BYTES",
    "SMALL_POOL_MAX_BYTES",
    "allocation_size",
    "block_bytes",
    "reserved_from_allocated",
    "round_size",
    "steady_loss_reserved",
    "tensors_bytes",
    "workspace_bytes",
]
