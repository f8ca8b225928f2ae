"""`from vramplan import estimate, plan, fit`: the CLI as functions, same names, defaults and JSON."""

import contextlib
import inspect
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import vramplan
from vramplan import estimate, fit, plan, to_dict
from vramplan.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
#: CLI parameters that are not setup inputs of the function (ctx, output format)
CLI_ONLY = {"all_rows", "ctx", "fmt"}


def cli_params(command: str) -> dict:
    """name -> default of a CLI command's parameters, read from the click command typer builds."""
    group = typer.main.get_command(app)
    return {p.name: p.default for p in group.commands[command].params if p.name not in CLI_ONLY}


@pytest.mark.parametrize(("command", "function"), [("estimate", estimate), ("plan", plan), ("fit", fit)])
def test_keyword_arguments_are_named_and_default_like_the_flags(command, function):
    flags = cli_params(command)
    sig = {n: p.default for n, p in inspect.signature(function).parameters.items()}
    assert set(sig) == set(flags)
    for name, default in flags.items():
        expected = inspect.Parameter.empty if name in ("gpu", "solve") and command == "fit" else default
        assert sig[name] == expected, name


def test_estimate_returns_the_object_whose_json_the_cli_prints():
    e = estimate("llama-3.1-8b", method="qlora", lora_rank=16, seq_len=2048, grad_ckpt=True, stack="trl", gpu="rtx-4090")
    res = runner.invoke(app, ["estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--lora-rank", "16",
                              "--seq-len", "2048", "--grad-ckpt", "--stack", "trl", "--gpu", "rtx-4090", "--format", "json"])  # fmt: skip
    cli = json.loads(res.output)
    cli.pop("largest_fit")
    assert to_dict(e) == cli
    assert e.setup.quant == "nf4" and e.calibrated is not None  # qlora defaults nf4; calibrated numbers as the CLI


def test_plan_and_fit_return_what_the_cli_prints():
    p = plan("qwen2.5-7b", method="lora", gpus="rtx-4090,h100", max_gpus=2)
    cli = json.loads(runner.invoke(app, ["plan", "--model", "qwen2.5-7b", "--method", "lora", "--gpus", "rtx-4090,h100",
                                         "--max-gpus", "2", "--format", "json"]).output)  # fmt: skip
    assert to_dict(p) == cli
    f = fit("qwen2.5-7b", method="lora", gpu="rtx-4090", solve="batch-size", grad_ckpt=True)
    cli = json.loads(runner.invoke(app, ["fit", "--model", "qwen2.5-7b", "--method", "lora", "--gpu", "rtx-4090",
                                         "--solve", "batch-size", "--grad-ckpt", "--format", "json"]).output)  # fmt: skip
    assert to_dict(f) == cli


def test_from_config_reads_files_and_an_argument_overrides_them_even_at_its_default():
    e = estimate(from_config=str(ROOT / "examples" / "axolotl-qlora.yml"))
    assert (e.setup.lora.rank, e.setup.seq_len) == (32, 4096)
    e = estimate(from_config=[ROOT / "examples" / "axolotl-qlora.yml"], lora_rank=16)
    assert (e.setup.lora.rank, e.setup.seq_len) == (16, 4096)


def test_an_unknown_keyword_is_a_type_error_and_a_bad_value_a_vramplan_error():
    with pytest.raises(TypeError):
        estimate("llama-3.1-8b", method="lora", rank=16)
    with pytest.raises(vramplan.VramplanError, match="--seq-len 0"):
        estimate("llama-3.1-8b", method="lora", seq_len=0)


def test_to_dict_refuses_other_objects():
    with pytest.raises(TypeError, match="Estimate, Plan or FitResult"):
        to_dict({"not": "a result"})


def test_the_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    block = text.split("### From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    out = io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    first = out.getvalue().splitlines()[0]
    assert first.startswith("True ") and first.endswith(" nf4")


def test_version_is_the_package_version():
    res = runner.invoke(app, ["--version"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert res.exit_code == 0 and res.output.strip() == f"vramplan {vramplan.__version__}" == f"vramplan {project['version']}"


def test_import_vramplan_is_light_and_the_estimate_path_imports_no_torch():
    code = (
        "import sys, vramplan\n"
        "assert 'vramplan.api' not in sys.modules and 'vramplan.specs' not in sys.modules, 'import vramplan is not lazy'\n"
        "from vramplan import estimate\n"
        "estimate('llama-3.1-8b', method='qlora', gpu='rtx-4090', from_config='examples/axolotl-qlora.yml')\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'pydantic', 'vramplan.planner') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
