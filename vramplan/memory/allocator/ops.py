"""The op list of an allocation sequence: tensor sizes, allocations and frees in order, and its live-byte peaks.

sequence.py builds one from the estimator's terms; replay.py runs it through the allocator model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from operator import neg

#: the op that stands for torch.cuda.empty_cache() in Sequence.ops
EMPTY_CACHE = -(2**62)


@dataclass
class Sequence:
    """sizes[i]: bytes of tensor i; ops: i >= 0 allocates tensor i, ~i (< 0) frees it."""

    sizes: list[int] = field(default_factory=list)
    ops: list[int] = field(default_factory=list)
    #: op index where each named stretch begins ("load", "step0.forward", ...)
    marks: dict[str, int] = field(default_factory=dict)

    def alloc(self, nbytes: int) -> int:
        i = len(self.sizes)
        self.sizes.append(nbytes)
        if nbytes > 0:
            self.ops.append(i)
        return i

    def free(self, *ids: int) -> None:
        for i in ids:
            if self.sizes[i] > 0:
                self.ops.append(~i)

    def empty_cache(self) -> None:
        """torch.cuda.empty_cache(): release every cached segment that holds no live block."""
        self.ops.append(EMPTY_CACHE)

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.ops)

    def live_peak(self) -> int:
        """The most bytes alive at once (un-rounded request sizes)."""
        return max(0, max(live_bytes(self), default=0))


def live_bytes(seq: Sequence) -> list[int]:
    """The bytes alive after each op of `seq` (un-rounded request sizes; empty_cache changes nothing).

    Summed in C (itertools.accumulate over the ops' signed sizes): ``signed[op]`` is ``sizes[op]`` for an
    allocation and, through Python's negative indices, ``-sizes[~op]`` for a free."""
    sizes, ops = seq.sizes, seq.ops
    signed = sizes + list(map(neg, reversed(sizes)))
    out: list[int] = []
    live = start = 0
    while True:
        try:
            end = ops.index(EMPTY_CACHE, start)
        except ValueError:
            end = len(ops)
        part = accumulate(map(signed.__getitem__, ops[start:end]), initial=live)
        next(part)  # the initial value
        out += part
        if end > start:
            live = out[-1]
        if end == len(ops):
            return out
        out.append(live)  # the empty_cache op
        start = end + 1


def live_peaks_by_stretch(seq: "Sequence") -> dict[str, int]:
    """The most live bytes in each stretch between marks ("step0.forward", "step1.backward", ...), as the
    trainer's MemoryProbe reports max_memory_allocated per phase window."""
    starts: dict[int, list[str]] = {}
    for name, at in seq.marks.items():
        starts.setdefault(at, []).append(name)
    peaks: dict[str, int] = {}
    live, cur, sizes = 0, "", seq.sizes
    for n, op in enumerate([*seq.ops, None]):
        for cur in starts.get(n, ()):
            peaks[cur] = live  # a stretch without allocations peaks at what it starts with
        if op is None:
            break
        if op >= 0:
            live += sizes[op]
            if live > peaks.get(cur, 0):
                peaks[cur] = live
        elif op != EMPTY_CACHE:
            live -= sizes[~op]
    return peaks
