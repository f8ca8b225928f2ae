"""Run records and calibration that cannot be poisoned (issue 14, part 3): bad records are skipped with one line
naming the file and left as they are; calibrate needs enough runs, writes atomically and guards the shipped file."""

import json
import shutil
import threading

import pytest
from typer.testing import CliRunner

from vramplan import api
from vramplan import calibration as cal_mod
from vramplan.calibration import BOUNDS, MIN_RUNS, fit, load_calibration, save_calibration
from vramplan.cli import app
from vramplan.errors import VramplanError
from vramplan.runs import RunRecordWarning, load_runs, shipped_runs_dir

SHIPPED = sorted((shipped_runs_dir() / "h100-sxm").glob("*.json"))
RUNS = load_runs([shipped_runs_dir()])
runner = CliRunner()


def _copy_good(tmp_path, n: int = 1):
    for src in SHIPPED[:n]:
        shutil.copy(src, tmp_path / src.name)


def _record(**measurements_update) -> dict:
    doc = json.loads(SHIPPED[0].read_text())
    doc["measurements"].update(measurements_update)
    return doc


@pytest.mark.parametrize(
    "name, text",
    [
        ("negative.json", json.dumps(_record(max_allocated_bytes=-5))),
        ("petabyte.json", json.dumps(_record(max_reserved_bytes=10**16))),
        ("nan-speed.json", json.dumps(_record(tokens_per_s=float("nan")))),
        ("deep.json", "[" * 100_000 + "]" * 100_000),
        ("long-int.json", json.dumps(_record()).replace('"steps": 3', '"steps": ' + "7" * 5000)),
        ("unknown-model.json", json.dumps({**_record(), "model": "no-such-model-9b", "model_source": ""})),
    ],
)
def test_a_bad_record_is_skipped_with_one_line_naming_it_and_left_alone(tmp_path, name, text):
    _copy_good(tmp_path)
    bad = tmp_path / name
    bad.write_text(text)
    res = runner.invoke(app, ["validate", "--runs-dir", str(tmp_path), "--raw", "--format", "json"])
    assert res.exit_code == 0, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: skipped run record:") and name in lines[0]
    assert bad.read_text() == text
    assert len(json.loads(res.stdout)["runs"]) == 1


def test_schema_errors_name_the_field(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(_record(device_peak_bytes=-1)))
    problems: list[str] = []
    with pytest.warns(RunRecordWarning):
        assert load_runs(tmp_path, problems=problems) == []
    assert "measurements.device_peak_bytes" in problems[0]


def test_an_unresolvable_model_does_not_abort_calibrate(tmp_path):
    _copy_good(tmp_path, MIN_RUNS)
    (tmp_path / "alien.json").write_text(json.dumps({**_record(), "run_id": "alien", "model": "alien-1b", "model_source": "alien-1b"}))
    res = runner.invoke(app, ["calibrate", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"from {MIN_RUNS} of {MIN_RUNS} run records" in res.stdout and "alien" not in res.stdout
    assert "alien.json" in res.stderr


def test_calibrate_refuses_fewer_runs_than_constants(tmp_path):
    _copy_good(tmp_path, MIN_RUNS - 1)
    res = runner.invoke(app, ["calibrate", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and f"cannot fit {len(BOUNDS)} constants" in res.stderr
    with pytest.raises(VramplanError, match="at least"):
        fit(RUNS[: MIN_RUNS - 1])


def test_calibrate_reports_the_runs_it_used(tmp_path):
    _copy_good(tmp_path, MIN_RUNS + 1)
    res = runner.invoke(app, ["calibrate", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    used = res.stdout.split("runs used: ")[1].split("\n")[0].split(", ")
    assert len(used) == MIN_RUNS + 1 and all(u for u in used)


@pytest.mark.parametrize("command", ["validate", "calibrate"])
def test_a_missing_runs_dir_exits_2(tmp_path, command):
    res = runner.invoke(app, [command, "--runs-dir", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such folder" in res.stderr


def test_eight_concurrent_writers_all_succeed(tmp_path):
    cal = fit(RUNS)
    target = tmp_path / "cal.json"
    barrier, errors = threading.Barrier(8), []

    def write(i: int) -> None:
        barrier.wait()
        try:
            for _ in range(20):
                save_calibration(cal.model_copy(update={"version": f"w{i}"}), target)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert load_calibration(target).version.startswith("w")
    assert [p.name for p in tmp_path.iterdir()] == ["cal.json"]  # no temporary file left


def test_out_refuses_a_folder(tmp_path):
    with pytest.raises(VramplanError, match="is a folder"):
        save_calibration(fit(RUNS), tmp_path)


def test_out_refuses_the_shipped_calibration_unless_forced(tmp_path, monkeypatch):
    fake_shipped = tmp_path / "default.json"
    fake_shipped.write_text("original")
    monkeypatch.setattr(cal_mod, "shipped_calibration_path", lambda: fake_shipped)
    res = runner.invoke(app, ["calibrate", "--out", str(fake_shipped)])
    assert res.exit_code == 2 and "--force" in res.stderr
    assert fake_shipped.read_text() == "original"
    res = runner.invoke(app, ["calibrate", "--out", str(fake_shipped), "--force"])
    assert res.exit_code == 0, res.output
    assert load_calibration(fake_shipped).constants


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_vramplan_calibration_env_pointing_nowhere_is_an_error(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("VRAMPLAN_CALIBRATION", str(tmp_path / "nope.json" if kind == "missing" else tmp_path))
    api.default_calibration.cache_clear()
    try:
        res = runner.invoke(app, ["estimate", "--model", "llama-3.2-1b", "--method", "lora"])
    finally:
        api.default_calibration.cache_clear()
    assert res.exit_code == 2
    assert "VRAMPLAN_CALIBRATION" in res.stderr and ("does not exist" if kind == "missing" else "folder") in res.stderr


@pytest.mark.parametrize(
    "constants, needle",
    [({"fragmentation": "lots"}, "constants.fragmentation"), ({"fragmentation": 7.0}, "outside"),
     ({"made_up": 1.0}, "unknown")],
)  # fmt: skip
def test_calibration_schema_errors_name_the_field(tmp_path, constants, needle):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"version": "x", "constants": constants}))
    with pytest.raises(VramplanError, match=needle):
        load_calibration(path)


def test_only_callers_that_predict_runs_require_a_resolvable_model(tmp_path):
    (tmp_path / "alien.json").write_text(json.dumps({**_record(), "model": "alien-1b", "model_source": "alien-1b"}))
    assert len(load_runs(tmp_path)) == 1  # storage reads what is there (a trainer test run with a config dict)
    with pytest.warns(RunRecordWarning, match="alien.json.*cannot be resolved"):
        assert load_runs(tmp_path, require_model=True) == []
