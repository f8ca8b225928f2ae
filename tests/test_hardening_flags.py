"""Bad flags get one line and exit code 2 through the real entry point, never typer's box or a silent default;
no JSON output contains Infinity or NaN (issue 14, part 2)."""

import json
import math
import sys

import pytest

from vramplan.cli import main
from vramplan.report.json_out import dumps

SETUP = ["--model", "llama-3.1-8b", "--method", "qlora"]


def _main(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["vramplan", *args])
    code = 0
    try:
        main()
    except SystemExit as done:
        code = 0 if done.code is None else done.code
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, monkeypatch, *args: str) -> str:
    code, out, err = _main(capsys, monkeypatch, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "╭" not in err and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["estimate", *SETUP, "--gpu", ""], "empty GPU name"),
        (["estimate", *SETUP, "--lora-targets", ""], "--lora-targets"),
        (["estimate", *SETUP, "--lora-targets", "q_proj,,v_proj"], "empty module name"),
        (["estimate", *SETUP, "--lora-targets", "q_proj,"], "empty module name"),
        (["estimate", *SETUP, "--lora-alpha", "-4"], "--lora-alpha"),
        (["estimate", *SETUP, "--lora-alpha", "nan"], "--lora-alpha"),
        (["estimate", *SETUP, "--lora-dropout", "nan"], "--lora-dropout"),
        (["estimate", *SETUP, "--headroom", "inf"], "--headroom"),
        (["estimate", "--model", "llama-3.1-8b", "--method", "full", "--lora-rank", "8"], "--method full"),
        (["estimate", *SETUP, "--seq-len", "2k"], "--seq-len"),
        (["estimate", *SETUP, "--batch-size", "1.5"], "--batch-size"),
        (["plan", *SETUP, "--max-gpus", "eight"], "--max-gpus"),
        (["fit", *SETUP, "--gpu", "h100", "--solve", "seq-len", "--seq-len", "x"], "--seq-len"),
        (["estimate", *SETUP, "--no-such-flag"], "no-such-flag"),
        (["estimate", "--model", "llama-3.1-8b"], "--method"),
        (["plan", *SETUP, "--gpus", "rtx-4090,,h100"], "empty GPU id"),
        (["plan", *SETUP, "--gpus", ""], "empty GPU id"),
        (["plan", *SETUP, "--dataset-tokens", "1000", "--epochs", "inf"], "--epochs"),
        (["plan", *SETUP, "--dataset-tokens", "1000", "--epochs", "1e300"], "--epochs"),
        (["plan", *SETUP, "--dataset-tokens", "1e30"], "--dataset-tokens"),
        (["plan", *SETUP, "--dataset-tokens", str(10**400)], "--dataset-tokens"),
        (["plan", *SETUP, "--dataset-examples", str(10**14), "--epochs", "100"], "tokens in all"),
    ],
)
def test_bad_flag_gives_one_line_and_exit_2(capsys, monkeypatch, args, needle):
    assert needle in _refused(capsys, monkeypatch, *args)


def test_lora_flags_at_their_defaults_are_fine_with_full(capsys, monkeypatch):
    code, out, _ = _main(capsys, monkeypatch, "estimate", "--model", "llama-3.2-1b", "--method", "full", "--format", "json")
    assert code == 0 and json.loads(out)["params"]["trainable"] == json.loads(out)["params"]["total"]


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "args",
    [
        ["estimate", *SETUP, "--gpu", "t4", "--format", "json"],
        ["estimate", "--model", "llama-3.1-405b", "--method", "full", "--gpu", "rtx-3090", "--format", "json"],
        ["plan", *SETUP, "--gpus", "t4,h100", "--max-gpus", "2", "--dataset-tokens", "1", "--format", "json"],
        ["fit", *SETUP, "--gpu", "t4", "--solve", "batch-size", "--format", "json"],
        ["gpus", "--format", "json"],
        ["models", "--format", "json"],
    ],
)
def test_json_output_is_strict_json(capsys, monkeypatch, args):
    code, out, err = _main(capsys, monkeypatch, *args)
    assert code == 0, err
    _strict(out)


def test_non_finite_numbers_are_written_as_null():
    doc = {"a": math.inf, "b": [1.0, -math.inf, {"c": math.nan}], "d": (2, 3.5)}
    assert _strict(dumps(doc)) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, 3.5]}


def test_the_app_keeps_its_lora_widgets_when_method_is_full():
    from vramplan.whatif import Inputs

    setup = Inputs(method="full", lora_rank=8, lora_targets="q_proj", quant="nf4").setup()
    assert setup.method == "full" and setup.lora is None
