"""The commands over run records: `validate` (predicted vs measured) and `calibrate` (fit the bounded constants).
cli.py registers them on the typer app."""

from typing import Annotated, Optional

import typer

from . import cli_options as o
from .cli_commands import check_format as _check_format
from .cli_commands import console as _console
from .cli_commands import fail as _fail
from .cli_commands import to_json as _json
from .errors import VramplanError


def _records(runs_dir: list[str] | None) -> list:
    """The run records of the --runs-dir folders (default: shipped + user runs). A folder named with --runs-dir
    that does not exist exits 2; each skipped record is one warning line naming its file."""
    import warnings
    from pathlib import Path

    from .runs import RunRecordWarning, load_runs, shipped_runs_dir, user_runs_dir

    missing = [d for d in runs_dir or () if not Path(d).is_dir()]
    if missing:
        _fail(f"--runs-dir {missing[0]}: no such folder; accepted: a folder of run records (vramplan measure writes them)")
    problems: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunRecordWarning)  # printed below, one line each
        runs = load_runs(runs_dir or [shipped_runs_dir(), user_runs_dir()], problems=problems, require_model=True)
    for line in problems:
        typer.echo(f"warning: {line}", err=True)
    return runs


def validate(
    runs_dir: Annotated[
        Optional[list[str]], typer.Option("--runs-dir", help="run records folder(s); default: shipped + user runs")
    ] = None,
    loo: Annotated[
        bool, typer.Option("--loo/--raw", help="leave-one-out calibrated predictions (default) or raw model")
    ] = True,
    fmt: o.FormatOpt = "table",
    reserved_rule: Annotated[
        str,
        typer.Option(
            "--reserved-rule",
            help="auto (default: allocator replay wherever the simulation covers the setup, closed forms elsewhere) | simulated | rules",
        ),
    ] = "auto",
) -> None:
    """Predicted vs measured for every run record: the error of each, the median and the worst."""
    from .report.validation_view import validation_doc, validation_renderable
    from .calibration import leave_one_out
    from .memory.allocator.simulated import RESERVED_RULES
    from .validation import validate as run_validation

    _check_format(fmt)
    if reserved_rule not in RESERVED_RULES:
        _fail(f"--reserved-rule {reserved_rule}: accepted: {' | '.join(RESERVED_RULES)}")
    runs = _records(runs_dir)
    result = leave_one_out(runs, reserved_rule) if loo else run_validation(runs, reserved_rule=reserved_rule)
    mode = "leave-one-out calibrated" if loo else "raw model"
    if reserved_rule == "simulated":
        mode += ", reserved simulated"
    elif reserved_rule == "auto":
        mode += ", reserved simulated where the simulation covers the setup"
    if fmt == "json":
        typer.echo(_json({"mode": mode, **validation_doc(result)}))
        return
    _console().print(validation_renderable(result, f"predicted ({mode}) vs measured, {len(runs)} run records"))


def calibrate(
    runs_dir: Annotated[
        Optional[list[str]], typer.Option("--runs-dir", help="run records folder(s); default: shipped + user runs")
    ] = None,
    out: Annotated[
        Optional[str], typer.Option("--out", help="where to write the calibration JSON (default: print only)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="let --out replace the calibration shipped with vramplan")] = False,
    fmt: o.FormatOpt = "table",
) -> None:
    """Fit the named, bounded constants (CUDA context, allocator fragmentation) from run records."""
    from .calibration import BOUNDS, fit, save_calibration

    _check_format(fmt)
    runs = _records(runs_dir)
    try:
        cal = fit(runs)
        if out:
            save_calibration(cal, out, force=force)
    except VramplanError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"--out {out}: cannot write ({exc.strerror or exc})")
    if fmt == "json":
        typer.echo(_json(cal.model_dump(mode="json")))
        return
    left_out = len(runs) - len(cal.fitted_on)
    typer.echo(
        f"calibration {cal.version} from {len(cal.fitted_on)} of {len(runs)} run records"
        + (f" ({left_out} left out: OOM, memory-capped, multi-GPU or DeepSpeed, or not the hf stack)" if left_out else "")
        + (f" -> {out}" if out else "")
    )
    typer.echo(f"  runs used: {', '.join(cal.fitted_on)}")
    for name, value in cal.constants.items():
        lo, hi = BOUNDS[name]
        typer.echo(f"  {name} = {value:.6g}   (bounds {lo:g} .. {hi:g})")
