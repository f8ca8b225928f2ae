"""The fast flag parser (cli_fast.py) gives each command exactly the arguments typer/click would, or declines."""

import json
import os
import subprocess
import sys

import pytest
import typer

from vramplan import cli
from vramplan.cli_fast import FAST_COMMANDS, parse

CASES = [
    ["--model", "llama-3.1-8b", "--method", "qlora"],
    ["-m", "qwen2.5-7b", "--method", "lora", "--lora-rank", "8", "--grad-ckpt", "--no-double-quant", "--liger"],
    ["--model=llama-3.1-8b", "--method=full", "--seq-len=4096", "--headroom", "0.1", "--format", "json"],
    ["--model", "x", "--method", "lora", "--grad-ckpt", "--no-grad-ckpt", "--batch-size", "2", "--batch-size", "3"],
    ["--from-config", "a.yml", "--seq-len", "1024", "--from-config", "b.json", "--stack", "trl", "--packing"],
]


def _click_params(command: str, args: list[str]) -> dict:
    group = typer.main.get_command(cli.app)
    return dict(group.commands[command].make_context(command, list(args)).params)


@pytest.mark.parametrize("args", CASES)
@pytest.mark.parametrize("command", ["estimate", "plan"])
def test_fast_parser_matches_click(command, args):
    fast = parse(getattr(cli, command), args)
    ctx = fast.pop("ctx")
    assert fast == _click_params(command, args)
    # the command asks the context which flags were given (config files lie under those)
    given = {n for n in fast if ctx.get_parameter_source(n).name == "COMMANDLINE"}
    click_ctx = typer.main.get_command(cli.app).commands[command].make_context(command, list(args))
    assert given == {n for n in fast if click_ctx.get_parameter_source(n).name == "COMMANDLINE"}


def test_fit_matches_click_with_its_required_flags():
    args = ["--model", "llama-3.1-8b", "--method", "qlora", "--gpu", "rtx-4090", "--solve", "seq-len"]
    fast = parse(cli.fit, args)
    fast.pop("ctx")
    assert fast == _click_params("fit", args)


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "x", "--method", "lora", "--help"],
        ["--model", "x", "--method", "lora", "--seq-len", "abc"],
        ["--model", "x", "--method", "lora", "--no-such-flag"],
        ["--model", "x", "--method", "lora", "positional"],
        ["--model", "x", "--method"],
        ["--model", "x", "--method", "lora", "--grad-ckpt=yes"],
    ],
)
def test_fast_parser_declines_what_typer_must_answer(args):
    assert parse(cli.estimate, args) is None


def test_every_fast_command_is_parseable():
    extra = {"fit": ["--gpu", "h100", "--solve", "seq-len"]}
    for name in FAST_COMMANDS:
        assert parse(getattr(cli, name), ["--model", "m", "--method", "lora", *extra.get(name, [])]) is not None


def test_a_path_option_is_parsed_as_click_would():
    from pathlib import Path
    from typing import Annotated, Optional

    def command(
        model: Annotated[str, typer.Option("--model")],
        config: Annotated[Optional[Path], typer.Option("--from-config")] = None,
    ) -> None:
        pass

    assert parse(command, ["--model", "m", "--from-config", "a/b.yml"]) == {"model": "m", "config": Path("a/b.yml")}
    assert parse(command, ["--model", "m"]) == {"model": "m", "config": None}


def test_a_repeatable_option_collects_every_occurrence_as_click_does():
    from typing import Annotated, Optional

    def command(dirs: Annotated[Optional[list[str]], typer.Option("--runs-dir")] = None) -> None:
        pass

    assert parse(command, []) == {"dirs": ()}
    assert parse(command, ["--runs-dir", "a", "--runs-dir=b"]) == {"dirs": ["a", "b"]}


def test_cached_tables_are_the_tables_of_the_command_signatures(tmp_path, monkeypatch):
    from vramplan.cli_fast import cached_tables, flag_table

    monkeypatch.setenv("VRAMPLAN_CLI_CACHE", str(tmp_path))
    built = cached_tables()  # builds and writes the cache
    (written,) = tmp_path.glob("cli-flags-*.json")
    assert built == cached_tables()  # read back from the file
    for name in FAST_COMMANDS:
        assert built[name] == json.loads(json.dumps(flag_table(getattr(cli, name))))
    assert written.name != "cli-flags-.json"


def _entry(args, cache, code="") -> subprocess.CompletedProcess:
    script = (
        "import sys\nfrom vramplan.entry import main\nsys.argv = ['vramplan', *sys.argv[1:]]\n"
        "try:\n    main()\nfinally:\n    print('TYPER' if 'typer' in sys.modules else 'NO-TYPER', file=sys.stderr)\n" + code
    )
    env = {**os.environ, "VRAMPLAN_CLI_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=120)


def test_the_entry_point_answers_estimate_without_importing_typer_once_the_tables_are_cached(tmp_path):
    args = ["estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--format", "json"]
    first, second = _entry(args, tmp_path), _entry(args, tmp_path)
    assert first.returncode == second.returncode == 0
    assert json.loads(first.stdout) == json.loads(second.stdout)
    assert second.stderr.strip().endswith("NO-TYPER")


def test_the_entry_point_hands_what_it_does_not_parse_to_typer_with_one_line(tmp_path):
    bad = _entry(["estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--seq-len", "abc"], tmp_path)
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip() and line.strip() not in ("TYPER", "NO-TYPER")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--seq-len" in lines[0]


@pytest.mark.parametrize("content", ["[1]", "{}", '{"estimate": 1, "fit": 2, "plan": 3}', "not json"])
def test_a_damaged_flag_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch, content):
    from vramplan.cli_fast import _cache_path, cached_tables, flag_table

    monkeypatch.setenv("VRAMPLAN_CLI_CACHE", str(tmp_path))
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    tables = cached_tables()
    assert tables["estimate"] == json.loads(json.dumps(flag_table(cli.estimate)))
    assert json.loads(path.read_text()) == tables  # the damaged file was replaced
