#!/usr/bin/env python3
"""Replay recorded allocator histories through the caching-allocator model and compare the reserved peaks.

    python scripts/trace_replay_check.py [docs/allocator_traces/*.events.json.gz]
    python scripts/trace_replay_check.py --predicted [...]   # each history against its run's predicted sequence

Each file is a compact event list written by ``scripts/allocator_replay.py --events`` from a
``--memory-snapshot`` history (request sizes, alloc/free order, empty-cache points, the stream of each
allocation off the first stream). The model (``vramplan.memory.allocator``) gets exactly those requests, each on
its recorded stream (``CachingAllocator.malloc(size, stream)``: a cached block serves only its own stream, so
DeepSpeed's side-stream buffers cannot be reused by the compute stream); its reserved peak is compared with the
reserved peak counted from the trace's own segment events (issue 11, part 2: within 0.5 % on every run). Files
exported before streams were (no ``alloc_streams``; ``streams`` > 1 in the DeepSpeed histories of 2026-12-02)
replay on one stream, as before, and say so.

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
from vramplan.memory.allocator.replay import ReplayResult, replay  # noqa: E402

GIB = 2**30
TRACES = ROOT / "docs" / "allocator_traces"
#: start_cuda's tensor (``torch.empty(1)``, fp32) and the small-pool segment it leaves cached (kSmallBuffer)
PRE_RECORDING_TENSOR_BYTES = 4
PRE_RECORDING_SEGMENT_BYTES = 2 * 1024**2


def with_pre_recording_tensor(sizes: list[int], ops: list[int]) -> Sequence:
    """The trace's requests after start_cuda's tensor, allocated and freed before recording began."""
    shifted = [op if op == EMPTY_CACHE else (op + 1 if op >= 0 else op - 1) for op in ops]
    return Sequence(sizes=[PRE_RECORDING_TENSOR_BYTES, *sizes], ops=[0, ~0, *shifted])


def recorded_streams(doc: dict) -> dict[int, int]:
    """The stream (1, 2, ...) of each of the history's allocations off its first stream, by tensor index in
    with_pre_recording_tensor's numbering (start_cuda's tensor first, on stream 0): allocator_replay.compact_events's
    ``alloc_streams``. Empty for a one-stream history and for files exported before streams were, which replay on
    one stream as they always did."""
    return {i + 1: stream for i, stream in doc.get("alloc_streams") or ()}


def apply_op_on_streams(allocator: CachingAllocator, blocks: list, sizes: list[int], streams: dict[int, int],
                        op: int) -> None:  # fmt: skip
    """replay.apply_op with tensor i allocated on stream ``streams.get(i, 0)``: best fit looks only at that stream's
    cached blocks and a new segment is that stream's (CUDACachingAllocator.cpp: get_free_block,
    ``(*it)->stream != p.stream()``; alloc_block, ``new Block(p.device(), p.stream(), ...)``); a free goes back to
    the pool of the block's own stream (CachingAllocator.free keys it by ``block.stream``, as free_block does)."""
    if op >= 0:
        blocks[op] = allocator.malloc(sizes[op], streams.get(op, 0))
    elif op == EMPTY_CACHE:
        allocator.empty_cache()
    else:
        allocator.free(blocks[~op])


def replay_on_streams(seq: Sequence, streams: dict[int, int], *, expandable_segments: bool = False,
                      total_memory_bytes: int = 150 * GIB) -> ReplayResult:  # fmt: skip
    """replay.replay with each allocation on its recorded stream (apply_op_on_streams)."""
    a = CachingAllocator(expandable_segments=expandable_segments, total_memory_bytes=total_memory_bytes)
    blocks = [None] * len(seq.sizes)
    for op in seq.ops:
        apply_op_on_streams(a, blocks, seq.sizes, streams, op)
    alloc, free_bytes, largest = a.at_peak_reserved
    return ReplayResult(a.peak_reserved, alloc, free_bytes, largest, a.peak_allocated, a.num_segments)


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


def recorded_segment_addresses(doc: dict) -> list[int]:
    """The addresses of the segments a history's cudaMallocs made, in order (its segment timeline: ops so far,
    reserved after, address; histories recorded before addresses were kept have (ops, reserved) entries only)."""
    timeline = doc.get("segments") or []
    return [e[2] for e, before in zip(timeline, [0, *(e[1] for e in timeline)]) if len(e) > 2 and e[1] > before]


def replay_with_recorded_addresses(doc: dict) -> CachingAllocator:
    """The history's requests replayed on their streams with its own segment addresses: the allocator model after
    the last op."""
    seq, streams = with_pre_recording_tensor(doc["sizes"], doc["ops"]), recorded_streams(doc)
    a = CachingAllocator(total_memory_bytes=150 * GIB, addresses=RecordedAddresses(recorded_segment_addresses(doc)))
    blocks = [None] * len(seq.sizes)
    for op in seq.ops:
        apply_op_on_streams(a, blocks, seq.sizes, streams, op)
    return a


def first_divergence(doc: dict, recorded_addresses: bool = False) -> int | None:
    """The first op of the trace after which the model's reserved bytes differ from the trace's own segment
    timeline (doc["segments"]: ops so far, reserved after, address), or None if they never do.
    ``recorded_addresses``: give the model the trace's own segment addresses instead of addresses.py's."""
    timeline = doc.get("segments") or []
    seq, streams = with_pre_recording_tensor(doc["sizes"], doc["ops"]), recorded_streams(doc)
    a = CachingAllocator(total_memory_bytes=150 * GIB,
                         addresses=RecordedAddresses(recorded_segment_addresses(doc)) if recorded_addresses else None)
    blocks = [None] * len(seq.sizes)
    recorded, t = 0, 0
    for n, op in enumerate(seq.ops):
        try:
            apply_op_on_streams(a, blocks, seq.sizes, streams, op)
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
    seq, streams = with_pre_recording_tensor(doc["sizes"], doc["ops"]), recorded_streams(doc)
    if streams:
        result = replay_on_streams(seq, streams, expandable_segments=expandable)
    else:  # one stream, or a file exported before streams were: replay.py (its fast loop by default)
        result = replay(seq, total_memory_bytes=150 * GIB, expandable_segments=expandable)
    recorded = doc["recorded"]["peak_reserved"] + PRE_RECORDING_SEGMENT_BYTES
    return {
        "trace": path.name.removesuffix(".events.json.gz"),
        "recorded_reserved": recorded,
        "simulated_reserved": result.peak_reserved_bytes,
        "error": result.peak_reserved_bytes / recorded - 1,
        "recorded_allocated": doc["recorded"]["peak_allocated"],
        "simulated_allocated": result.peak_allocated_bytes,
        "streams": doc.get("streams", 1),
        # False: more than one stream, but exported before allocator_replay.py kept them (all on one stream here)
        "streams_replayed": "alloc_streams" in doc or doc.get("streams", 1) <= 1,
        # only for histories that keep their segment timeline (allocator_replay.py since 2026-12-01)
        "first_divergence_op": first_divergence(doc) if doc.get("segments") and not expandable else None,
    }


def segments_made(seq: Sequence, stop: int | None = None, min_bytes: int = 20 * 1024**2,
                  streams: dict[int, int] | None = None) -> tuple[list[int], int]:  # fmt: skip
    """The sizes (MiB) of the segments of at least min_bytes a replay of seq's first `stop` ops creates, in order,
    and its reserved peak (``streams``: tensor index -> stream, recorded_streams; None: all on stream 0)."""
    a = CachingAllocator(total_memory_bytes=150 * GIB)
    blocks, out, streams = [None] * len(seq.sizes), [], streams or {}
    for op in seq.ops[:stop]:
        before = a.reserved
        apply_op_on_streams(a, blocks, seq.sizes, streams, op)
        if a.reserved - before >= min_bytes:
            out.append((a.reserved - before) >> 20)
    return out, a.peak_reserved


def _common_subsequence(a: list[int], b: list[int]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def compare_predicted(path: Path, run) -> dict:
    """A history against the predicted sequence of its run's setup (vramplan.memory.allocator.sequence): the share of
    segments made in the same order (longest common subsequence of their sizes, over the longer list) and the predicted
    reserved peak over the recorded one, the history cut where it has made as many of the largest request of the
    sequence's step 1 as the sequence's two steps (the histories run more steps)."""
    from vramplan.estimator import CALIBRATED_DEFAULTS, _terms
    from vramplan.memory.allocator.sequence import training_sequence
    from vramplan.models import resolve_model

    doc = json.loads(gzip.decompress(path.read_bytes()))
    model = resolve_model(run.model_source or run.model)
    pred = training_sequence(model, run.setup, _terms(model, run.setup, None, dict(CALIBRATED_DEFAULTS)))
    largest = max(pred.sizes[op] for op in pred.ops[pred.marks["step1.forward"] :] if op >= 0)
    count = sum(1 for op in pred.ops if op >= 0 and pred.sizes[op] == largest)
    rec = with_pre_recording_tensor(doc["sizes"], doc["ops"])
    seen, stop = 0, len(rec.ops)
    for n, op in enumerate(rec.ops):
        if op >= 0 and rec.sizes[op] == largest:
            seen += 1
            if seen > count:
                stop = n
                break
    a, peak_a = segments_made(rec, stop, streams=recorded_streams(doc))
    b, peak_b = segments_made(pred)
    return {"trace": path.name.removesuffix(".events.json.gz"), "in_order": _common_subsequence(a, b) / max(len(a), len(b)),
            "peak_error": peak_b / peak_a - 1, "recorded_segments": len(a), "predicted_segments": len(b)}  # fmt: skip


def main_predicted(paths: list[Path]) -> int:
    from vramplan.runs import load_runs, shipped_runs_dir, single_gpu_run

    by_trace = {}
    for r in load_runs([shipped_runs_dir()]):
        name = (r.extra or {}).get("memory_snapshot", "").removesuffix(".pickle")
        # one GPU, a setup the sequence covers (no DeepSpeed), the default allocator settings, one micro-step
        if name and single_gpu_run(r) and not r.setup.expandable_segments and r.setup.grad_accum == 1:
            by_trace.setdefault(name, r)
    rows = [compare_predicted(p, by_trace[n]) for p in paths if (n := p.name.removesuffix(".events.json.gz")) in by_trace]
    for r in rows:
        print(f"{r['trace']:<30} segments in the recorded order {100 * r['in_order']:5.1f} %"
              f" ({r['recorded_segments']} recorded, {r['predicted_segments']} predicted)"
              f"  reserved peak {100 * r['peak_error']:+6.2f} %")
    print(f"{len(rows)} histories: segments in order {100 * statistics.mean(r['in_order'] for r in rows):.1f} % (mean), "
          f"reserved peak median |error| {100 * statistics.median(abs(r['peak_error']) for r in rows):.2f} %")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    predicted = "--predicted" in args
    args = [a for a in args if a != "--predicted"]
    paths = [Path(a) for a in args] or sorted(TRACES.glob("*.events.json.gz"))
    if predicted:
        return main_predicted(paths)
    rows = [check(p) for p in paths]
    for r in rows:
        print(f"{r['trace']:<30} recorded {r['recorded_reserved'] / GIB:8.3f}  simulated {r['simulated_reserved'] / GIB:8.3f} GiB"
              f"  {r['error'] * 100:+6.2f}%  (allocated {r['recorded_allocated'] / GIB:.3f} / {r['simulated_allocated'] / GIB:.3f})"
              + (f"  reserved first differs after op {r['first_divergence_op']}" if r["first_divergence_op"] is not None else "")
              + ("" if r["streams"] <= 1 else f"  ({r['streams']} streams"
                 + ("" if r["streams_replayed"] else ", exported without them: replayed on one") + ")"))
    errs = [abs(r["error"]) for r in rows]
    if errs:
        print(f"{len(rows)} traces: median |error| {statistics.median(errs) * 100:.2f}%, worst {max(errs) * 100:.2f}%, "
              f"within 0.5 %: {sum(e <= 0.005 for e in errs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
