#!/usr/bin/env python3
"""Measurement campaign: run a grid of short training runs, one fresh process each, on this GPU.

Usage (from the repository root; runs on any single NVIDIA GPU):

    python scripts/campaign.py --list                       # the grid with indices, nothing run
    python scripts/campaign.py --out out/campaign-h100 --budget-s 540
    python scripts/campaign.py --only l8-lora-gc,l1-full    # names (comma list, fnmatch globs ok)
    python scripts/campaign.py --start 10 --limit 5

Each run is ``vramplan.trainer.measure_in_subprocess``: a fresh process with
PYTORCH_CUDA_ALLOC_CONF set for the run (so allocator options and memory statistics start clean),
a per-run timeout, and the record saved as ``<out>/<gpu-id>/<run_id>.json``. "Fresh process" is a
fork of a warm server that has imported torch/transformers but never touched CUDA
(``vramplan/trainer/forkserver.py``; ~7 s instead of ~22 s for a 1B run, same numbers), or a new
interpreter for expandable_segments runs (``--no-fork-server``: always). The grid is ordered
by priority, so a campaign cut short by ``--budget-s`` still has the core runs. Progress goes to
``<out>/campaign-progress.jsonl``; running again with the same ``--out`` resumes (runs already
done are not repeated) and the summary (``<out>/campaign-summary.txt``, also printed) covers
every run of that directory. Runs whose parameters alone cannot fit the GPU are skipped.
QLoRA runs first build a random bf16 checkpoint of the model (once, cached in
``--checkpoint-cache``) and the cache entry is deleted after the model's last QLoRA run.

The driver never imports torch, so it holds no GPU memory while a run measures.

On the device tool (10 minutes a call) run it in slices: ``bash scripts/device_campaign.sh
--budget-s 540`` per call; each call packs ``out/campaign`` into ``$OUT/campaign.tgz``. On a warm
machine the next call resumes from ``out/campaign``; on a fresh one, unpack the last tgz into
``out/campaign`` here and name it in ``carry`` so the progress file travels.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "scripts"):  # vramplan, and campaign_grids.py beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from vramplan.runs import read_run
from vramplan.specs import TrainingSetup, setup_label
from vramplan.trainer.errors import MeasurementError
from vramplan.trainer.forkserver import ForkServer, ForkServerError
from vramplan.trainer.gpu_memory import nvml_device_index
from vramplan.trainer.worker import default_checkpoint_cache, measure_in_subprocess

GIB = 2**30


# ============================================================================ the grids (campaign_grids.py)
from campaign_grids import (  # noqa: E402, F401  (re-exported: campaign_multi.py and the tests use campaign.X)
    G2, G3_1, G3_4, L1, L3, L3B, L8, M7, OLMOE, PHI3, Q05, Q3_8, Q3_MOE, Q7, CapFrom, RunSpec, full, holdout_grid,
    ckpt_backward_holdout_grid, default_rule_holdout_grid, families_holdout_grid, issue3_grid, lora,
    no_grad_holdout_grid, qlora, qwen3_holdout_grid, simulated_holdout_grid, stacks_grid, tail_grid, timing_grid,
    unsloth_gemma3_pattern_holdout_grid, unsloth_gemma_grid, unsloth_gemma_holdout_grid, unsloth_grid,
)

#: grid name -> the function (looked up by name at run time, so tests can replace a grid)
GRIDS = {"issue3": "issue3_grid", "holdout": "holdout_grid", "stacks": "stacks_grid", "unsloth": "unsloth_grid",
         "timing": "timing_grid", "tail": "tail_grid",
         "sim": "simulated_holdout_grid", "default": "default_rule_holdout_grid",
         "nograd": "no_grad_holdout_grid", "ckptbwd": "ckpt_backward_holdout_grid",
         "families": "families_holdout_grid", "qwen3": "qwen3_holdout_grid",
         "unsloth-gemma": "unsloth_gemma_grid", "unsloth-gemma2": "unsloth_gemma_holdout_grid",
         "unsloth-gemma3": "unsloth_gemma3_pattern_holdout_grid"}


# ============================================================================ GPU and size checks
def gpu_info() -> dict[str, Any] | None:
    """Name and total bytes of CUDA device 0 through NVML (creates no CUDA context); None if unknown."""
    try:
        import pynvml
    except ImportError:
        print("warning: nvidia-ml-py not installed: no size check, records under 'cpu' if no GPU", file=sys.stderr)
        return None
    try:
        pynvml.nvmlInit()
        index = nvml_device_index(0)
        if index is None:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        return {"name": name, "total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)}
    except pynvml.NVMLError as exc:
        print(f"warning: no GPU through NVML ({exc})", file=sys.stderr)
        return None


def param_counts(models: list[str]) -> dict[str, int]:
    """Exact parameter counts (meta-device build) from one worker process without a GPU."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "vramplan.trainer.worker", "params", *models],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        print(f"warning: parameter counts unavailable ({proc.stderr.strip()[-300:]})", file=sys.stderr)
        return {}
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, value in raw.items():
        if not isinstance(value, int):
            print(f"warning: {name}: {value}", file=sys.stderr)
    return {k: v for k, v in raw.items() if isinstance(v, int)}


def cached_param_counts(path: Path, models: list[str]) -> dict[str, int]:
    """param_counts, remembered in ``path`` so a resumed campaign does not count again."""
    known: dict[str, int] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [m for m in models if m not in known]
    if missing:
        known |= param_counts(missing)
        path.write_text(json.dumps(known, indent=1))
    return known


def lower_bound_bytes(params: int, setup: TrainingSetup) -> int:
    """Bytes that must be on the GPU whatever the activations: a skip filter, not an estimate.

    Weights at their stored width (nf4 0.5 B, int8 1 B); for full FT also gradients (same dtype)
    and resident optimizer states (AdamW 2x param dtype, bnb 8-bit 2 B; paged states can leave
    the GPU so count 0; SGD momentum 1x).
    """
    width = {"bf16": 2, "fp16": 2, "fp32": 4}[setup.dtype]
    if setup.method == "qlora":
        return int(params * (1.0 if setup.quant == "int8" else 0.5))
    if setup.method == "lora":
        return params * width
    states = {
        "adamw_torch_fused": 2 * width,
        "adamw_torch": 2 * width,
        "adamw_8bit": 2,
        "paged_adamw_8bit": 0,
        "paged_adamw_32bit": 0,
        "adafactor": 0,
        "sgd": width,
    }[setup.optimizer]
    return params * (2 * width + states)


def estimate_seconds(spec: RunSpec, params: int | None, *, first_qlora_of_model: bool, forked: bool) -> float:
    """Rough wall time of one run on an H100, for planning only. From the smoke runs of
    2026-11-23 (H100, torch 2.11; l1-full 7.3 s forked vs 22-24 s as a new interpreter): a new
    interpreter spends ~17 s importing the stack (a fork of the warm server ~4 s: Trainer, peft,
    bitsandbytes are imported by the child), CUDA init + step-0 warm-up ~3 s, build from config
    ~0.25 s/B params, QLoRA load+quantize ~1 s/B, the random checkpoint (once per model)
    ~10 s + 2.5 s/B, and training ~(steps x tokens x 6 x params) / 200 TFLOP/s (x1.33 with GC)."""
    b = (params or 1e9) / 1e9
    s = spec.setup
    new_process = not forked or s.expandable_segments
    t = (17.0 if new_process else 4.0) + 3.0 + (1.0 * b if s.method == "qlora" else 0.25 * b)
    if s.method == "qlora" and first_qlora_of_model:
        t += 10.0 + 2.5 * b + (0.0 if forked else 17.0)
    tokens = s.seq_len * s.batch_size * s.grad_accum * spec.steps
    t += tokens * 6 * (params or 1e9) * (1.33 if s.grad_ckpt else 1.0) / 200e12
    return t


def estimate_total_seconds(runs: list[RunSpec], params: dict[str, int], *, forked: bool) -> float:
    seen: set[str] = set()
    total = 0.0
    for r in runs:
        first = r.setup.method == "qlora" and r.model not in seen
        if r.setup.method == "qlora":
            seen.add(r.model)
        total += estimate_seconds(r, params.get(r.model), first_qlora_of_model=first, forked=forked)
    return total


# ============================================================================ driver
def select(grid: list[RunSpec], only: str | None, start: int, limit: int | None) -> list[RunSpec]:
    chosen = grid
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]
        chosen = [r for r in grid if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
        unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(r.name, p) for r in grid)]
        if unknown:
            raise SystemExit(f"--only: no run named {', '.join(unknown)} (see --list)")
    chosen = chosen[start:]
    return chosen[:limit] if limit is not None else chosen


def settings(spec: RunSpec) -> str:
    return setup_label(spec.setup)


def failure_entry(base: dict[str, Any], exc: Exception, started: float, budget_bound: bool) -> dict[str, Any]:
    """Progress entry of a run that did not finish: timed out (within the budget or not) or failed."""
    timed_out = "timed out" in str(exc)
    status = "budget" if timed_out and budget_bound else "timeout" if timed_out else "failed"
    return {
        **base,
        "status": status,
        "error": str(exc).splitlines()[0][:300],
        "wall_s": round(time.monotonic() - started, 1),
    }


def load_progress(path: Path) -> dict[str, dict[str, Any]]:
    """name -> last progress entry (later lines win)."""
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that run is simply redone
            entries[entry["name"]] = entry
    return entries


def append_progress(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def resolve_cap(spec: RunSpec, progress: dict[str, dict[str, Any]]) -> tuple[float | None, str | None]:
    """(cap in GiB, reason when it cannot be resolved)."""
    if spec.cap_from is None:
        return spec.cap_gib, None
    ref = progress.get(spec.cap_from.ref)
    if not ref or ref.get("status") != "ok" or not ref.get("record"):
        return None, f"reference run {spec.cap_from.ref} has no successful record"
    value = getattr(read_run(ref["record"]).measurements, spec.cap_from.measurement)
    if value is None:
        return None, f"reference run {spec.cap_from.ref} has no {spec.cap_from.measurement}"
    return (value * spec.cap_from.factor + spec.cap_from.add_mib * 2**20) / GIB, None


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def entry_from_run(spec: RunSpec, run, record: Path, wall_s: float, cap_gib: float | None) -> dict[str, Any]:
    m = run.measurements
    return {
        "name": spec.name,
        "status": "oom" if m.oom else "ok",
        "model": spec.model,
        "settings": settings(spec),
        "cap_gib": cap_gib,
        "run_id": run.run_id,
        "record": str(record),
        "max_allocated_bytes": m.max_allocated_bytes,
        "max_reserved_bytes": m.max_reserved_bytes,
        "device_peak_bytes": m.device_peak_bytes,
        "tokens_per_s": m.tokens_per_s,
        "oom": m.oom,
        "oom_phase": m.oom_phase,
        "wall_s": round(wall_s, 1),
    }


def summary_lines(grid: list[RunSpec], progress: dict[str, dict[str, Any]]) -> list[str]:
    order = {r.name: i for i, r in enumerate(grid)}
    header = (
        f"{'#':>3} {'run':<28} {'model':<24} {'settings':<58} {'alloc':>7} {'resv':>7} {'device':>7} "
        f"{'tok/s':>8} {'oom':<10} {'wall':>6} status"
    )
    lines = [header + "   (GiB)", "-" * len(header)]
    for name, e in sorted(progress.items(), key=lambda kv: order.get(kv[0], 10**6)):
        tps = e.get("tokens_per_s")
        oom = (
            ("yes:" + (e.get("oom_phase") or "?"))
            if e.get("oom")
            else "no"
            if e.get("status") in ("ok", "oom")
            else "-"
        )
        settings_text = e.get("settings", "") + (f" cap{e['cap_gib']:.2f}g" if e.get("cap_gib") else "")
        status = e.get("status", "?") + (f" ({e['error'][:80]})" if e.get("error") else "")
        lines.append(
            f"{order.get(name, -1):>3} {name:<28} {e.get('model', ''):<24} {settings_text:<58} "
            f"{_gib(e.get('max_allocated_bytes')):>7} {_gib(e.get('max_reserved_bytes')):>7} "
            f"{_gib(e.get('device_peak_bytes')):>7} {('-' if tps is None else f'{tps:.0f}'):>8} {oom:<10} "
            f"{e.get('wall_s', 0):>6} {status}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output dir (default out/campaign-<gpu>)")
    parser.add_argument("--only", help="comma list of run names or globs")
    parser.add_argument("--start", type=int, default=0, help="skip the first N selected runs")
    parser.add_argument("--limit", type=int, default=None, help="run at most N selected runs")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting runs after this many seconds")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per run (each child process)")
    parser.add_argument("--steps", type=int, default=None, help="override the optimizer steps of every run")
    parser.add_argument("--checkpoint-cache", type=Path, default=None, help="QLoRA random checkpoints")
    parser.add_argument("--keep-checkpoints", action="store_true", help="do not delete cached QLoRA checkpoints")
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs that failed or timed out")
    parser.add_argument("--no-size-check", action="store_true", help="do not skip runs too big for the GPU")
    parser.add_argument("--no-fork-server", action="store_true", help="start every run as a new interpreter")
    parser.add_argument(
        "--snapshots", action="store_true", help="record each run's allocator history to <out>/snapshots/<name>.pickle"
    )
    parser.add_argument("--grid", choices=sorted(GRIDS), default="issue3", help="which run grid (default issue3)")
    parser.add_argument("--list", action="store_true", help="print the selected grid and exit")
    args = parser.parse_args(argv)

    grid = globals()[GRIDS[args.grid]]()
    chosen = select(grid, args.only, args.start, args.limit)
    if args.list:
        for r in chosen:
            print(f"{grid.index(r):>3} {r.name:<28} {r.model:<24} {settings(r):<58} {r.why}")
        print(f"{len(chosen)} runs, {len({r.model for r in chosen})} models")
        return 0

    t0 = time.monotonic()
    gpu = gpu_info()
    slug = "cpu" if gpu is None else "".join(c if c.isalnum() else "-" for c in gpu["name"].lower()).strip("-")
    out: Path = args.out or ROOT / "out" / f"campaign-{slug}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    progress_path = out / "campaign-progress.jsonl"
    progress = load_progress(progress_path)
    cache = args.checkpoint_cache or default_checkpoint_cache()
    print(f"gpu: {gpu or 'none (CPU run)'}; out: {out}; checkpoint cache: {cache}", flush=True)

    done_status = {"ok", "oom", "skipped"} | (set() if args.retry_failed else {"failed", "timeout"})
    todo = [r for r in chosen if progress.get(r.name, {}).get("status") not in done_status]
    params = cached_param_counts(out / "params.json", sorted({r.model for r in todo})) if todo else {}
    last_qlora_use = {r.model: i for i, r in enumerate(todo) if r.setup.method == "qlora"}
    server = None
    if todo and not args.no_fork_server:
        try:
            server = ForkServer()
            print("fork server ready (runs fork from it; expandable_segments runs start a new interpreter)", flush=True)
        except MeasurementError as exc:
            print(f"warning: no fork server, every run starts a new interpreter: {exc}", file=sys.stderr)
    estimate = estimate_total_seconds(todo, params, forked=server is not None)
    print(
        f"{len(todo)} runs to do ({len(chosen) - len(todo)} already done); rough estimate {estimate / 60:.1f} min",
        flush=True,
    )

    stopped = None
    qlora_seen: set[str] = set()
    try:
        for i, spec in enumerate(todo):
            first_qlora = spec.setup.method == "qlora" and spec.model not in qlora_seen
            if spec.setup.method == "qlora":
                qlora_seen.add(spec.model)
            expected = estimate_seconds(
                spec, params.get(spec.model), first_qlora_of_model=first_qlora, forked=server is not None
            )
            left = None if args.budget_s is None else args.budget_s - (time.monotonic() - t0)
            if left is not None and left < max(15.0, 1.3 * expected):
                stopped = f"budget of {args.budget_s:.0f} s reached; {len(todo) - i} runs left"
                break
            base = {"name": spec.name, "model": spec.model, "settings": settings(spec)}
            cap_gib, cap_problem = resolve_cap(spec, progress)
            n_params = params.get(spec.model)
            if cap_problem:
                entry = {**base, "status": "skipped", "error": cap_problem}
            elif (
                gpu
                and n_params
                and not args.no_size_check
                and (lower_bound_bytes(n_params, spec.setup) > 0.97 * gpu["total_bytes"])
            ):
                need = lower_bound_bytes(n_params, spec.setup) / GIB
                entry = {**base, "status": "skipped", "error": f"needs >= {need:.0f} GiB before activations"}
            else:
                steps = args.steps or spec.steps
                timeout = args.timeout_s
                budget_bound = False
                if args.budget_s is not None:
                    left = args.budget_s - (time.monotonic() - t0)
                    if left < timeout:
                        timeout, budget_bound = max(left, 1.0), True
                print(
                    f"[{i + 1}/{len(todo)}] {spec.name}: {spec.model} {settings(spec)}"
                    + (f" cap {cap_gib:.2f} GiB" if cap_gib else ""),
                    flush=True,
                )
                started = time.monotonic()

                def measure(srv: ForkServer | None, spec=spec, steps=steps, cap_gib=cap_gib, timeout=timeout):
                    return measure_in_subprocess(
                        spec.model,
                        spec.setup,
                        steps,
                        memory_cap_gib=cap_gib,
                        checkpoint_cache=cache,
                        runs_dir=out,
                        timeout_s=timeout,
                        notes=f"campaign {args.grid}: {spec.name}",
                        progress=lambda msg: print(f"    {msg}", flush=True),
                        log_path=out / "logs" / f"{spec.name}.log",
                        server=srv,
                        memory_snapshot=out / "snapshots" / f"{spec.name}.pickle" if args.snapshots else None,
                    )

                try:
                    try:
                        run = measure(server)
                    except ForkServerError as exc:
                        print(f"    fork server lost ({exc}); new interpreters from now on", flush=True)
                        server.close()
                        server = None
                        run = measure(None)
                    record = _record_path(out, run)
                    entry = entry_from_run(spec, run, record, time.monotonic() - started, cap_gib)
                except MeasurementError as exc:
                    entry = failure_entry(base, exc, started, budget_bound)
            append_progress(progress_path, entry)
            progress[spec.name] = entry
            print(f"    -> {entry['status']}" + (f": {entry['error']}" if entry.get("error") else ""), flush=True)
            if spec.setup.method == "qlora" and last_qlora_use.get(spec.model) == i and not args.keep_checkpoints:
                _drop_checkpoints(cache, spec.model)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        if server is not None:
            server.close()
        write_summary(out, summary_lines(grid, progress), stopped, t0)
    return 0


def write_summary(out: Path, lines: list[str], stopped: str | None, t0: float) -> None:
    """Print the summary and write it to <out>/campaign-summary.txt (what comes back from the device)."""
    lines = [*lines, *([f"stopped: {stopped}"] if stopped else []), f"wall time this call: {time.monotonic() - t0:.0f} s"]
    text = "\n".join(lines) + "\n"
    (out / "campaign-summary.txt").write_text(text, encoding="utf-8")
    print(text, flush=True)


def _record_path(out: Path, run) -> Path:
    """The file save_run wrote for ``run`` (a suffix is possible, so look it up by run_id)."""
    from vramplan.runs import run_path

    path = run_path(run, out)
    candidates = sorted(path.parent.glob(f"{path.stem}*.json"))
    return candidates[-1] if candidates else path


def _drop_checkpoints(cache: Path, model: str) -> None:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in model)
    for folder in Path(cache).glob(f"{safe}-*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            print(f"    removed cached checkpoint {folder}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
