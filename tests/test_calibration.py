"""calibrate / validate: bounded fits, corrupt inputs, CLI output."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from vramplan.calibration import BOUNDS, fit, load_calibration, save_calibration
from vramplan.cli import app
from vramplan.errors import VramplanError
from vramplan.runs import load_runs, shipped_runs_dir

RUNS = load_runs([shipped_runs_dir()])


def test_fitted_constants_lie_within_their_bounds():
    cal = fit(RUNS)
    assert set(cal.constants) == set(BOUNDS)
    for name, value in cal.constants.items():
        lo, hi = BOUNDS[name]
        assert lo <= value <= hi
    # H100: 55 campaign + 13 hold-out runs; H200: the 10 hf reruns and 7 hf timing runs of 2026-12-01, the 9 hf
    # timing reruns, 4 hf allocator-history runs and 6 hf hold-out runs of 2026-12-02, and the Qwen2.5-7B QLoRA r64
    # s4096 hold-out rerun with its history (single GPU, not capped, no DeepSpeed); the TRL, Liger and Unsloth runs
    # are judged, not fitted (fitting_runs); session 8: the 3 hf runs of the default rule's hold-out and the 3B rerun with its history
    assert len(cal.fitted_on) == 133  # + the 18 hf checkpointed full-FT hold-out runs of session 9 (ckptbwd, families, qwen3)
    by_id = {r.run_id: r for r in RUNS}
    assert all(by_id[i].setup.stack == "hf" and not by_id[i].setup.liger for i in cal.fitted_on)


def test_context_constant_is_the_measured_device_minus_reserved_gap():
    cal = fit(RUNS)
    # H100 and H200 runs alike: device peak - max reserved = 0.746 GiB outside torch's pool
    assert cal.constants["cuda_context_bytes"] / 2**30 == pytest.approx(0.746, abs=0.01)


def test_no_usable_run_is_a_clear_error():
    cpu_only = [r for r in RUNS if r.measurements.oom]
    with pytest.raises(VramplanError, match="no run record with measured GPU memory"):
        fit(cpu_only)


def test_calibration_round_trips_and_corrupt_file_is_refused(tmp_path):
    cal = fit(RUNS[:10])
    path = save_calibration(cal, tmp_path / "cal.json")
    assert load_calibration(path) == cal
    path.write_text('{"version": 1')
    with pytest.raises(VramplanError, match="not valid"):
        load_calibration(path)
    with pytest.raises(VramplanError, match="does not exist"):
        load_calibration(tmp_path / "missing.json")


def test_validate_skips_a_corrupt_record_with_a_warning_and_keeps_it(tmp_path):
    src = next(iter(sorted((shipped_runs_dir() / "h100-sxm").glob("*.json"))))
    shutil.copy(src, tmp_path / src.name)
    bad = tmp_path / "broken.json"
    bad.write_text('{"schema_version": 1, "run_id": ')
    res = CliRunner().invoke(app, ["validate", "--runs-dir", str(tmp_path), "--raw", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert "skipped run record" in res.stderr
    assert bad.read_text() == '{"schema_version": 1, "run_id": '
    doc = json.loads(res.stdout)
    assert doc["mode"] == "raw model, reserved simulated where the simulation covers the setup"
    assert len(doc["runs"]) + len(doc["skipped"]) == 1


def test_validate_json_reports_errors_and_stats():
    res = CliRunner().invoke(app, ["validate", "--format", "json"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["mode"] == "leave-one-out calibrated, reserved simulated where the simulation covers the setup"
    first = doc["runs"][0]
    assert set(first["error"]) == {"allocated", "reserved", "device"}
    assert doc["stats"]["device"]["runs"] == len(doc["runs"])


def test_calibrate_writes_the_file(tmp_path):
    out = tmp_path / "cal.json"
    res = CliRunner().invoke(app, ["calibrate", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fragmentation_logits" in res.output
    assert load_calibration(out).constants["fragmentation"] >= 0
