"""The bodies of `vramplan estimate`, `plan` and `fit` as plain functions of their parameters (no typer).

cli.py declares the commands (typer: flags, help, the slow path); entry.py runs these directly after its fast
flag parse, so the commands people run in loops never import typer. `params` is the command's parameters by
name (its locals()); `params["ctx"]` answers which flags were given (a click Context or cli_fast.FastContext).
Every domain error becomes one line on stderr and exit code 2.
"""

import sys
from typing import NoReturn

from .configs import resolve_command
from .errors import VramplanError
from .setup_flags import setup_from


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_format(fmt: str) -> None:
    if fmt not in ("table", "json"):
        fail(f"--format {fmt}: accepted: table | json")


def to_json(doc) -> str:
    from .report.json_out import dumps  # strict JSON: never Infinity or NaN

    return dumps(doc)


def console():
    from rich.console import Console  # not loaded for --format json

    return Console(width=max(100, Console().width))


def setup_title(setup) -> str:
    title = setup.method + (f" r{setup.lora.rank}" if setup.lora else "")
    return title + f" · b{setup.batch_size} × s{setup.seq_len}" + (" · grad-ckpt" if setup.grad_ckpt else "")


#: what the largest-fit hint under `vramplan estimate` is (planner.fit quick=True)
QUICK_FIT_NOTE = "searched with the closed-form rules, checked with the simulated estimate: `vramplan fit` for the exact largest"


def run_estimate(params: dict) -> None:
    """`vramplan estimate`: the estimate, and with --gpu the largest micro-batch and sequence that fit."""
    from .api import estimate_for, fit_for

    fmt, gpu, headroom = params["fmt"], params["gpu"], params["headroom"]
    check_format(fmt)
    try:
        resolved = resolve_command(params["ctx"], params)
        model, setup = resolved.model, setup_from(resolved.params)
        result = estimate_for(model, setup, gpu=gpu, headroom=headroom, assumptions=resolved.assumptions,
                              reserved_rule=params["reserved_rule"])  # fmt: skip
        largest = (
            {solve: fit_for(model, setup, gpu=gpu, solve=solve, headroom=headroom, quick=True).value
             for solve in ("batch-size", "seq-len")}
            if gpu else None
        )  # fmt: skip
    except VramplanError as exc:
        fail(str(exc))
    if fmt == "json":
        from .report.estimate_view import estimate_doc

        doc = estimate_doc(result)
        if largest is not None:
            doc["largest_fit"] = {"batch_size": largest["batch-size"], "seq_len": largest["seq-len"],
                                  "search": QUICK_FIT_NOTE}  # fmt: skip
        print(to_json(doc))
        return
    from .report.estimate_view import estimate_text

    print(estimate_text(result, f"{result.model} · {setup_title(setup)}", color=sys.stdout.isatty()))
    if largest is not None:
        batch, seq = largest["batch-size"], largest["seq-len"]
        print(
            f"largest that fits {result.verdict.gpu}: micro-batch {batch if batch else 'none'} "
            f"(at s{setup.seq_len}), sequence {seq if seq else 'none'} (at b{setup.batch_size}); {QUICK_FIT_NOTE}"
        )


def run_plan(params: dict) -> None:
    """`vramplan plan`: ranked GPU x count x strategy options, suggestions when nothing fits one GPU."""
    from .api import plan_for
    from .report.plan_view import plan_doc

    fmt = params["fmt"]
    check_format(fmt)
    try:
        resolved = resolve_command(params["ctx"], params)
        model, setup = resolved.model, setup_from(resolved.params, num_gpus=1, parallel=None)
        result = plan_for(model, setup, gpus=params["gpus"], max_gpus=params["max_gpus"],
                          dataset_tokens=params["dataset_tokens"], dataset_examples=params["dataset_examples"],
                          epochs=params["epochs"], sort=params["sort"], headroom=params["headroom"],
                          assumptions=resolved.assumptions)  # fmt: skip
    except VramplanError as exc:
        fail(str(exc))
    if fmt == "json":
        print(to_json(plan_doc(result)))
        return
    from .report.plan_view import plan_renderable

    console().print(plan_renderable(result, f"{result.model} · {setup_title(setup)}", all_rows=params["all_rows"]))


def run_fit(params: dict) -> None:
    """`vramplan fit`: the largest batch size, sequence length or LoRA rank that fits one GPU."""
    from .api import fit_for
    from .report.plan_view import fit_doc, fit_text

    fmt = params["fmt"]
    check_format(fmt)
    try:
        resolved = resolve_command(params["ctx"], params)
        model, setup = resolved.model, setup_from(resolved.params)
        result = fit_for(model, setup, gpu=params["gpu"], solve=params["solve"], headroom=params["headroom"])
    except VramplanError as exc:
        fail(str(exc))
    if fmt == "json":
        print(to_json(fit_doc(result)))
        return
    out = console()
    out.print(fit_text(result))
    if resolved.assumptions:
        out.print("assumptions:\n" + "\n".join(f"  - {a}" for a in resolved.assumptions), style="dim")


#: command name -> its body
RUNNERS = {"estimate": run_estimate, "plan": run_plan, "fit": run_fit}
