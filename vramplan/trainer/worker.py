"""Run measurements in fresh processes: ``measure_in_subprocess`` and the worker entry point.

A fresh process per measurement is needed because PyTorch reads its allocator options
(``PYTORCH_CUDA_ALLOC_CONF``) once, at CUDA initialization, and because memory statistics,
the CUDA context and the NVML baseline must start clean. The parent never imports torch, so
it holds no GPU memory while the child measures.

Entry point (used by ``measure_in_subprocess`` and scripts/campaign.py)::

    python -m vramplan.trainer.worker measure --request REQ.json --out RECORD.json
    torchrun ... -m vramplan.trainer.worker measure-rank --request REQ.json --out-dir DIR  # one rank
    python -m vramplan.trainer.worker measure-fake-rank --request REQ.json --out RECORD.json --world-size N
    python -m vramplan.trainer.worker checkpoint --request REQ.json   # QLoRA random checkpoint
    python -m vramplan.trainer.worker params MODEL [MODEL ...]         # exact parameter counts (JSON)

Exit codes: 0 done (an OOM is a successful measurement), 2 a request that cannot be measured
(message on stderr), 1 anything else (traceback on stderr); ``measure-rank`` exits with
``distributed.OOM_EXIT_CODE`` after writing an out-of-memory record, so torchrun stops the
other ranks.

Setups with ``num_gpus > 1`` are measured by ``measure_in_subprocess`` through torchrun
(``distributed.py``): one ``measure-rank`` process per GPU, records merged by the parent.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import vramplan
from vramplan.errors import VramplanError
from vramplan.specs import MeasuredRun, Spec, TrainingSetup
from vramplan.specs.fields import Field

from .distributed import OOM_EXIT_CODE, RANK_RECORD, DistContext, check_parallel, launch_env, measure_ranks
from .environment import allocator_env_for, default_checkpoint_cache
from .errors import MeasurementError
from .forkserver import ForkServer

#: lines of worker output kept for error messages
_TAIL_LINES = 40


class MeasureRequest(Spec):
    """Everything a worker process needs for one measurement (the JSON it reads)."""

    model: str
    setup: TrainingSetup
    steps: int = Field(default=3, gt=0, le=10_000)
    model_path: str | None = None
    config: dict[str, Any] | None = None
    data: str | None = None
    tokenizer: str | None = None
    memory_cap_gib: float | None = Field(default=None, gt=0)
    checkpoint_cache: str | None = None
    notes: str = ""
    memory_snapshot: str | None = None


# ---------------------------------------------------------------------------- child side
def _measure_request(request_path: str, progress: Callable[[str], None]) -> MeasuredRun:
    """Run the measurement a request file describes (in this process)."""
    from .run import run_measurement

    req = MeasureRequest.model_validate_json(Path(request_path).read_text(encoding="utf-8"))
    return run_measurement(
        req.model,
        req.setup,
        steps=req.steps,
        model_path=req.model_path,
        config=req.config,
        data=req.data,
        tokenizer=req.tokenizer,
        memory_cap_gib=req.memory_cap_gib,
        checkpoint_cache=req.checkpoint_cache,
        progress=progress,
        notes=req.notes,
        memory_snapshot=req.memory_snapshot,
    )


def _write_record(run: MeasuredRun, out: Path) -> None:
    """Atomic write of one record (tmp file + rename in the same folder)."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(run.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, out)


def _cmd_measure(request_path: str, out_path: str) -> int:
    run = _measure_request(request_path, lambda message: print(f"[vramplan] {message}", file=sys.stderr, flush=True))
    _write_record(run, Path(out_path))
    m = run.measurements
    print(f"[vramplan] done: oom={m.oom} max_allocated={m.max_allocated_bytes}", file=sys.stderr, flush=True)
    return 0


def _cmd_measure_rank(request_path: str, out_dir: str) -> int:
    """One rank of a torchrun launch: measure, write ``rank<R>.json`` into ``out_dir``."""
    ctx = DistContext.from_env()

    def say(message: str) -> None:
        if ctx.rank == 0:
            print(f"[vramplan] {message}", file=sys.stderr, flush=True)

    run = _measure_request(request_path, say)
    _write_record(run, Path(out_dir) / RANK_RECORD.format(rank=ctx.rank))
    m = run.measurements
    print(
        f"[vramplan] rank {ctx.rank} done: oom={m.oom} max_allocated={m.max_allocated_bytes} "
        f"max_reserved={m.max_reserved_bytes} device_peak={m.device_peak_bytes}",
        file=sys.stderr,
        flush=True,
    )
    if m.oom:
        return OOM_EXIT_CODE
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _cmd_measure_fake_rank(request_path: str, out_path: str, world_size: int) -> int:
    """Rank 0 of a ``world_size``-process launch alone, over the fake process group (``fake_rank.py``)."""
    from .fake_rank import FAKE_PROCESS_GROUP, FAKE_RANK_NOTE, start_fake_world

    start_fake_world(world_size)
    run = _measure_request(request_path, lambda message: print(f"[vramplan] {message}", file=sys.stderr, flush=True))
    notes = "; ".join(n for n in (run.notes, FAKE_RANK_NOTE.format(world=world_size)) if n)
    run = run.model_copy(update={"notes": notes, "extra": {**run.extra, "process_group": FAKE_PROCESS_GROUP}})
    _write_record(run, Path(out_path))
    m = run.measurements
    print(
        f"[vramplan] fake rank 0 of {world_size} done: oom={m.oom} max_allocated={m.max_allocated_bytes} "
        f"max_reserved={m.max_reserved_bytes}",
        file=sys.stderr,
        flush=True,
    )
    return 0


def _raw_config_for(req: MeasureRequest) -> dict[str, Any]:
    if req.config is not None:
        return req.config
    from vramplan.models import load_raw_config

    return load_raw_config(req.model)


def _cmd_checkpoint(request_path: str) -> int:
    import torch

    from .build import ensure_checkpoint

    req = MeasureRequest.model_validate_json(Path(request_path).read_text(encoding="utf-8"))
    cache = req.checkpoint_cache or str(default_checkpoint_cache())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = ensure_checkpoint(_raw_config_for(req), cache, name=req.model, device=device)
    print(str(path))
    return 0


def _cmd_params(models: Sequence[str]) -> int:
    from vramplan.models import load_raw_config

    from .build import count_params

    counts: dict[str, int | str] = {}
    for name in models:
        try:
            counts[name] = count_params(load_raw_config(name))
        except (VramplanError, ValueError, KeyError) as exc:  # report per model; the caller decides
            counts[name] = f"error: {exc}"
    print(json.dumps(counts))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vramplan.trainer.worker", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_measure = sub.add_parser("measure", help="run one measurement and write its record")
    p_measure.add_argument("--request", required=True)
    p_measure.add_argument("--out", required=True)
    p_rank = sub.add_parser("measure-rank", help="one rank of a multi-GPU measurement (started by torchrun)")
    p_rank.add_argument("--request", required=True)
    p_rank.add_argument("--out-dir", required=True)
    p_fake = sub.add_parser("measure-fake-rank", help="rank 0 of an N-GPU launch alone, over a fake process group")
    p_fake.add_argument("--request", required=True)
    p_fake.add_argument("--out", required=True)
    p_fake.add_argument("--world-size", type=int, required=True)
    p_ckpt = sub.add_parser("checkpoint", help="build (once) the random QLoRA checkpoint of a request")
    p_ckpt.add_argument("--request", required=True)
    p_params = sub.add_parser("params", help="print exact parameter counts of catalog models as JSON")
    p_params.add_argument("models", nargs="+")
    sub.add_parser("serve", help="fork server: preload the stack, fork a child per job (forkserver.py)")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from .forkserver import serve

            return serve(main)
        if args.command == "measure":
            return _cmd_measure(args.request, args.out)
        if args.command == "measure-rank":
            return _cmd_measure_rank(args.request, args.out_dir)
        if args.command == "measure-fake-rank":
            return _cmd_measure_fake_rank(args.request, args.out, args.world_size)
        if args.command == "checkpoint":
            return _cmd_checkpoint(args.request)
        return _cmd_params(args.models)
    except VramplanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------- parent side
def child_env(base: dict[str, str] | None) -> dict[str, str]:
    """The environment of a worker process: ``base`` (default: ours) plus this package on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    root = str(Path(vramplan.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    return env


def _run_child(
    args: list[str],
    *,
    env: dict[str, str],
    timeout_s: float | None,
    progress: Callable[[str], None] | None,
    log_path: Path | None,
) -> tuple[int, list[str]]:
    """Run a child process, streaming its output lines to ``progress`` and ``log_path``.

    Returns (exit code, last lines). On timeout the child's whole process group is killed and
    MeasurementError raised.
    """
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "a", encoding="utf-8")) if log_path else None
        return _supervise(args, env=env, timeout_s=timeout_s, progress=progress, log=log, tail=tail)


def _supervise(args, *, env, timeout_s, progress, log, tail) -> tuple[int, list[str]]:
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # own process group: a timeout kills the child and its children
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if log:
                log.write(line + "\n")
                log.flush()
            if progress and line.startswith("[vramplan]"):
                progress(line.removeprefix("[vramplan] "))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        reader.join(timeout=5)
        raise MeasurementError(
            f"measurement timed out after {timeout_s:g} s; last output:\n" + "\n".join(list(tail)[-10:])
        ) from None
    reader.join(timeout=5)
    return code, list(tail)


def _read_child_record(code: int, tail: list[str], out_path: Path) -> MeasuredRun:
    """The record a ``measure`` child wrote, or its error (its ``error:`` line on exit 2, else its output's tail)."""
    if code != 0 or not out_path.is_file():
        errors = [line for line in tail if line.startswith("error: ")]
        detail = errors[-1].removeprefix("error: ") if code == 2 and errors else "\n".join(tail[-15:])
        raise MeasurementError(f"measurement failed (exit {code}): {detail}")
    return MeasuredRun.model_validate_json(out_path.read_text(encoding="utf-8"))


def measure_in_subprocess(
    model: str,
    setup: TrainingSetup,
    steps: int = 3,
    *,
    model_path: str | Path | None = None,
    config: dict[str, Any] | None = None,
    data: str | Path | None = None,
    tokenizer: str | Path | None = None,
    memory_cap_gib: float | None = None,
    checkpoint_cache: str | Path | None = None,
    runs_dir: str | Path | None = None,
    timeout_s: float | None = None,
    python: str | None = None,
    env: dict[str, str] | None = None,
    notes: str = "",
    progress: Callable[[str], None] | None = None,
    log_path: str | Path | None = None,
    server: ForkServer | None = None,
    memory_snapshot: str | Path | None = None,
    fake_rank: bool = False,
) -> MeasuredRun:
    """Measure in a fresh Python process with the allocator config of ``setup``; return the record
    (and save it under ``runs_dir`` when given, via ``vramplan.runs.save_run``).

    With ``server`` (a running ``ForkServer``) the process is a fork of that warm server when its
    allocator options match the run's, which saves the ~16 s import of the training stack;
    otherwise it is a new interpreter.

    For QLoRA without ``model_path`` a random bf16 checkpoint is first built in a separate child
    (on the GPU, fast) and cached under ``checkpoint_cache`` (default
    ``default_checkpoint_cache()``), so the measuring child only loads and quantizes it.
    ``timeout_s`` bounds each child. ``memory_snapshot``: see ``run_measurement`` (one GPU only: a single-GPU
    setup, or DeepSpeed at world size 1).

    A setup with ``num_gpus > 1`` is launched with torchrun, one rank per GPU, each a new
    interpreter (the fork server is not used), and the ranks' records are merged into one
    (``distributed.merge_rank_runs``: per-GPU peaks, per-rank values in ``extra``). With ``fake_rank``
    only rank 0 runs, alone on one GPU over torch's fake process group (``fake_rank.py``): the
    allocator history of a multi-GPU run (``memory_snapshot`` allowed), not a measurement of one.

    Raises:
        MeasurementError: the child could not measure (its message, or the tail of its output),
            or it ran past ``timeout_s``.
        ForkServerError: ``server`` died (retry without it).
    """
    if setup.num_gpus > 1 or setup.parallel is not None:
        check_parallel(setup)
        if memory_snapshot is not None and setup.num_gpus > 1 and not fake_rank:  # ZeRO at world size 1: one process
            raise MeasurementError("--memory-snapshot records one process: measure a single-GPU setup")
    if fake_rank and setup.num_gpus < 2:
        raise MeasurementError("a fake rank stands in for a multi-GPU launch: the setup needs --num-gpus 2 or more")
    request = MeasureRequest(
        model=model,
        setup=setup,
        steps=steps,
        model_path=str(model_path) if model_path is not None else None,
        config=config,
        data=str(data) if data is not None else None,
        tokenizer=str(tokenizer) if tokenizer is not None else None,
        memory_cap_gib=memory_cap_gib,
        checkpoint_cache=str(checkpoint_cache or default_checkpoint_cache()),
        notes=notes,
        memory_snapshot=str(Path(memory_snapshot).resolve()) if memory_snapshot is not None else None,
    )
    exe = python or sys.executable
    with tempfile.TemporaryDirectory(prefix="vramplan-measure-") as tmp:
        req_path = Path(tmp) / "request.json"
        out_path = Path(tmp) / "record.json"
        log = Path(log_path) if log_path else Path(tmp) / "worker.log"
        req_path.write_text(request.model_dump_json(), encoding="utf-8")
        base_env = child_env(env)

        def run_worker(argv: list[str], child_env_: dict[str, str]) -> tuple[int, list[str]]:
            if server is not None and server.accepts(child_env_):
                return server.run(argv, env=child_env_, timeout_s=timeout_s, progress=progress, log_path=log)
            return _run_child(
                [exe, "-m", "vramplan.trainer.worker", *argv],
                env=child_env_,
                timeout_s=timeout_s,
                progress=progress,
                log_path=log,
            )

        if setup.stack == "unsloth":  # `import unsloth` must precede transformers: no warm fork-server child
            server = None
        if (setup.method == "qlora" or setup.stack == "unsloth") and model_path is None:
            if progress:
                progress("preparing the random checkpoint (QLoRA quantizes it while loading; Unsloth loads from one)")
            code, tail = run_worker(["checkpoint", "--request", str(req_path)], base_env)
            if code != 0:
                raise MeasurementError("building the QLoRA checkpoint failed:\n" + "\n".join(tail[-15:]))
        if fake_rank:
            argv = ["measure-fake-rank", "--request", str(req_path), "--out", str(out_path)]
            code, tail = _run_child([exe, "-m", "vramplan.trainer.worker", *argv, "--world-size", str(setup.num_gpus)],
                                    env=launch_env(allocator_env_for(setup, base_env)), timeout_s=timeout_s,
                                    progress=progress, log_path=log)  # fmt: skip
            run = _read_child_record(code, tail, out_path)
        elif setup.num_gpus > 1 or setup.parallel is not None:  # DeepSpeed runs under torchrun at world size 1 too
            run = measure_ranks(
                setup,
                req_path,
                Path(tmp),
                run_child=_run_child,
                env=allocator_env_for(setup, base_env),
                python=exe,
                timeout_s=timeout_s,
                progress=progress,
                log_path=log,
            )
        else:
            code, tail = run_worker(
                ["measure", "--request", str(req_path), "--out", str(out_path)], allocator_env_for(setup, base_env)
            )
            run = _read_child_record(code, tail, out_path)
    if runs_dir is not None:
        from vramplan.runs import save_run

        save_run(run, runs_dir)
    return run


if __name__ == "__main__":
    sys.exit(main())
