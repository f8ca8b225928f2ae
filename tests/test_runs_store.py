"""Run-record storage: atomic saves, no overwrites, lenient loading that never touches bad files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan.errors import RunRecordError
from vramplan.runs import (
    RunRecordWarning,
    load_runs,
    read_run,
    run_path,
    save_run,
    shipped_runs_dir,
    user_runs_dir,
)
from vramplan.specs import LoraSpec, MeasuredRun, Measurements, RunEnvironment, TrainingSetup


def make_run(run_id: str = "llama-3.2-1b-lora-r16-abc12345", gpu_id: str | None = "h100-sxm", **meas) -> MeasuredRun:
    return MeasuredRun(
        run_id=run_id,
        created_utc="2026-11-23T00:00:00Z",
        model="llama-3.2-1b",
        setup=TrainingSetup(method="lora", lora=LoraSpec(rank=16)),
        environment=RunEnvironment(gpu_name="NVIDIA H100 80GB HBM3", gpu_id=gpu_id),
        measurements=Measurements(max_allocated_bytes=meas.get("max_allocated_bytes", 123), steps=3),
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_save_run_writes_under_gpu_id_and_round_trips(tmp_path):
    run = make_run()
    path = save_run(run, tmp_path)
    assert path == tmp_path / "h100-sxm" / f"{run.run_id}.json"
    assert read_run(path) == run


def test_save_run_without_gpu_goes_to_cpu_dir(tmp_path):
    path = save_run(make_run(gpu_id=None), tmp_path)
    assert path.parent.name == "cpu"


def test_save_run_leaves_no_temporary_files(tmp_path):
    save_run(make_run(), tmp_path)
    assert [p.name for p in (tmp_path / "h100-sxm").iterdir()] == ["llama-3.2-1b-lora-r16-abc12345.json"]


def test_save_run_never_overwrites_a_different_record(tmp_path):
    first = save_run(make_run(max_allocated_bytes=1), tmp_path)
    before = first.read_bytes()
    second = save_run(make_run(max_allocated_bytes=2), tmp_path)
    assert second != first
    assert second.name == "llama-3.2-1b-lora-r16-abc12345-2.json"
    assert first.read_bytes() == before
    assert read_run(second).measurements.max_allocated_bytes == 2


def test_save_run_of_the_same_record_is_idempotent(tmp_path):
    assert save_run(make_run(), tmp_path) == save_run(make_run(), tmp_path)
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_save_run_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = save_run(make_run(max_allocated_bytes=1), tmp_path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_run(make_run(max_allocated_bytes=2), tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_run_path_sanitizes_names(tmp_path):
    run = make_run(run_id="a/b c", gpu_id="../evil")
    path = run_path(run, tmp_path)
    assert path.parent.parent == tmp_path
    assert "/" not in path.name and " " not in path.name


def test_load_runs_reads_every_valid_record(tmp_path):
    save_run(make_run("a"), tmp_path)
    save_run(make_run("b", gpu_id="a100-80gb"), tmp_path)
    assert sorted(r.run_id for r in load_runs(tmp_path)) == ["a", "b"]


@pytest.mark.parametrize(
    "name,content",
    [
        ("corrupt.json", "{not json"),
        ("partial.json", None),  # filled below: a record cut in half
        ("wrong-schema.json", json.dumps({"schema_version": 99, "run_id": "x"})),
        ("not-an-object.json", "[1, 2]"),
        ("empty.json", ""),
    ],
)
def test_load_runs_skips_bad_files_with_a_warning_and_leaves_them(tmp_path, name, content):
    good = save_run(make_run("good"), tmp_path)
    if content is None:
        content = good.read_text()[: len(good.read_text()) // 2]
    bad = tmp_path / "h100-sxm" / name
    bad.write_text(content)
    before = snapshot(tmp_path)
    problems: list[str] = []
    with pytest.warns(RunRecordWarning, match=name):
        runs = load_runs([tmp_path], problems=problems)
    assert [r.run_id for r in runs] == ["good"]
    assert len(problems) == 1 and name in problems[0]
    assert snapshot(tmp_path) == before


def test_read_run_names_the_file_and_the_problem(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"schema_version": 1, "run_id": "x"}))
    with pytest.raises(RunRecordError, match=r"x\.json.*does not match run schema"):
        read_run(bad)


def test_load_runs_ignores_missing_directories(tmp_path):
    assert load_runs([tmp_path / "nope", tmp_path / "also-nope"]) == []


def test_user_runs_dir_prefers_env_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_RUNS_DIR", str(tmp_path / "mine"))
    assert user_runs_dir() == tmp_path / "mine"
    monkeypatch.delenv("VRAMPLAN_RUNS_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_runs_dir() == tmp_path / "xdg" / "vramplan" / "runs"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_runs_dir() == tmp_path / "home" / ".local" / "share" / "vramplan" / "runs"


def test_shipped_runs_dir_is_inside_the_package():
    import vramplan

    assert shipped_runs_dir() == Path(vramplan.__file__).resolve().parent / "runs" / "shipped"


def test_shipped_runs_all_validate():
    problems: list[str] = []
    load_runs(shipped_runs_dir(), problems=problems)
    assert problems == []


def test_runs_package_does_not_import_torch():
    code = "import sys, vramplan.runs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
