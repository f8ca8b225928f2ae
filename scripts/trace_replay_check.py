#!/usr/bin/env python3
"""Replay recorded allocator histories through the caching-allocator model and compare the reserved peaks.

    python scripts/trace_replay_check.py [docs/allocator_traces/*.events.json.gz]
    python scripts/trace_replay_check.py --predicted [...]   # each history against its run's predicted sequence

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
from vramplan.memory.allocator.replay import apply_op, replay  # noqa: E402

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


def recorded_segment_addresses(doc: dict) -> list[int]:
    """The addresses of the segments a history's cudaMallocs made, in order (its segment timeline: ops so far,
    reserved after, address; histories recorded before addresses were kept have (ops, reserved) entries only)."""
    timeline = doc.get("segments") or []
    return [e[2] for e, before in zip(timeline, [0, *(e[1] for e in timeline)]) if len(e) > 2 and e[1] > before]


def replay_with_recorded_addresses(doc: dict) -> CachingAllocator:
    """The history's requests replayed with its own segment addresses: the allocator model after the last op."""
    seq = with_pre_recording_tensor(doc["sizes"], doc["ops"])
    a = CachingAllocator(total_memory_bytes=150 * GIB, addresses=RecordedAddresses(recorded_segment_addresses(doc)))
    blocks = [None] * len(seq.sizes)
    for op in seq.ops:
        apply_op(a, blocks, seq.sizes, op)
    return a


def first_divergence(doc: dict, recorded_addresses: bool = False) -> int | None:
    """The first op of the trace after which the model's reserved bytes differ from the trace's own segment
    timeline (doc["segments"]: ops so far, reserved after, address), or None if they never do.
    ``recorded_addresses``: give the model the trace's own segment addresses instead of addresses.py's."""
    timeline = doc.get("segments") or []
    seq = with_pre_recording_tensor(doc["sizes"], doc["ops"])
    a = CachingAllocator(total_memory_bytes=150 * GIB,
                         addresses=RecordedAddresses(recorded_segment_addresses(doc)) if recorded_addresses else None)
    blocks = [None] * len(seq.sizes)
    recorded, t = 0, 0
    for n, op in enumerate(seq.ops):
        try:
            apply_op(a, blocks, seq.sizes, op)
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


def segments_made(seq: Sequence, stop: int | None = None, min_bytes: int = 20 * 1024**2) -> tuple[list[int], int]:
    """The sizes (MiB) of the segments of at least min_bytes a replay of seq's first `stop` ops creates, in order,
    and its reserved peak."""
    a = CachingAllocator(total_memory_bytes=150 * GIB)
    blocks, out = [None] * len(seq.sizes), []
    for op in seq.ops[:stop]:
        before = a.reserved
        apply_op(a, blocks, seq.sizes, op)
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
    a, peak_a = segments_made(rec, stop)
    b, peak_b = segments_made(pred)
    return {"trace": path.name.removesuffix(".events.json.gz"), "in_order": _common_subsequence(a, b) / max(len(a), len(b)),
            "peak_error": peak_b / peak_a - 1, "recorded_segments": len(a), "predicted_segments": len(b)}  # fmt: skip


def main_predicted(paths: list[Path]) -> int:
    from vramplan.runs import load_runs, shipped_runs_dir

    by_trace = {}
    for r in load_runs([shipped_runs_dir()]):
        name = (r.extra or {}).get("memory_snapshot", "").removesuffix(".pickle")
        # one GPU, a setup the sequence covers (no Unsloth), the default allocator settings, one micro-step
        if name and r.setup.stack != "unsloth" and not r.setup.expandable_segments and r.setup.grad_accum == 1:
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
              + (f"  reserved first differs after op {r['first_divergence_op']}" if r["first_divergence_op"] is not None else ""))
    errs = [abs(r["error"]) for r in rows]
    if errs:
        print(f"{len(rows)} traces: median |error| {statistics.median(errs) * 100:.2f}%, worst {max(errs) * 100:.2f}%, "
              f"within 0.5 %: {sum(e <= 0.005 for e in errs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
