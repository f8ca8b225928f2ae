"""The allocator model against real allocator histories (issue 11, part 2).

docs/allocator_traces/ holds the H200 histories of 2026-12-01 (``measure --memory-snapshot`` recorded without
stacks, written as compact event lists by ``scripts/allocator_replay.py --events``). Replaying a trace's own
requests through vramplan.memory.allocator must give the reserved peak the trace's segment events counted.
"""

import functools
import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import trace_replay_check  # noqa: E402

from vramplan.memory.allocator.replay import replay  # noqa: E402
from vramplan.memory.allocator.sequence import EMPTY_CACHE, Sequence  # noqa: E402

TRACES = sorted((ROOT / "docs" / "allocator_traces").glob("*.events.json.gz"))


@functools.cache
def _rows() -> tuple[dict, ...]:
    """Every trace replayed once, when a test first asks (not at collection: ~5 s)."""
    return tuple(trace_replay_check.check(p) for p in TRACES)


def test_the_traces_are_compact_event_lists_with_their_recorded_peaks():
    assert len(TRACES) >= 40
    doc = json.loads(gzip.decompress(TRACES[0].read_bytes()))
    assert set(doc) >= {"sizes", "ops", "recorded"}
    assert all(op == EMPTY_CACHE or -len(doc["sizes"]) <= op < len(doc["sizes"]) for op in doc["ops"])


@pytest.mark.parametrize("name", ["s-l1-trl-full-gc", "s-h200-l8-qlora-gc", "s-q7-liger-qlora-gc"])
def test_a_recorded_history_replays_to_its_reserved_peak(name):
    row = next(r for r in _rows() if r["trace"] == name)
    assert abs(row["error"]) <= 0.005, row
    # the replay counts the same requests, so its peak allocated is the trace's (rounded to 512 B blocks)
    assert 0 <= row["simulated_allocated"] / row["recorded_allocated"] - 1 <= 0.005, row


#: the one history outside 0.5 % (-0.78 %): Unsloth's dropout route calls empty_cache three times and the driver's
#: reuse of the freed ranges differs from addresses.py's rule 4; with the recorded addresses it replays exactly
PLACEMENT_MISS = "u-l8-qlora-gc-drop"
#: the second (+0.86 %, 2026-12-02, session 8): Unsloth 8B QLoRA r64, recorded without segment addresses, so which of
#: the driver's placements the model gets wrong is not known yet; the first difference is after its load (op 5454)
UNEXPLAINED_MISS = "d-u-l8-qlora-r64-gc"
#: the third (+1.42 %, session 9): Unsloth Gemma 3 4B QLoRA; with its recorded segment addresses it replays exactly,
#: so it is the driver's placement again (addresses.py), first apart after op 19221
GEMMA3_PLACEMENT_MISS = "ug-g3-4-qlora-gc"


def test_every_trace_replays_to_its_reserved_peak_within_half_a_percent():
    # the target. 2026-12-01, with segments placed one after another: 37 of 47, worst +5.45 % (gemma-3-1b
    # TRL full FT); with cudaMalloc's placement as recorded (addresses.py): 47 of 47, 45 to the byte, worst -0.03 %;
    # 2026-12-02: 74 of the 75, the other -0.78 %; session 8: 77 of 79 (UNEXPLAINED_MISS +0.86 %); session 9: 108 of
    # 111 (GEMMA3_PLACEMENT_MISS +1.42 %)
    rows = {r["trace"]: r for r in _rows()}
    misses = (PLACEMENT_MISS, UNEXPLAINED_MISS, GEMMA3_PLACEMENT_MISS)
    errors = sorted(abs(r["error"]) for name, r in rows.items() if name not in misses)
    assert errors[-1] <= 0.005
    assert sum(e == 0 for e in errors) >= 45
    assert abs(rows[PLACEMENT_MISS]["error"]) <= 0.01 and abs(rows[UNEXPLAINED_MISS]["error"]) <= 0.01
    assert 0.013 <= rows[GEMMA3_PLACEMENT_MISS]["error"] <= 0.015


@pytest.mark.parametrize("miss", [PLACEMENT_MISS, GEMMA3_PLACEMENT_MISS])
def test_the_placement_miss_replays_exactly_with_its_recorded_addresses(miss):
    doc = json.loads(gzip.decompress((TRACES[0].parent / f"{miss}.events.json.gz").read_bytes()))
    a = trace_replay_check.replay_with_recorded_addresses(doc)
    recorded = doc["recorded"]["peak_reserved"] + trace_replay_check.PRE_RECORDING_SEGMENT_BYTES
    assert a.peak_reserved == recorded
    if miss == PLACEMENT_MISS:  # the dropout route's three empty_cache calls
        assert doc["ops"].count(EMPTY_CACHE) == 3


#: Unsloth histories of 2026-12-01, recorded after `import unsloth` (later ones record it: 32 MiB at op 4)
UNSLOTH_IMPORT_FIRST = {"u-l8-qlora-gc", "u-l8-lora-gc", "u-l8-qlora-gc-s4096", "u-l8-lora-s1024", "u-q7-qlora-gc",
                        "u-l1-full-gc"}


def test_each_trace_misses_only_the_segment_cached_before_recording_began():
    # start_cuda's 4-byte tensor is made and freed before recording starts; its 2 MiB small-pool segment stays
    # cached, so the run's max_memory_reserved() is the trace's own peak + 2 MiB on every shipped history, but
    # for the Unsloth runs of 2026-12-01, whose `import unsloth` (32 MiB more) came before recording began (the
    # trainer now starts recording first)
    from vramplan.runs import load_runs, shipped_runs_dir

    measured = {r.extra["memory_snapshot"].removesuffix(".pickle"): r.measurements.max_reserved_bytes
                for r in load_runs(shipped_runs_dir()) if (r.extra or {}).get("memory_snapshot")}  # fmt: skip
    for path in TRACES:
        name = path.name.removesuffix(".events.json.gz")
        doc = json.loads(gzip.decompress(path.read_bytes()))
        before = trace_replay_check.PRE_RECORDING_SEGMENT_BYTES + (32 * 2**20 if name in UNSLOTH_IMPORT_FIRST else 0)
        assert measured[name] - doc["recorded"]["peak_reserved"] == before, name


def test_the_replay_starts_with_the_pre_recording_tensor_freed(tmp_path):
    import pickle

    import allocator_replay

    seq = trace_replay_check.with_pre_recording_tensor([3 << 20, 512], [0, 1, ~0, EMPTY_CACHE, ~1])
    assert seq.sizes == [4, 3 << 20, 512]
    assert seq.ops == [0, ~0, 1, 2, ~1, EMPTY_CACHE, ~2]
    # a recorded history whose 512-byte request went to the segment cached before recording (no segment event)
    trace = [
        {"action": "segment_alloc", "addr": 0, "size": 20 << 20},
        {"action": "alloc", "addr": 0, "size": 3 << 20},
        {"action": "alloc", "addr": 64 << 20, "size": 512},
    ]
    snap = tmp_path / "run.pickle"
    snap.write_bytes(pickle.dumps({"device_traces": [trace]}))
    row = trace_replay_check.check(allocator_replay.write_events(snap, tmp_path))
    assert row["recorded_reserved"] == (20 << 20) + (2 << 20)
    assert row["simulated_reserved"] == row["recorded_reserved"]


def test_an_event_list_frees_what_it_allocated_in_order():
    # a hand-made history of large-pool requests (> 1 MiB): alloc 0, alloc 1, free 0, alloc 2, free 1, free 2
    seq = Sequence(sizes=[3 << 20, 3 << 20, 3 << 20], ops=[0, 1, ~0, 2, ~1, ~2])
    result = replay(seq)
    # three 3 MiB requests under 10 MiB share one 20 MiB segment; the freed first block is reused by the third
    assert result.peak_reserved_bytes == 20 << 20
    assert result.num_segments == 1


def test_a_snapshot_trace_becomes_a_sequence_with_its_segment_timeline():
    import allocator_replay

    trace = [
        {"action": "segment_alloc", "addr": 0, "size": 2 << 20},
        {"action": "alloc", "addr": 0, "size": 1000},
        {"action": "alloc", "addr": 1024, "size": 512},
        {"action": "free_completed", "addr": 0, "size": 1000},
        {"action": "alloc", "addr": 0, "size": 800},
        {"action": "free_completed", "addr": 4096, "size": 8},  # allocated before recording began: ignored
        {"action": "segment_free", "addr": 0, "size": 2 << 20},
        {"action": "segment_free", "addr": 9 << 20, "size": 2 << 20},
    ]
    doc = allocator_replay.compact_events(trace)
    assert doc["sizes"] == [1000, 512, 800]
    # one empty-cache op for a run of segment frees
    assert doc["ops"] == [0, 1, ~0, 2, EMPTY_CACHE]
    assert doc["unfreed_at_end"] == 2
    assert doc["segments"] == [[0, 2 << 20, 0], [4, 0, 0], [5, -(2 << 20), 9 << 20]]


def test_a_snapshot_pickle_becomes_an_event_file_with_its_recorded_peaks(tmp_path):
    import pickle

    import allocator_replay

    trace = [
        {"action": "segment_alloc", "addr": 0, "size": 20 << 20},
        {"action": "alloc", "addr": 0, "size": 3 << 20},
        {"action": "alloc", "addr": 3 << 20, "size": 3 << 20},
        {"action": "free_completed", "addr": 0, "size": 3 << 20},
    ]
    snap = tmp_path / "run.pickle"
    snap.write_bytes(pickle.dumps({"device_traces": [[], trace]}))
    target = allocator_replay.write_events(snap, tmp_path / "events")
    assert target.name == "run.events.json.gz"
    doc = json.loads(gzip.decompress(target.read_bytes()))
    assert doc["recorded"] == {"events": 4, "peak_reserved": 20 << 20, "peak_allocated": 6 << 20,
                               "allocated_at_peak_reserved": 6 << 20}
    # the replay of its own requests reserves what the trace did
    result = replay(Sequence(sizes=doc["sizes"], ops=doc["ops"]))
    assert result.peak_reserved_bytes == doc["recorded"]["peak_reserved"]


def test_a_replay_with_the_recorded_addresses_follows_the_trace_where_the_modelled_ones_part(tmp_path):
    import pickle

    import allocator_replay

    # the run placed its second segment below the first; a tie between two free 40 MiB blocks went to the lower,
    # the second's, so the first's blocks merged back into the 60 MiB the last request found; with the model's
    # addresses (the second segment in the room above the first) the tie splits the first instead
    lo, hi = 0x10000000, 0x20000000
    trace = [
        {"action": "segment_alloc", "addr": hi, "size": 60 << 20},
        {"action": "alloc", "addr": hi, "size": 60 << 20},
        {"action": "segment_alloc", "addr": lo, "size": 40 << 20},
        {"action": "alloc", "addr": lo, "size": 40 << 20},
        {"action": "free_completed", "addr": hi, "size": 60 << 20},
        {"action": "alloc", "addr": hi, "size": 20 << 20},
        {"action": "free_completed", "addr": lo, "size": 40 << 20},
        {"action": "alloc", "addr": lo, "size": 24 << 20},
        {"action": "free_completed", "addr": hi, "size": 20 << 20},
        {"action": "alloc", "addr": hi, "size": 60 << 20},
    ]
    snap = tmp_path / "run.pickle"
    snap.write_bytes(pickle.dumps({"device_traces": [trace]}))
    doc = json.loads(gzip.decompress(allocator_replay.write_events(snap, tmp_path).read_bytes()))
    assert trace_replay_check.first_divergence(doc, recorded_addresses=True) is None
    assert trace_replay_check.first_divergence(doc) == 7  # the last request: a new 60 MiB segment in the model


def test_the_predicted_sequence_of_a_recorded_run_makes_its_segments_in_order():
    # scripts/trace_replay_check.py --predicted: Llama-3.1-8B nf4 QLoRA without double quantization (t-l8-qlora-nodq-gc)
    # makes the recorded 17 segments of >= 20 MiB in the recorded order and its reserved peak within 0.1 %; Qwen2.5-0.5B
    # fp32 LoRA (t-q05-lora-fp32-s1024) gets its peak within 1 % (-8.0 % before the autograd workspace moved)
    from vramplan.runs import load_runs, shipped_runs_dir

    runs = {(r.extra or {}).get("memory_snapshot"): r for r in load_runs(shipped_runs_dir())}
    nodq = trace_replay_check.compare_predicted(TRACES[0].parent / "t-l8-qlora-nodq-gc.events.json.gz",
                                                runs["t-l8-qlora-nodq-gc.pickle"])  # fmt: skip
    assert nodq["in_order"] == 1.0 and abs(nodq["peak_error"]) < 0.001, nodq
    qwen = trace_replay_check.compare_predicted(TRACES[0].parent / "t-q05-lora-fp32-s1024.events.json.gz",
                                                runs["t-q05-lora-fp32-s1024.pickle"])  # fmt: skip
    assert abs(qwen["peak_error"]) < 0.01, qwen


# --------------------------------------------------------------------------- fake ranks (multi-GPU histories)
FAKE_RANK = ROOT / "docs" / "allocator_traces" / "fake_rank"
FAKE_TRACES = sorted(FAKE_RANK.glob("*.events.json.gz"))


def _records(folder: Path) -> list:
    from vramplan.specs import MeasuredRun

    return [MeasuredRun.model_validate_json(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def test_fake_rank_histories_of_multi_gpu_runs_replay_to_their_reserved_peaks():
    # rank 0 of DDP / FSDP / ZeRO-2 launches of 2 to 8 ranks over torch's fake process group (vramplan/trainer/
    # fake_rank.py), FSDP's three streams each with its own cached blocks: every one to the byte (2026-12-04)
    assert len(FAKE_TRACES) >= 50
    rows = [trace_replay_check.check(p) for p in FAKE_TRACES]
    # two are not to the byte (2026-12-04): where cudaMalloc put a segment (addresses.py) broke a best-fit tie the
    # other way; with each history's own segment addresses both replay to the byte all the way
    missed = {r["trace"]: r["error"] for r in rows if r["error"]}
    assert set(missed) <= {"fc-tiny-fsdp-lora-gc-x2", "ch-m7-fsdp-full-gc-x8"}, missed
    assert all(0 < e < 0.0075 for e in missed.values()), missed
    for name in missed:
        doc = json.loads(gzip.decompress((FAKE_RANK / f"{name}.events.json.gz").read_bytes()))
        assert trace_replay_check.first_divergence(doc, recorded_addresses=True) is None, name
    assert sum(r["streams"] == 3 for r in rows if "fsdp" in r["trace"]) >= 10


def test_a_fake_rank_has_the_allocator_of_a_real_two_gpu_launch_to_the_byte():
    # the proof that a fake rank stands in for a real one: the five setups measured on 2 x H200 (2026-11, real NCCL
    # launches, rank 0) and again as fake ranks on one H200 have the same peak allocated and reserved, byte for byte
    from vramplan.runs import load_runs, shipped_runs_dir

    def key(r):
        return r.model, r.setup.model_dump_json()

    real = {key(r): r.measurements for r in load_runs([shipped_runs_dir()]) if r.environment.num_gpus == 2}
    fake = [r for r in _records(FAKE_RANK / "records")
            if r.setup.num_gpus == 2 and key(r) in real and r.extra.get("fsdp_load_device") != "cpu"]  # built as they were
    assert all(r.extra["process_group"] == "fake" and "not a multi-GPU measurement" in r.notes for r in fake)
    assert {(r.model, r.setup.parallel) for r in fake} >= {
        ("llama-3.2-1b", "fsdp"), ("llama-3.2-3b", "fsdp"), ("llama-3.1-8b", "fsdp"),
        ("llama-3.2-1b", "ddp"), ("llama-3.1-8b", "ddp"),
    }  # fmt: skip
    for r in fake:
        m = real[key(r)]
        assert (r.measurements.max_allocated_bytes, r.measurements.max_reserved_bytes) == (
            m.max_allocated_bytes, m.max_reserved_bytes), r.run_id  # fmt: skip
