#!/usr/bin/env python3
"""Replay recorded allocator histories through the caching-allocator model and compare the reserved peaks.

    python scripts/trace_replay_check.py [docs/allocator_traces/*.events.json.gz]

Each file is a compact event list written by ``scripts/allocator_replay.py --events`` from a
``--memory-snapshot`` history (request sizes, alloc/free order, empty-cache points). The model
(``vramplan.memory.allocator``) gets exactly those requests; its reserved peak is compared with the
reserved peak counted from the trace's own segment events (issue 11, part 2: within 0.5 % on every run).

A trace starts when ``measure`` starts recording, after ``start_cuda`` (vramplan/trainer/cuda_start.py) made and
freed a 4-byte tensor: its 2 MiB small-pool segment stays cached, unseen by the trace. The replay starts from that
state (the tensor allocated and freed first) and its peak is compared with the trace's plus that segment, which is
the run's own ``max_memory_reserved()``: on every shipped history the run record's ``max_reserved_bytes`` is the
trace's peak + 2 MiB exactly (tests/test_allocator_traces.py).
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vramplan.memory.allocator.caching import CachingAllocator  # noqa: E402
from vramplan.memory.allocator.ops import EMPTY_CACHE, Sequence  # noqa: E402
from vramplan.memory.allocator.replay import replay  # noqa: E402

GIB = 2**30
TRACES = ROOT / "docs" / "allocator_traces"
#: start_cuda's tensor (``torch.empty(1)``, fp32) and the small-pool segment it leaves cached (kSmallBuffer)
PRE_RECORDING_TENSOR_BYTES = 4
PRE_RECORDING_SEGMENT_BYTES = 2 * 1024**2


def with_pre_recording_tensor(sizes: list[int], ops: list[int]) -> Sequence:
    """The trace's requests after start_cuda's tensor, allocated and freed before recording began."""
    shifted = [op if op == EMPTY_CACHE else (op + 1 if op >= 0 else op - 1) for op in ops]
    return Sequence(sizes=[PRE_RECORDING_TENSOR_BYTES, *sizes], ops=[0, ~0, *shifted])


class RecordedAddresses:
    """cudaMalloc's addresses as a history recorded them, handed out in order: a replay with them is exact when
    the model's rules are. start_cuda's segment, made before recording, gets one above all (where the 15 histories
    re-recorded with addresses had it)."""

    def __init__(self, addresses: list[int]):
        self._next = iter([2**48, *addresses])

    def take(self, nbytes: int) -> int:
        return next(self._next)  # StopIteration: the model made a segment the run did not

    def give_back(self, addr: int) -> None:
        pass


def first_divergence(doc: dict, recorded_addresses: bool = False) -> int | None:
    """The first op of the trace after which the model's reserved bytes differ from the trace's own segment
    timeline (doc["segments"]: ops so far, reserved after, address), or None if they never do.
    ``recorded_addresses``: give the model the trace's own segment addresses instead of addresses.py's."""
    timeline = doc.get("segments") or []
    seq = with_pre_recording_tensor(doc["sizes"], doc["ops"])
    # histories recorded before addresses were kept have (ops, reserved) entries only
    allocs = [e[2] for e, before in zip(timeline, [0, *(e[1] for e in timeline)]) if len(e) > 2 and e[1] > before]
    a = CachingAllocator(total_memory_bytes=150 * GIB, addresses=RecordedAddresses(allocs) if recorded_addresses else None)
    blocks = [None] * len(seq.sizes)
    recorded, t = 0, 0
    for n, op in enumerate(seq.ops):
        try:
            if op >= 0:
                blocks[op] = a.malloc(seq.sizes[op])
            elif op == EMPTY_CACHE:
                a.empty_cache()
            else:
                a.free(blocks[~op])
        except StopIteration:
            return n - 2
        k = n - 2  # the trace's op index (the pre-recording tensor's two ops first)
        while t < len(timeline) and timeline[t][0] <= k:
            recorded = timeline[t][1]
            t += 1
        if k >= 0 and a.reserved - PRE_RECORDING_SEGMENT_BYTES != recorded:
            return k
    return None


def check(path: Path) -> dict:
    doc = json.loads(gzip.decompress(path.read_bytes()))
    expandable = bool(doc.get("expandable_segments"))
    result = replay(with_pre_recording_tensor(doc["sizes"], doc["ops"]), total_memory_bytes=150 * GIB,
                    expandable_segments=expandable)  # fmt: skip
    recorded = doc["recorded"]["peak_reserved"] + PRE_RECORDING_SEGMENT_BYTES
    return {
        "trace": path.name.removesuffix(".events.json.gz"),
        "recorded_reserved": recorded,
        "simulated_reserved": result.peak_reserved_bytes,
        "error": result.peak_reserved_bytes / recorded - 1,
        "recorded_allocated": doc["recorded"]["peak_allocated"],
        "simulated_allocated": result.peak_allocated_bytes,
        "streams": doc.get("streams", 1),
        # only for histories that keep their segment timeline (allocator_replay.py since 2026-12-01)
        "first_divergence_op": first_divergence(doc) if doc.get("segments") and not expandable else None,
    }


def main(argv: list[str] | None = None) -> int:
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or sorted(TRACES.glob("*.events.json.gz"))
    rows = [check(p) for p in paths]
    for r in rows:
        print(f"{r['trace']:<30} recorded {r['recorded_reserved'] / GIB:8.3f}  simulated {r['simulated_reserved'] / GIB:8.3f} GiB"
              f"  {r['error'] * 100:+6.2f}%  (allocated {r['recorded_allocated'] / GIB:.3f} / {r['simulated_allocated'] / GIB:.3f})"
              + (f"  reserved first differs after op {r['first_divergence_op']}" if r["first_divergence_op"] is not None else ""))
    errs = [abs(r["error"]) for r in rows]
    if errs:
        print(f"{len(rows)} traces: median |error| {statistics.median(errs) * 100:.2f}%, worst {max(errs) * 100:.2f}%, "
              f"within 0.5 %: {sum(e <= 0.005 for e in errs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
