"""The `vramplan` command: thin typer wiring over plain functions.

Every domain error becomes one line on stderr and exit code 2 (no traceback).
"""

import os
import sys
from typing import Annotated, Optional

import typer

from . import cli_options as o
from . import cli_records
from .cli_commands import check_format as _check_format
from .cli_commands import console as _console
from .cli_commands import fail as _fail
from .cli_commands import to_json as _json
from .errors import VramplanError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Will this fine-tuning job fit, on which GPUs, how fast and at what cost?",
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"vramplan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    pass


@app.command()
def estimate(
    ctx: typer.Context,
    model: o.Model = None,
    method: o.MethodOpt = None,
    lora_rank: o.LoraRank = 16,
    lora_alpha: o.LoraAlpha = None,
    lora_dropout: o.LoraDropout = 0.05,
    lora_targets: o.LoraTargets = "all-linear",
    quant: o.QuantOpt = None,
    double_quant: o.DoubleQuant = True,
    seq_len: o.SeqLen = 2048,
    batch_size: o.BatchSize = 1,
    grad_accum: o.GradAccum = 1,
    grad_ckpt: o.GradCkpt = None,
    optimizer: o.OptimizerOpt = "adamw_torch_fused",
    dtype: o.DtypeOpt = "bf16",
    attn: o.AttnOpt = "sdpa",
    expandable_segments: o.Expandable = False,
    stack: o.StackOpt = "hf",
    liger: o.LigerOpt = False,
    packing: o.PackingOpt = False,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="GPU id (vramplan gpus) for a fit verdict")] = None,
    headroom: o.Headroom = 0.05,
    num_gpus: o.NumGpus = 1,
    parallel: o.ParallelOpt = None,
    offload: o.OffloadOpt = "none",
    from_config: o.FromConfig = None,
    fmt: o.FormatOpt = "table",
    reserved_rule: Annotated[
        str,
        typer.Option(
            "--reserved-rule",
            help="auto (default: allocator replay on one GPU, closed forms for multi-GPU / DeepSpeed) | simulated | rules",
        ),
    ] = "auto",
) -> None:
    """Predict peak GPU memory of one fine-tuning setup, with a breakdown and a verdict per GPU.

    Example: vramplan estimate --model llama-3.1-8b --method qlora --seq-len 2048 --grad-ckpt --gpu rtx-4090
    """
    from .cli_commands import run_estimate

    run_estimate(locals())


@app.command()
def plan(
    ctx: typer.Context,
    model: o.Model = None,
    method: o.MethodOpt = None,
    lora_rank: o.LoraRank = 16,
    lora_alpha: o.LoraAlpha = None,
    lora_dropout: o.LoraDropout = 0.05,
    lora_targets: o.LoraTargets = "all-linear",
    quant: o.QuantOpt = None,
    double_quant: o.DoubleQuant = True,
    seq_len: o.SeqLen = 2048,
    batch_size: o.BatchSize = 1,
    grad_accum: o.GradAccum = 1,
    grad_ckpt: o.GradCkpt = None,
    optimizer: o.OptimizerOpt = "adamw_torch_fused",
    dtype: o.DtypeOpt = "bf16",
    attn: o.AttnOpt = "sdpa",
    expandable_segments: o.Expandable = False,
    stack: o.StackOpt = "hf",
    liger: o.LigerOpt = False,
    packing: o.PackingOpt = False,
    gpus: Annotated[str, typer.Option("--gpus", help="all, or a comma list of GPU ids (vramplan gpus)")] = "all",
    max_gpus: Annotated[int, typer.Option("--max-gpus", help="most GPUs per option (1, 2, 4 .. this)")] = 8,
    dataset_tokens: Annotated[Optional[int], typer.Option("--dataset-tokens", help="tokens per epoch")] = None,
    dataset_examples: Annotated[Optional[int], typer.Option("--dataset-examples", help="examples per epoch (seq-len tokens each)")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help="passes over the dataset (default 1)")] = None,
    sort: Annotated[str, typer.Option("--sort", help="cost | time | memory")] = "cost",
    headroom: o.Headroom = 0.05,
    from_config: o.FromConfig = None,
    all_rows: Annotated[
        bool, typer.Option("--all", help="every GPU count and strategy (default: the best row per GPU type)")
    ] = False,
    fmt: o.FormatOpt = "table",
) -> None:
    """Rank GPU x count x strategy options by fit, speed and cost; say what to change when nothing fits."""
    from .cli_commands import run_plan

    run_plan(locals())


@app.command()
def fit(
    ctx: typer.Context,
    gpu: Annotated[str, typer.Option("--gpu", help="GPU id (vramplan gpus)")],
    solve: Annotated[str, typer.Option("--solve", help="batch-size | seq-len | lora-rank")],
    model: o.Model = None,
    method: o.MethodOpt = None,
    lora_rank: o.LoraRank = 16,
    lora_alpha: o.LoraAlpha = None,
    lora_dropout: o.LoraDropout = 0.05,
    lora_targets: o.LoraTargets = "all-linear",
    quant: o.QuantOpt = None,
    double_quant: o.DoubleQuant = True,
    seq_len: o.SeqLen = 2048,
    batch_size: o.BatchSize = 1,
    grad_accum: o.GradAccum = 1,
    grad_ckpt: o.GradCkpt = None,
    optimizer: o.OptimizerOpt = "adamw_torch_fused",
    dtype: o.DtypeOpt = "bf16",
    attn: o.AttnOpt = "sdpa",
    expandable_segments: o.Expandable = False,
    stack: o.StackOpt = "hf",
    liger: o.LigerOpt = False,
    packing: o.PackingOpt = False,
    headroom: o.Headroom = 0.05,
    num_gpus: o.NumGpus = 1,
    parallel: o.ParallelOpt = None,
    offload: o.OffloadOpt = "none",
    from_config: o.FromConfig = None,
    fmt: o.FormatOpt = "table",
) -> None:
    """The largest batch size, sequence length or LoRA rank that fits a GPU (other settings as given)."""
    from .cli_commands import run_fit

    run_fit(locals())


@app.command()
def models(fmt: o.FormatOpt = "table") -> None:
    """List the shipped model catalog (architectures ship with the package; no downloads)."""
    from rich.table import Table

    from .models import list_models

    _check_format(fmt)
    entries = list_models()
    if fmt == "json":
        typer.echo(_json([e.model_dump() if hasattr(e, "model_dump") else vars(e) for e in entries]))
        return
    table = Table(title=f"{len(entries)} shipped models")
    table.add_column("name")
    table.add_column("Hugging Face id")
    table.add_column("params", justify="right")
    for e in entries:
        table.add_row(e.name, e.hf_id, f"{e.params / 1e9:.2f} B")
    _console().print(table)


@app.command()
def gpus(fmt: o.FormatOpt = "table") -> None:
    """List the GPU catalog: CUDA-visible memory, bandwidth, dense bf16 TFLOPS, price."""
    from rich.table import Table

    from gpu_catalog import list_gpus

    from .report.units import gib

    _check_format(fmt)
    entries = list_gpus()
    if fmt == "json":
        typer.echo(_json([g.model_dump() for g in entries]))
        return
    table = Table(title=f"{len(entries)} GPUs")
    for col, just in [("id", "left"), ("name", "left"), ("memory (CUDA)", "right"), ("GB/s", "right"),
                      ("bf16 TFLOPS", "right"), ("$/GPU-h", "right")]:  # fmt: skip
        table.add_column(col, justify=just)
    for g in entries:
        mem = gib(g.memory_bytes) + ("*" if g.memory_bytes_estimated else "")
        tflops = f"{g.bf16_tflops:g}" if g.bf16_tflops else "—"
        price = f"{g.price_usd_per_hour:.2f}" if g.price_usd_per_hour is not None else "—"
        table.add_row(g.id, g.name, mem, f"{g.bandwidth_gbps:g}", tflops, price)
    if any(g.memory_bytes_estimated for g in entries):
        table.caption = "* estimated: the marketed size minus a typical reservation, not a CUDA reading; — : no sourced value"
        table.caption_justify = "left"
    _console().print(table)


@app.command()
def measure(
    model: o.Model,
    method: o.MethodOpt,
    lora_rank: o.LoraRank = 16,
    lora_alpha: o.LoraAlpha = None,
    lora_dropout: o.LoraDropout = 0.05,
    lora_targets: o.LoraTargets = "all-linear",
    quant: o.QuantOpt = None,
    double_quant: o.DoubleQuant = True,
    seq_len: o.SeqLen = 2048,
    batch_size: o.BatchSize = 1,
    grad_accum: o.GradAccum = 1,
    grad_ckpt: o.GradCkpt = None,
    optimizer: o.OptimizerOpt = "adamw_torch_fused",
    dtype: o.DtypeOpt = "bf16",
    attn: o.AttnOpt = "sdpa",
    expandable_segments: o.Expandable = False,
    stack: o.StackOpt = "hf",
    liger: o.LigerOpt = False,
    packing: o.PackingOpt = False,
    steps: Annotated[int, typer.Option("--steps", help="optimizer steps to run (>= 2: step 0 and steady state)")] = 3,
    runs_dir: Annotated[Optional[str], typer.Option("--runs-dir", help="where the run record goes")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="JSONL file of {\"text\": ...} (default synthetic)")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="local tokenizer folder for --data")] = None,
    model_path: Annotated[Optional[str], typer.Option("--model-path", help="local checkpoint folder")] = None,
    memory_cap_gib: Annotated[
        Optional[float], typer.Option("--memory-cap-gib", help="simulate a smaller card (per-process fraction)")
    ] = None,
    memory_snapshot: Annotated[
        Optional[str],
        typer.Option("--memory-snapshot", help="also write the allocator's history (pickle for pytorch.org/memory_viz)"),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="cuda (default; refused without a CUDA device) | cpu (a slow check, no memory)")
    ] = "cuda",
    fmt: o.FormatOpt = "table",
) -> None:
    """Run a short real training job and record measured memory and throughput as a run record."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .api import estimate_for
    from .report.units import gib
    from .runs import user_runs_dir

    _check_format(fmt)
    if data and not tokenizer:
        _fail("--data needs --tokenizer (a local tokenizer folder)")
    try:
        setup = o.setup_from(locals(), num_gpus=1, parallel=None)
        predicted = estimate_for(model, setup)
    except VramplanError as exc:
        _fail(str(exc))
    from .trainer import requirements
    from .trainer.stacks import check_stack_installed

    try:
        requirements.require_stack()
        requirements.require_bitsandbytes(setup.method, setup.optimizer)
        check_stack_installed(setup)  # trl/datasets, liger-kernel; unsloth is not measurable
        requirements.check_device(device)
    except VramplanError as exc:
        _fail(str(exc))
    from .trainer import measure_in_subprocess

    target = runs_dir or str(user_runs_dir())
    child_env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else None
    # the random QLoRA checkpoint lives in a folder removed on every exit path, unless the user keeps a cache
    with requirements.checkpoint_cache() as cache, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task("starting", total=None)
        try:
            run = measure_in_subprocess(
                model, setup, steps, model_path=model_path, data=data, tokenizer=tokenizer,
                memory_cap_gib=memory_cap_gib, runs_dir=target, memory_snapshot=memory_snapshot,
                checkpoint_cache=cache, env=child_env,
                progress=lambda line: bar.update(task, description=line.strip()[:80]),
            )  # fmt: skip
        except VramplanError as exc:
            _fail(str(exc))
    m = run.measurements
    shown = predicted.calibrated or predicted.memory
    if fmt == "json":
        doc = {"run": run.model_dump(mode="json"), "predicted": {
            "peak_allocated_bytes": shown.peak_allocated_bytes,
            "peak_reserved_bytes": shown.peak_reserved_bytes,
            "device_peak_bytes": shown.device_peak_bytes,
        }, "runs_dir": target}  # fmt: skip
        typer.echo(_json(doc))
        return
    from rich.table import Table

    table = Table(title=f"{run.run_id}" + ("  — OUT OF MEMORY in " + str(m.oom_phase) if m.oom else ""))
    for col in ("total", "predicted", "measured"):
        table.add_column(col, justify="left" if col == "total" else "right")
    for label, pred, meas in [
        ("peak allocated", shown.peak_allocated_bytes, m.max_allocated_bytes),
        ("peak reserved", shown.peak_reserved_bytes, m.max_reserved_bytes),
        ("device peak", shown.device_peak_bytes, m.device_peak_bytes),
    ]:
        table.add_row(label, gib(pred), gib(meas))
    console = _console()
    console.print(table)
    speed = f"{m.tokens_per_s:,.0f} tokens/s" if m.tokens_per_s else "no throughput (no steady step)"
    console.print(f"{speed}; record written under {target}")


# the commands over run records (validate, calibrate) live in cli_records.py
app.command()(cli_records.validate)
app.command()(cli_records.calibrate)


def main() -> None:
    """The typer app as a program (entry.py runs `estimate`, `fit` and `plan` without it when its fast parser
    understands the command line). click's usage errors (a non-integer for an integer flag, an unknown flag, a
    missing option) become one line on stderr and exit code 2, as domain errors do."""
    try:
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover - typer before it vendored click
        from click import exceptions as click_errors  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        code = 2
    except click_errors.UsageError as exc:
        typer.echo(f"error: {exc.format_message().splitlines()[0]}", err=True)
        code = 2
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 1
    except BrokenPipeError:  # `vramplan estimate ... | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaced for the interpreter's final flush
        code = 1
    except VramplanError as exc:  # pragma: no cover - commands catch their own
        typer.echo(f"error: {exc}", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)
