"""The `vramplan` console entry point: `estimate`, `fit` and `plan` run straight from the cached flag tables
(cli_fast.py) and the command bodies (cli_commands.py) without importing typer; every other command line,
and any the fast parser is unsure of, goes to the typer app (cli.main)."""

import os
import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in ("estimate", "fit", "plan"):
        from .cli_fast import cached_tables, parse_table

        tables = cached_tables()
        kwargs = parse_table(tables[argv[0]], argv[1:]) if tables else None
        if kwargs is not None:
            from .cli_commands import RUNNERS

            try:
                RUNNERS[argv[0]](kwargs)
            except BrokenPipeError:  # `vramplan estimate ... | head`: the reader left; say nothing more
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaced for the interpreter's final flush
                sys.exit(1)
            return
    from .cli import main as typer_main

    typer_main()
