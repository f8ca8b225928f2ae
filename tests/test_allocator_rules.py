"""The steady-step loss-segment rule of the reserved peak, and the allocator-history replay it came from."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan.api import estimate_for
from vramplan.memory.allocator import SEGMENT_ROUND_BYTES, steady_loss_reserved
from vramplan.specs import LoraSpec, TrainingSetup

GIB = 2**30
MIB = 2**20
ROOT = Path(__file__).resolve().parent.parent


def test_steady_loss_bound_is_persistent_plus_the_whole_loss_chain_in_new_segments():
    nv4 = 4 * 2048 * 128256  # llama-3.2-1b, s2048: one fp32 logits buffer
    chain = 14 * 2048 * 128256
    got = steady_loss_reserved(9 * GIB + 1, chain, nv4, state_bytes=4 * GIB, largest_state_tensor_bytes=500 * MIB)
    assert got % SEGMENT_ROUND_BYTES == 0
    assert got == 9 * GIB + SEGMENT_ROUND_BYTES + -(-chain // SEGMENT_ROUND_BYTES) * SEGMENT_ROUND_BYTES


@pytest.mark.parametrize(
    "states, largest",
    [(4 * GIB, 512 * 1024), (64 * MIB, 500 * MIB)],  # small-pool state tensors (LoRA); states outside (paged)
)
def test_no_steady_loss_bound_when_states_cannot_fill_the_freed_loss_segments(states, largest):
    nv4 = 4 * 2048 * 128256
    assert steady_loss_reserved(9 * GIB, 14 * nv4 // 4, nv4, states, largest) == 0


def test_full_ft_with_checkpointing_is_set_by_the_steady_loss_rule():
    # measured on H100: 12.22 GiB reserved, 10.25 GiB allocated (llama-3.2-1b, full, GC, s2048)
    e = estimate_for("llama-3.2-1b", TrainingSetup(method="full", seq_len=2048, grad_ckpt=True), reserved_rule="rules")
    m = e.calibrated or e.memory
    assert m.reserved_rule == "steady_loss_segments"
    assert m.peak_reserved_bytes == m.steady_loss_reserved_bytes
    assert 12.22 * 0.99 <= m.peak_reserved_bytes / GIB <= 12.22 * 1.05


@pytest.mark.parametrize(
    "setup",
    [
        TrainingSetup(method="lora", lora=LoraSpec(rank=16), seq_len=2048, grad_ckpt=True),
        TrainingSetup(method="full", seq_len=2048, grad_ckpt=True, expandable_segments=True),
        TrainingSetup(method="full", seq_len=1024, grad_ckpt=True, optimizer="paged_adamw_8bit"),
    ],
    ids=["lora", "expandable", "paged"],
)
def test_other_setups_keep_the_fragmentation_rule(setup):
    m = estimate_for("llama-3.2-1b", setup, reserved_rule="rules").memory
    assert m.reserved_rule == "fragmentation"
    if setup.method == "lora" or setup.expandable_segments:
        assert m.steady_loss_reserved_bytes == 0


def _trace(path: Path) -> None:
    g = GIB
    frames = [{"filename": "transformers/loss/loss_utils.py", "line": 59, "name": "ForCausalLMLoss"}]
    events = [
        {"action": "segment_alloc", "addr": 0, "size": 2 * g, "frames": frames},
        {"action": "alloc", "addr": 0, "size": 2 * g},
        {"action": "free_completed", "addr": 0, "size": 2 * g},
        # a state lands in the middle of the freed loss segment: 1.9 GiB free, no 1 GiB hole
        {"action": "alloc", "addr": g - 50 * MIB, "size": 100 * MIB},
        {"action": "segment_alloc", "addr": 4 * g, "size": g, "frames": frames},
        {"action": "alloc", "addr": 4 * g, "size": g},
    ]
    path.write_bytes(pickle.dumps({"segments": [], "device_traces": [events]}))


def test_allocator_replay_reports_the_stranded_hole_and_the_request_it_failed(tmp_path):
    snap = tmp_path / "s.pickle"
    _trace(snap)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from allocator_replay import analyze
    finally:
        sys.path.pop(0)
    doc = analyze(snap)
    assert doc["peak_reserved"] == 3 * GIB
    assert doc["allocated_at_peak_reserved"] == GIB + 100 * MIB
    assert doc["stranded_segments"][0]["largest_gap"] == GIB - 50 * MIB
    failed = doc["mallocs_despite_free"]
    assert len(failed) == 1 and failed[0]["size"] == GIB
    assert failed[0]["free_before"] == 2 * GIB - 100 * MIB and failed[0]["largest_gap_before"] == GIB - 50 * MIB
    assert "ForCausalLMLoss" in failed[0]["frames"][0]


def test_allocator_replay_refuses_a_corrupt_snapshot_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(b"not a pickle")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "allocator_replay.py"), str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "cannot read the snapshot" in proc.stderr
