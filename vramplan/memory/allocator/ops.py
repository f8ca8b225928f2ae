"""The op list of an allocation sequence: tensor sizes, allocations and frees in order, and its live-byte peaks.

sequence.py builds one from the estimator's terms; replay.py runs it through the allocator model. A stretch built
once (one decoder layer's forward or backward) can be recorded as a Template and appended again with fresh tensor
ids (Sequence.repeat): the same ops the builder would append, without running it again.
"""

from __future__ import annotations

from bisect import bisect_left
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
    #: (op index, template) of each repeated stretch (Sequence.repeat): live_peaks counts it by its excursion
    repeats: list[tuple[int, Template]] = field(default_factory=list, compare=False, repr=False)
    #: the CUDA stream (1, 2, ...) of each tensor allocated off the default one (alloc_on); empty: one stream
    streams: dict[int, int] = field(default_factory=dict)
    #: the cuBLAS workspaces' tensor ids (forward thread's, autograd thread's) where they are the only allocations the
    #: GPU's workspace size decides (simulated.rank_sequence then reuses the sequence for the other size); empty: unknown
    workspace: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def alloc_on(self, nbytes: int, stream: int) -> int:
        """alloc() on a side stream (DeepSpeed's reduction stream): its block comes from, and goes back to, that
        stream's cached blocks only (CachingAllocator.malloc's stream)."""
        i = self.alloc(nbytes)
        if stream:
            self.streams[i] = stream
        return i

    def alloc(self, nbytes: int) -> int:
        i = len(self.sizes)
        self.sizes.append(nbytes)
        if nbytes > 0:
            self.ops.append(i)
        return i

    def alloc_all(self, sizes: list[int]) -> range:
        """alloc() of each of `sizes` in order: their ids."""
        first = len(self.sizes)
        self.sizes += sizes
        self.ops += [i for i, nbytes in enumerate(sizes, first) if nbytes > 0]
        return range(first, len(self.sizes))

    def free(self, *ids: int) -> None:
        sizes, ops = self.sizes, self.ops
        for i in ids:
            if sizes[i] > 0:
                ops.append(~i)

    def replace_all(self, sizes: list[int], old: list[int]) -> range:
        """alloc(sizes[k]) then free(old[k]), for each k in order (each tensor replaced by a copy): the copies' ids."""
        first = len(self.sizes)
        self.sizes += sizes
        known, ops = self.sizes, self.ops
        for i, j in zip(range(first, len(known)), old, strict=True):
            if known[i] > 0:
                ops.append(i)
            if known[j] > 0:
                ops.append(~j)
        return range(first, len(known))

    def empty_cache(self) -> None:
        """torch.cuda.empty_cache(): release every cached segment that holds no live block."""
        self.ops.append(EMPTY_CACHE)

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.ops)

    def since(self) -> tuple[int, int]:
        """Where a stretch to record begins: (next tensor id, next op index)."""
        return len(self.sizes), len(self.ops)

    def template(self, since: tuple[int, int], inputs: list[int], outputs: tuple[list[int], ...]) -> Template | None:
        """The stretch from `since` to now as a Template, or None when it cannot be repeated: it empties the cache,
        frees a tensor made before it that is not one of `inputs` (distinct ids), or `outputs` (lists of ids it
        returns) hold a tensor it did not make."""
        first_id, first_op = since
        slot = {i: j for j, i in enumerate(inputs)}
        stretch = self.ops[first_op:]
        if len(slot) != len(inputs) or any(i < first_id for out in outputs for i in out) or EMPTY_CACHE in stretch:
            return None
        # a tensor of the stretch by its id relative to the first (allocations are all of its own tensors), a free of
        # a tensor made before it (~i >= ~first_id, so op + first_id >= 0) by 0, at the input's place
        ops = [op - first_id if op >= 0 else op + first_id for op in stretch]
        input_at = [(n, slot.get(~op)) for n, op in enumerate(stretch) if op < 0 and ~op < first_id]
        if any(j is None for _, j in input_at):
            return None
        for n, _ in input_at:
            ops[n] = 0
        sizes = self.sizes
        live = list(accumulate([sizes[op] if op >= 0 else -sizes[~op] for op in stretch], initial=0))
        return Template(
            sizes=sizes[first_id:],
            ops=ops,
            input_at=input_at,
            input_sizes=[sizes[i] for i in inputs],
            outputs=tuple([i - first_id for i in out] for out in outputs),
            net_bytes=live[-1],
            peak_bytes=max(live),
        )

    def repeat(self, template: Template, inputs: list[int]) -> tuple[list[int], ...] | None:
        """Append `template`'s ops again, its tensors with fresh ids and its inputs' frees those of `inputs`; its
        outputs with the new ids. None (nothing appended) when the inputs' sizes differ from the recorded ones (a free
        of an empty tensor is no op, so the ops would differ)."""
        if [self.sizes[i] for i in inputs] != template.input_sizes:
            return None
        base = len(self.sizes)
        self.repeats.append((len(self.ops), template))
        self.sizes += template.sizes
        ops = [op + base if op >= 0 else op - base for op in template.ops]
        for n, j in template.input_at:
            ops[n] = ~inputs[j]
        self.ops += ops
        return tuple([i + base for i in out] for out in template.outputs)

    def live_peak(self) -> int:
        """The most bytes alive at once (un-rounded request sizes)."""
        return live_peaks(self, [])[0]


@dataclass(frozen=True)
class Template:
    """A recorded stretch of ops (Sequence.template): its tensors' sizes, its ops with tensor ids counted from its
    first tensor (0 where an input is freed), where it frees its inputs (op index, input index), the inputs' sizes
    when recorded, and the ids (relative) of what it returns."""

    sizes: list[int]
    ops: list[int]
    input_at: list[tuple[int, int]]
    input_sizes: list[int]
    outputs: tuple[list[int], ...]
    #: the live bytes it adds, and the most it adds at any of its ops (0 if it never adds any)
    net_bytes: int = 0
    peak_bytes: int = 0


class Repeats:
    """The last stretch recorded per kind of decoder layer, to append again for a layer like it."""

    def __init__(self, seq: Sequence, enabled: bool = True):
        self.seq = seq
        #: kind -> (what the recorded layer's ops are made from, its Template); None: every layer built anew
        self.templates: dict[tuple, tuple[tuple, Template]] | None = {} if enabled else None

    def __call__(self, kind: tuple, made_of: tuple, inputs: list[int], build):
        """What build() returns (lists of the ids it made) once it has appended a decoder layer's ops; a layer made of
        the same (`made_of`: the per-layer lists its ops come from) as the last one recorded of its `kind`, with
        inputs (the tensors it frees that it did not make) of the same sizes, gets that layer's ops again with fresh
        ids instead (Sequence.repeat): what build() would append (tests/test_allocator_sequence_build.py: every
        shipped run's setup and a grid, against the sequence built layer by layer)."""
        if self.templates is None:
            return build()
        last = self.templates.get(kind)
        if last is not None and last[0] == made_of:
            out = self.seq.repeat(last[1], inputs)
            if out is not None:
                return out
        since = self.seq.since()
        out = build()
        template = self.seq.template(since, inputs, out)
        if template is not None:
            self.templates[kind] = (made_of, template)
        return out


def live_peaks(seq: Sequence, ranges: list[tuple[int, int]]) -> tuple[int, list[int]]:
    """The most bytes alive at once over `seq` (at least 0), and within each of `ranges` (op index ranges [start, end),
    in order, apart), counting the bytes alive before a range's first op. As max(live_bytes(seq)) over the same ops, but
    a repeated stretch (Sequence.repeat) that lies within one piece is counted by its template's excursion, not op by
    op."""
    ops, sizes = seq.ops, seq.sizes
    starts = [at for at, _ in seq.repeats]
    live = peak = 0

    def walk(a: int, b: int) -> int | None:
        """Advance `live` over ops [a, b); the most live bytes after one of them (None if none)."""
        nonlocal live
        most = None
        j = bisect_left(starts, a)
        while a < b:
            at, template = seq.repeats[j] if j < len(starts) else (b, None)
            if template is not None and at + len(template.ops) > b:  # a repeat that crosses b: op by op
                at, template = b, None
            at = min(at, b)
            if at > a:  # plain ops
                deltas = [sizes[op] if op >= 0 else -sizes[~op] for op in ops[a:at] if op != EMPTY_CACHE]
                if deltas:
                    values = list(accumulate(deltas, initial=live))
                    top = max(values[1:])
                    most, live = top if most is None or top > most else most, values[-1]
            if template is not None:
                top = live + template.peak_bytes
                most, live = top if most is None or top > most else most, live + template.net_bytes
                a = at + len(template.ops)
            else:
                a = at
            j += 1
        return most

    within = []
    pos = 0
    for start, end in ranges:
        top = walk(pos, start)
        peak = max(peak, top or 0)
        before = live
        top = walk(start, end)
        peak = max(peak, top or 0)
        within.append(max(before, 0 if top is None else top))
        pos = end
    peak = max(peak, walk(pos, len(ops)) or 0)
    return peak, within


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


def live_peaks_by_stretch(seq: Sequence) -> dict[str, int]:
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
