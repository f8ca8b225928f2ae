"""The README's examples run as written."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vramplan.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("vramplan "):
                    commands.append(part)
    return commands


def test_readme_has_examples():
    assert len(readme_commands()) >= 6


@pytest.mark.parametrize("command", readme_commands())
def test_readme_example_runs(command):
    args = shlex.split(command)[1:]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, f"{command}\n{res.output}"
