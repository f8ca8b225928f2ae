"""Recorded allocator histories with side streams: exported stream by stream and replayed on each stream's pool.

The caching allocator never hands a cached block to another stream (get_free_block compares ``block->stream``),
so a history with DeepSpeed's reduction or all-gather streams replays low if every allocation is put on one
stream. scripts/allocator_replay.py keeps each allocation's stream (``alloc_streams``), and
scripts/trace_replay_check.py replays with ``CachingAllocator.malloc(size, stream)``.
"""

import gzip
import json
import pickle
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import allocator_replay  # noqa: E402
import trace_replay_check  # noqa: E402

from vramplan.memory.allocator.caching import CachingAllocator  # noqa: E402
from vramplan.memory.allocator.replay import replay  # noqa: E402

MIB = 2**20
#: streams as a snapshot records them (a cudaStream_t as an integer): compute and a side stream
COMPUTE, SIDE = 94_823_412_000_768, 94_823_455_113_216


def _event(action: str, addr: int, size: int, stream: int) -> dict:
    return {"action": action, "addr": addr, "size": size, "stream": stream}


def _two_stream_trace() -> list[dict]:
    """A 40 MiB bucket made and freed on the side stream; the next 40 MiB request on the compute stream cannot take
    it and makes a segment of its own (100 MiB reserved, not 60); the side stream's next bucket reuses its block."""
    x, a, b = 0x7F0000000000, 0x7F0002000000, 0x7F0006000000
    return [
        _event("segment_alloc", x, 20 * MIB, COMPUTE),
        _event("alloc", x, 4 * MIB, COMPUTE),
        _event("segment_alloc", a, 40 * MIB, SIDE),
        _event("alloc", a, 40 * MIB, SIDE),
        _event("free_requested", a, 40 * MIB, SIDE),
        _event("free_completed", a, 40 * MIB, SIDE),
        _event("segment_alloc", b, 40 * MIB, COMPUTE),
        _event("alloc", b, 40 * MIB, COMPUTE),
        _event("free_requested", b, 40 * MIB, COMPUTE),
        _event("free_completed", b, 40 * MIB, COMPUTE),
        _event("alloc", a, 40 * MIB, SIDE),
    ]


def _event_file(tmp_path: Path, trace: list[dict]) -> Path:
    snap = tmp_path / "run.pickle"
    snap.write_bytes(pickle.dumps({"device_traces": [trace]}))
    return allocator_replay.write_events(snap, tmp_path)


def _doc(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def test_the_export_keeps_the_stream_of_each_allocation_off_the_first_stream():
    doc = allocator_replay.compact_events(_two_stream_trace())
    assert doc["sizes"] == [4 * MIB, 40 * MIB, 40 * MIB, 40 * MIB]
    assert doc["ops"] == [0, 1, ~1, 2, ~2, 3]
    # the first stream seen is 0 and is left out; the side stream is 1 wherever it appears
    assert doc["streams"] == 2
    assert doc["alloc_streams"] == [[1, 1], [3, 1]]


def test_a_one_stream_trace_exports_no_stream_pairs():
    trace = [e for e in _two_stream_trace() if e["stream"] == COMPUTE]
    doc = allocator_replay.compact_events(trace)
    assert doc["streams"] == 1
    assert doc["alloc_streams"] == []


def test_a_free_delayed_by_record_stream_returns_its_block_when_completed():
    # the block was used on the side stream (recordStream): free() records free_requested and waits on an event;
    # a request in between cannot have the block, which goes back to its pool at free_completed (free_block)
    a, b = 0x7F0002000000, 0x7F0006000000
    trace = [
        _event("segment_alloc", a, 40 * MIB, COMPUTE),
        _event("alloc", a, 40 * MIB, COMPUTE),
        _event("free_requested", a, 40 * MIB, COMPUTE),
        _event("segment_alloc", b, 40 * MIB, COMPUTE),
        _event("alloc", b, 40 * MIB, COMPUTE),
        _event("free_completed", a, 40 * MIB, COMPUTE),
    ]
    doc = allocator_replay.compact_events(trace)
    assert doc["ops"] == [0, 1, ~0]


def test_a_block_freed_on_a_side_stream_does_not_serve_the_compute_stream(tmp_path):
    doc = _doc(_event_file(tmp_path, _two_stream_trace()))
    row = trace_replay_check.check(tmp_path / "run.events.json.gz")
    recorded = 100 * MIB + trace_replay_check.PRE_RECORDING_SEGMENT_BYTES
    assert row["recorded_reserved"] == recorded
    assert row["simulated_reserved"] == recorded
    assert row["streams"] == 2 and row["streams_replayed"]
    # on one stream the compute request takes the side stream's free 40 MiB block: 40 MiB short
    blind = replay(trace_replay_check.with_pre_recording_tensor(doc["sizes"], doc["ops"]))
    assert blind.peak_reserved_bytes == recorded - 40 * MIB


def test_the_replay_with_recorded_addresses_makes_each_segment_on_its_stream(tmp_path):
    doc = _doc(_event_file(tmp_path, _two_stream_trace()))
    # the model makes the three segments in the recorded order and follows the trace's reserved bytes at every op
    assert trace_replay_check.first_divergence(doc, recorded_addresses=True) is None
    assert trace_replay_check.first_divergence(doc) is None
    assert trace_replay_check.replay_with_recorded_addresses(doc).peak_reserved == (
        100 * MIB + trace_replay_check.PRE_RECORDING_SEGMENT_BYTES)
    # op by op: each request lands where the run put it, on its stream; the side stream's second bucket reuses
    # the block its first was freed to
    seq = trace_replay_check.with_pre_recording_tensor(doc["sizes"], doc["ops"])
    streams = trace_replay_check.recorded_streams(doc)
    addresses = trace_replay_check.RecordedAddresses(trace_replay_check.recorded_segment_addresses(doc))
    a = CachingAllocator(addresses=addresses)
    blocks, placed = [None] * len(seq.sizes), []
    for op in seq.ops:
        trace_replay_check.apply_op_on_streams(a, blocks, seq.sizes, streams, op)
        if op >= 1:
            placed.append((blocks[op].addr, blocks[op].stream))
    recorded = [(e["addr"], 0 if e["stream"] == COMPUTE else 1) for e in _two_stream_trace() if e["action"] == "alloc"]
    assert placed == recorded


def test_an_event_file_without_streams_replays_on_one_stream_as_before(tmp_path):
    # a file exported before alloc_streams existed (as docs/allocator_traces/deepspeed/, streams = 2 or 3)
    doc = _doc(_event_file(tmp_path, _two_stream_trace()))
    del doc["alloc_streams"]
    old = tmp_path / "old.events.json.gz"
    old.write_bytes(gzip.compress(json.dumps(doc).encode()))
    row = trace_replay_check.check(old)
    assert row["simulated_reserved"] == 60 * MIB + trace_replay_check.PRE_RECORDING_SEGMENT_BYTES
    assert row["streams"] == 2 and not row["streams_replayed"]


def test_a_shipped_deepspeed_history_exported_without_streams_still_replays_on_one_stream():
    path = ROOT / "docs" / "allocator_traces" / "deepspeed" / "l1-zero2-full-gc-offopt-x1.events.json.gz"
    doc = _doc(path)
    assert "alloc_streams" not in doc and doc["streams"] == 2
    row = trace_replay_check.check(path)
    one_stream = replay(trace_replay_check.with_pre_recording_tensor(doc["sizes"], doc["ops"]))
    assert row["simulated_reserved"] == one_stream.peak_reserved_bytes
    assert row["error"] < -0.2  # -20.9 %: the reduction stream's buckets reused by the compute stream
