"""Replay a caching-allocator history (``vramplan measure --memory-snapshot``) and say what was stranded.

    python scripts/allocator_replay.py SNAPSHOT.pickle [more ...] [--json OUT.json] [--events DIR]

For each snapshot, from its trace of alloc / free_completed / segment_alloc / segment_free events:

* the peak of reserved bytes, the allocated bytes at that moment, and the free (cached but unused)
  bytes by segment, with the largest free gap in each: this is the reserved - allocated gap the
  memory model has to predict;
* every cudaMalloc (segment_alloc) with the request that caused it, how many free bytes the pool held
  at that moment (more than the request: the request was stranded by fragmentation) and the
  innermost Python frames of the request (which phase of the step asked).

The pickle holds only Python builtins (dicts, lists, strings, ints): no torch needed to read it.
``--events DIR`` also writes each trace as a compact event list (``DIR/<name>.events.json.gz``: the
``Sequence`` format of ``vramplan.memory.allocator`` -- request sizes, alloc/free ops, an empty-cache op where
the allocator released segments -- plus the CUDA stream of every allocation not on the first stream and the
recorded peaks), small enough to ship as test data and to replay through the allocator model, stream by stream,
without torch or the pickle (``scripts/trace_replay_check.py``). Files exported before streams were (every one
shipped up to the DeepSpeed histories of 2026-12-02) have no ``alloc_streams`` and replay on one stream.
Segments that existed before recording started are unknown to the trace; reserved and allocated
are counted from the trace alone, so they start at zero when recording starts.
"""

from __future__ import annotations

import argparse
import bisect
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

MIB = 2**20
GIB = 2**30
#: frames from these paths say nothing about which phase of training asked for the memory
_BORING = ("torch/utils/_contextlib", "torch/nn/modules/module.py", "torch/_tensor.py", "torch/autograd/__init__",
           "torch/autograd/graph.py", "torch/_dynamo", "torch/overrides", "accelerate/utils/operations",
           "torch/utils/checkpoint.py", "torch/autograd/function.py", "torch/_ops.py")


@dataclass
class Segment:
    addr: int
    size: int
    blocks: dict[int, int] = field(default_factory=dict)  # live block addr -> size

    def live(self) -> int:
        return sum(self.blocks.values())

    def largest_gap(self) -> int:
        cursor, best = self.addr, 0
        for a in sorted(self.blocks):
            best = max(best, a - cursor)
            cursor = max(cursor, a + self.blocks[a])
        return max(best, self.addr + self.size - cursor)


@dataclass
class Malloc:
    index: int
    size: int
    reserved_after: int
    allocated: int
    free_before: int
    largest_gap_before: int
    frames: list[str]


def frames_of(event: dict, keep: int = 3) -> list[str]:
    out = []
    for f in event.get("frames") or []:
        name = f.get("filename", "")
        if not name or name.startswith("??") or any(b in name for b in _BORING) or name.endswith(".cpp"):
            continue
        out.append(f"{'/'.join(name.split('/')[-2:])}:{f.get('line')} {f.get('name')}")
        if len(out) >= keep:
            break
    return out


class Replay:
    def __init__(self) -> None:
        self.segments: dict[int, Segment] = {}
        self.starts: list[int] = []  # sorted segment start addresses
        self.reserved = 0
        self.allocated = 0
        self.peak_reserved = 0
        self.peak_allocated = 0
        self.at_peak: list[dict] = []
        self.allocated_at_peak = 0
        self.mallocs: list[Malloc] = []
        self._pending: dict | None = None

    def _segment_of(self, addr: int) -> Segment | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0:
            return None
        seg = self.segments[self.starts[i]]
        return seg if addr < seg.addr + seg.size else None

    def free_bytes(self) -> int:
        return self.reserved - self.allocated

    def largest_gap(self) -> int:
        return max((s.largest_gap() for s in self.segments.values()), default=0)

    def feed(self, i: int, e: dict) -> None:
        action, addr, size = e.get("action"), e.get("addr", 0), e.get("size", 0)
        if action in ("segment_alloc", "segment_map"):
            free_before, gap_before = self.free_bytes(), self.largest_gap()
            seg = self.segments.get(addr)
            if seg is None:
                seg = self.segments[addr] = Segment(addr, size)
                bisect.insort(self.starts, addr)
            else:
                seg.size += size
            self.reserved += size
            self._pending = {"index": i, "size": size, "free": free_before, "gap": gap_before, "frames": frames_of(e)}
        elif action in ("segment_free", "segment_unmap"):
            seg = self.segments.get(addr)
            if seg is not None:
                seg.size -= size
                if seg.size <= 0:
                    del self.segments[addr]
                    self.starts.remove(addr)
            self.reserved -= size
        elif action == "alloc":
            seg = self._segment_of(addr)
            if seg is not None:
                seg.blocks[addr] = size
            self.allocated += size
            self.peak_allocated = max(self.peak_allocated, self.allocated)
            if self._pending is not None:
                p, self._pending = self._pending, None
                self.mallocs.append(
                    Malloc(p["index"], size, self.reserved, self.allocated, p["free"], p["gap"],
                           p["frames"] or frames_of(e))
                )
        elif action == "free_completed":
            seg = self._segment_of(addr)
            if seg is not None:
                seg.blocks.pop(addr, None)
            self.allocated -= size
        # the moment of interest: reserved at its peak, and the most allocated while it stays there
        if self.reserved > self.peak_reserved or (
            self.reserved == self.peak_reserved and self.allocated > self.allocated_at_peak
        ):
            self.peak_reserved = self.reserved
            self.allocated_at_peak = self.allocated
            self.at_peak = [
                {"size": s.size, "live": s.live(), "largest_gap": s.largest_gap()} for s in self.segments.values()
            ]


def replayed(path: Path) -> tuple[list[dict], Replay]:
    """The snapshot's longest device trace and its replay."""
    with open(path, "rb") as fh:
        snap = pickle.load(fh)
    traces = snap.get("device_traces") or []
    trace = max(traces, key=len) if traces else []
    replay = Replay()
    for i, event in enumerate(trace):
        replay.feed(i, event)
    return trace, replay


def analyze(path: Path) -> dict:
    trace, replay = replayed(path)
    stranded = [s for s in replay.at_peak if s["size"] - s["live"] >= 16 * MIB]
    stranded.sort(key=lambda s: s["size"] - s["live"], reverse=True)
    fragmenting = [m for m in replay.mallocs if m.free_before >= m.size and m.size >= 16 * MIB]
    return {
        "snapshot": path.name,
        "events": len(trace),
        "peak_reserved": replay.peak_reserved,
        "allocated_at_peak_reserved": replay.allocated_at_peak,  # the most while at the peak
        "peak_allocated": replay.peak_allocated,
        "free_at_peak_reserved": replay.peak_reserved - replay.allocated_at_peak,
        "segments_at_peak": len(replay.at_peak),
        "stranded_segments": stranded[:12],
        "mallocs": [m.__dict__ for m in replay.mallocs if m.size >= 16 * MIB],
        "mallocs_despite_free": [m.__dict__ for m in fragmenting],
    }


#: Sequence.ops code for torch.cuda.empty_cache() (vramplan.memory.allocator.sequence.EMPTY_CACHE)
EMPTY_CACHE = -(2**62)


def compact_events(trace: list[dict]) -> dict:
    """alloc / free_completed as Sequence sizes and ops (an alloc of address A is freed by the next free of A);
    a run of segment_free / segment_unmap events is one EMPTY_CACHE op (the allocator only releases segments on
    empty_cache or when a cudaMalloc fails).

    Streams: every trace event carries the CUDA stream it was recorded with (``trace_entry[stream_s] =
    int64_t(te.stream_)`` in torch/csrc/cuda/Module.cpp's memory snapshot). In CUDACachingAllocator.cpp (pytorch
    at 001074d25084) ``alloc_found_block`` records ALLOC with ``block->stream``, the stream malloc was called
    with; ``alloc_block`` makes the new segment ``new Block(p.device(), p.stream(), ...)`` and records
    SEGMENT_ALLOC with ``p.stream()``: a segment belongs to the stream of the request that made it; and
    ``get_free_block`` returns no block of another stream (``(*it)->stream != p.stream()``: return false). So
    ``alloc_streams`` keeps each allocation's stream, numbered in order of first allocation (0: the stream of the
    first allocation, normally the compute stream; 1, 2, ...: side streams such as DeepSpeed's reduction and
    all-gather streams), as ``[tensor index, stream]`` pairs for the allocations not on stream 0 (a one-stream
    trace: ``[]``); ``streams`` counts the streams.

    Frees: ``free`` records FREE_REQUESTED, and when the block was used on other streams (``recordStream`` put
    them in ``block->stream_uses``) only records events (``insert_events``); the block goes back to its pool in
    ``free_block``, which records FREE_COMPLETED (with ``block->stream``: the block's own stream, whose pool it
    returns to), once those events have completed (``process_events`` at the start of a later malloc,
    ``synchronize_and_free_events`` before ``release_cached_blocks`` frees segments); without other-stream uses
    ``free`` calls ``free_block`` at once. A free is therefore placed at its free_completed event, and
    free_requested is ignored."""
    sizes: list[int] = []
    ops: list[int] = []
    live: dict[int, int] = {}
    #: the trace's streams (a cudaStream_t as an integer) -> 0, 1, ... in order of their first allocation
    stream_ids: dict[int, int] = {}
    alloc_streams: list[list[int]] = []
    released = False
    reserved = 0
    #: [number of ops so far, reserved bytes after, the segment's address] at every segment event: where a replay
    #: first diverges, and the addresses cudaMalloc chose (a replay with them is exact: trace_replay_check.py)
    segments: list[list[int]] = []
    for e in trace:
        action = e.get("action")
        if action in ("segment_alloc", "segment_map"):
            reserved += int(e.get("size", 0))
            segments.append([len(ops), reserved, int(e.get("addr", 0))])
        elif action in ("segment_free", "segment_unmap"):
            reserved -= int(e.get("size", 0))
            segments.append([len(ops), reserved, int(e.get("addr", 0))])
        if action == "alloc":
            stream = stream_ids.setdefault(e.get("stream", 0), len(stream_ids))
            if stream:
                alloc_streams.append([len(sizes), stream])
            live[e["addr"]] = len(sizes)
            ops.append(len(sizes))
            sizes.append(int(e.get("size", 0)))
            released = False
        elif action == "free_completed":
            i = live.pop(e.get("addr"), None)
            if i is not None:
                ops.append(~i)
            released = False
        elif action in ("segment_free", "segment_unmap"):
            if not released:
                ops.append(EMPTY_CACHE)
            released = True
    # expandable segments map and unmap pages (segment_map / segment_unmap) instead of cudaMalloc / cudaFree
    expandable = any(e.get("action") == "segment_map" for e in trace)
    return {"sizes": sizes, "ops": ops, "streams": len(stream_ids), "alloc_streams": alloc_streams,
            "unfreed_at_end": len(live), "segments": segments, "expandable_segments": expandable}  # fmt: skip


def write_events(path: Path, out_dir: Path) -> Path:
    import gzip

    trace, replay = replayed(path)
    doc = compact_events(trace)
    doc["recorded"] = {
        "events": len(trace),
        "peak_reserved": replay.peak_reserved,
        "peak_allocated": replay.peak_allocated,
        "allocated_at_peak_reserved": replay.allocated_at_peak,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (path.name.removesuffix(".pickle") + ".events.json.gz")
    with gzip.open(target, "wt") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    return target


#: allocations at least this large keep their frames in write_frames' file
FRAMES_MIN_BYTES = 1 * MIB


def write_frames(path: Path, out_dir: Path, keep: int = 4) -> Path:
    """The innermost frames of every allocation of at least FRAMES_MIN_BYTES, as ``DIR/<name>.frames.json.gz``:
    ``{"frames": [distinct frame strings], "allocs": [[tensor index (as in the events file), frame string index]]}``
    (which call made each tensor, for reading a history without its pickle)."""
    import gzip

    trace, _ = replayed(path)
    names: dict[str, int] = {}
    allocs: list[list[int]] = []
    index = 0
    for e in trace:
        if e.get("action") != "alloc":
            continue
        if int(e.get("size", 0)) >= FRAMES_MIN_BYTES:
            where = " <- ".join(frames_of(e, keep))
            allocs.append([index, names.setdefault(where, len(names))])
        index += 1
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (path.name.removesuffix(".pickle") + ".frames.json.gz")
    with gzip.open(target, "wt") as fh:
        json.dump({"frames": list(names), "allocs": allocs}, fh, separators=(",", ":"))
    return target


def report(doc: dict) -> str:
    g = lambda b: f"{b / GIB:.3f}"  # noqa: E731
    lines = [
        f"== {doc['snapshot']} ({doc['events']} events)",
        f"peak reserved {g(doc['peak_reserved'])} GiB; allocated then {g(doc['allocated_at_peak_reserved'])}; "
        f"free then {g(doc['free_at_peak_reserved'])}; peak allocated {g(doc['peak_allocated'])} GiB; "
        f"{doc['segments_at_peak']} segments",
        "largest free space by segment at peak reserved (size / live / largest gap, GiB):",
    ]
    for s in doc["stranded_segments"]:
        lines.append(f"  {g(s['size'])} / {g(s['live'])} / {g(s['largest_gap'])}")
    lines.append("cudaMallocs >= 16 MiB (size, reserved after, allocated, free before, largest gap before; frames):")
    for m in doc["mallocs"]:
        flag = " *stranded*" if m["free_before"] >= m["size"] else ""
        lines.append(
            f"  #{m['index']:>7} {g(m['size'])} -> res {g(m['reserved_after'])} al {g(m['allocated'])} "
            f"free {g(m['free_before'])} gap {g(m['largest_gap_before'])}{flag} | {' <- '.join(m['frames'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("snapshots", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write every analysis as one JSON file")
    parser.add_argument("--events", type=Path, help="write each trace as DIR/<name>.events.json.gz and report nothing")
    parser.add_argument("--frames", type=Path, help="with --events, also write DIR/<name>.frames.json.gz (write_frames)")
    args = parser.parse_args(argv)
    docs = []
    for path in args.snapshots:
        try:
            if args.events:
                print(write_events(path, args.events), flush=True)
                if args.frames:
                    print(write_frames(path, args.frames), flush=True)
                continue
            doc = analyze(path)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            print(f"{path}: cannot read the snapshot ({exc})", file=sys.stderr)
            return 2
        docs.append(doc)
        print(report(doc), flush=True)
    if args.json:
        args.json.write_text(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
