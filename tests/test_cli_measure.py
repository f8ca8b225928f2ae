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


def test_measure_runs_trl_sft_trainer_end_to_end_with_the_memory_probe(tmp_path):
    res = CliRunner().invoke(
        app,
        ["measure", "--model", "smollm2-135m", "--method", "lora", "--stack", "trl", "--seq-len", "16",
         "--batch-size", "2", "--steps", "2", "--device", "cpu", "--runs-dir", str(tmp_path), "--format", "json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    (run,) = load_runs(tmp_path)
    assert run.setup.stack == "trl" and run.setup.grad_ckpt  # SFTConfig's default checkpointing
    assert run.extra["trainer_class"] == "SFTTrainer"
    assert run.measurements.steps == 2  # MemoryProbe works as an SFTTrainer callback
    # SFTTrainer wrapped the model itself with the LoRA config: the adapters the estimate counts
    from vramplan.api import estimate_for

    assert run.measurements.params_trainable == estimate_for("smollm2-135m", run.setup).params.trainable
    assert doc["predicted"]["peak_allocated_bytes"] > 0


def test_measure_unsloth_is_refused_in_one_line_before_building_anything(tmp_path):
    res = CliRunner().invoke(app, ["measure", "--model", "smollm2-135m", "--method", "lora", "--stack", "unsloth",
                                   "--lora-dropout", "0", "--runs-dir", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 2
    message = (res.stderr or res.output).strip()
    assert "unsloth" in message and len(message.splitlines()) == 1
    assert load_runs(tmp_path) == []
