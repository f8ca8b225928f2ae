"""The CLI contract, in-process (typer CliRunner) and once as a real subprocess."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vramplan.cli import app

runner = CliRunner()
HEADLINE = ["estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--lora-rank", "16",
            "--seq-len", "2048", "--batch-size", "1", "--grad-ckpt"]  # fmt: skip


def run(*args: str):
    return runner.invoke(app, list(args))


def test_estimate_json_has_the_contract_keys():
    res = run(*HEADLINE, "--gpu", "rtx-4090", "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    mem = doc["memory"]
    for key in ("peak_allocated_bytes", "peak_reserved_bytes", "device_peak_bytes", "breakdown", "peak_phase"):
        assert key in mem
    assert sum(mem["breakdown"].values()) == mem["peak_allocated_bytes"]
    assert doc["params"]["total"] == 8_030_261_248
    assert doc["params"]["trainable"] == 41_943_040
    assert doc["gpu"] == "rtx-4090" and doc["fits"] is True
    assert doc["headroom_bytes"] > 0
    assert any("QLoRA" in a for a in doc["assumptions"])


def test_estimate_table_shows_totals_phase_and_verdict():
    res = run(*HEADLINE, "--gpu", "h100")
    assert res.exit_code == 0, res.output
    for text in ("peak phase", "peak allocated", "peak reserved", "device peak", "FITS", "assumptions"):
        assert text in res.output


def test_does_not_fit_verdict():
    res = run("estimate", "--model", "llama-3.1-70b", "--method", "full", "--gpu", "rtx-4090", "--format", "json")
    assert res.exit_code == 0
    assert json.loads(res.output)["fits"] is False


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "llama-9b", "--method", "lora"], "unknown model"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--gpu", "rtx-9090"], "unknown GPU"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--gpu", "a100"], "ambiguous GPU"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--seq-len", "0"], "--seq-len 0"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--batch-size", "100000"], "--batch-size"),
        (["--model", "llama-3.1-8b", "--method", "dpo"], "--method dpo"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--optimizer", "lion"], "--optimizer lion"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--lora-targets", "qkv_proj"], "match no module"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--lora-rank", "5000"], "larger than"),
        (["--model", "llama-3.1-8b", "--method", "full", "--quant", "nf4"], "qlora only"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--headroom", "2"], "headroom"),
        (["--model", "llama-3.1-8b", "--method", "lora", "--format", "yaml"], "--format yaml"),
        (["--model", "llama-3.1-8b", "--method", "full", "--num-gpus", "2", "--parallel", "ddp", "--offload", "all"],
         "not offered"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle):
    res = run("estimate", *args)
    assert res.exit_code == 2
    err = res.stderr if res.stderr else res.output
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_malformed_config_json_exits_2(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    res = run("estimate", "--model", str(bad), "--method", "lora")
    assert res.exit_code == 2
    assert "Traceback" not in (res.stderr or res.output)


def test_config_folder_is_accepted(tmp_path):
    from vramplan.models import load_raw_config

    (tmp_path / "config.json").write_text(json.dumps(load_raw_config("qwen2.5-0.5b")))
    res = run("estimate", "--model", str(tmp_path), "--method", "lora", "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["params"]["total"] == 494_032_768


def test_models_and_gpus_list_the_catalogs():
    models = json.loads(run("models", "--format", "json").output)
    assert any(m["name"] == "llama-3.1-8b" for m in models)
    gpus = json.loads(run("gpus", "--format", "json").output)
    ids = {g["id"] for g in gpus}
    assert {"rtx-4090", "h100-sxm", "a100-80gb", "h200"} <= ids


def test_real_process_estimate_json_and_no_torch_import():
    code = (
        "import sys, json\n"
        "from vramplan.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"r = CliRunner().invoke(app, {HEADLINE + ['--format', 'json']!r})\n"
        "assert r.exit_code == 0, r.output\n"
        "json.loads(r.output)\n"
        "heavy = [m for m in ('torch', 'transformers', 'streamlit', 'peft', 'bitsandbytes') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_console_script_runs_as_a_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "vramplan", *HEADLINE, "--format", "json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["memory"]["peak_phase"]


def test_estimate_with_gpu_reports_the_largest_batch_and_sequence_that_fit():
    res = run(*HEADLINE, "--gpu", "rtx-4090", "--format", "json")
    largest = json.loads(res.output)["largest_fit"]
    assert largest["batch_size"] >= 1 and largest["seq_len"] >= 2048 and "vramplan fit" in largest["search"]
    # the hint is a value that fits (the simulated estimate checked it), at or a little below `vramplan fit`'s largest
    at = run("estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--grad-ckpt", "--gpu", "rtx-4090",
             "--seq-len", str(largest["seq_len"]), "--format", "json")  # fmt: skip
    assert json.loads(at.output)["fits"] is True
    exact = json.loads(run("fit", "--model", "llama-3.1-8b", "--method", "qlora", "--grad-ckpt", "--gpu", "rtx-4090",
                           "--solve", "seq-len", "--format", "json").output)  # fmt: skip
    assert 0.85 * exact["value"] <= largest["seq_len"] <= exact["value"]
    bigger = run("estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--grad-ckpt", "--gpu", "rtx-4090",
                 "--seq-len", str(exact["value"] + 1), "--format", "json")  # fmt: skip
    assert json.loads(bigger.output)["fits"] is False
