"""`vramplan measure` end to end on CPU: a real (tiny) training run recorded as a run record."""

import json

from typer.testing import CliRunner

from vramplan.cli import app
from vramplan.runs import load_runs


def test_measure_writes_a_valid_record_next_to_the_estimate(tmp_path):
    res = CliRunner().invoke(
        app,
        ["measure", "--model", "smollm2-135m", "--method", "lora", "--seq-len", "16", "--steps", "2",
         "--device", "cpu", "--runs-dir", str(tmp_path), "--format", "json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["predicted"]["peak_allocated_bytes"] > 0
    runs = load_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.model == "smollm2-135m" and run.setup.seq_len == 16
    assert run.measurements.params_trainable == doc["run"]["measurements"]["params_trainable"]
    assert run.measurements.max_allocated_bytes is None  # no GPU here
    assert run.measurements.steps == 2


def test_measure_refuses_an_unknown_model_with_one_line():
    res = CliRunner().invoke(app, ["measure", "--model", "gpt-9", "--method", "lora"])
    assert res.exit_code == 2
    assert "unknown model" in (res.stderr or res.output)
