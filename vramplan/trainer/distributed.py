"""Multi-GPU measurements: one rank per GPU launched by torchrun, merged into one run record.

The distributed engine is the one users run: ``torchrun --standalone --nproc_per_node N`` starts
N copies of the worker (``python -m vramplan.trainer.worker measure-rank ...``); each rank runs
the same ``run_measurement`` as a single-GPU run, on ``cuda:LOCAL_RANK``, and the transformers
Trainer (through accelerate) does all communication:

* ``ddp`` — ``torch.nn.parallel.DistributedDataParallel`` (the Trainer's default when
  WORLD_SIZE > 1), ``ddp_find_unused_parameters=False`` (every trainable parameter gets a
  gradient: LoRA adapters, or all weights);
* ``fsdp`` — accelerate's FSDP2 (``fully_shard``) through ``TrainingArguments(fsdp=...,
  fsdp_config={"version": 2, "reshard_after_forward": True, "transformer_layer_cls_to_wrap":
  [the model's decoder layer class from ``_no_split_modules``]})``: full shard, one unit per
  decoder layer; gradient checkpointing as in single-GPU runs (``gradient_checkpointing``).
  Under bf16 mixed precision accelerate upcasts the trainable parameters to fp32 before
  sharding (``accelerate/utils/fsdp_utils.py::fsdp2_prepare_model``), which the record shows.

* ``zero2`` / ``zero3`` — DeepSpeed through ``TrainingArguments(deepspeed=<config dict>)``
  (``deepspeed_config.py``: the stage and CPU offload; the Trainer fills every "auto" value), also at
  world size 1 (one torchrun rank), where ZeRO-3 with offload shows what stays on the GPU. Needs the
  deepspeed package (a clear ``MeasurementError`` names how to build its wheel).
* QLoRA with FSDP: the 4-bit weights are stored in bf16 elements (``bnb_4bit_quant_storage``, build.py)
  so FSDP can flatten them with the other bf16 parameters, as the PEFT/accelerate QLoRA-FSDP guides do.
* ``--offload all`` with FSDP: accelerate's ``offload_params`` (FSDP2 ``CPUOffloadPolicy``).

Each rank's ``MemoryProbe`` measures its own GPU (allocator counters of ``cuda:LOCAL_RANK``, NVML
'used' of that device with its own pre-context baseline) and writes its record as
``rank<R>.json``; the parent merges them after torchrun exits (``merge_rank_runs``): memory
values are the maximum over ranks (the per-GPU peak a plan must fit), each rank's own values are
kept in ``extra`` (``rank1_max_allocated_bytes``, ...), and tokens/s is the global rate (the sum
over ranks). An out-of-memory on one rank ends that rank with ``OOM_EXIT_CODE`` so torchrun stops
the others instead of leaving them in a collective until the NCCL timeout.

This module does not import torch (the parent side runs in the torch-free driver).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramplan.specs import MeasuredRun, Measurements, PhasePeaks, RunEnvironment, TrainingSetup

from .deepspeed_config import ZERO_STAGES, deepspeed_config, is_deepspeed, require_deepspeed
from .errors import MeasurementError

#: strategies the built-in trainer can measure with several GPUs
MEASURABLE = ("ddp", "fsdp", "zero2", "zero3")
#: per-rank record file written by each rank into the shared output folder
RANK_RECORD = "rank{rank}.json"
#: exit code of a rank that ran out of memory (its record is written): non-zero, so torchrun
#: stops the other ranks, which would otherwise wait in a collective until the NCCL timeout
OOM_EXIT_CODE = 3
#: ``TrainingArguments.ddp_timeout`` for measurement runs (seconds; the default is 1800)
DDP_TIMEOUT_S = 600
#: NVLink multicast stays off on shared multi-GPU hosts (the device machines' own setting);
#: set for every rank unless the environment already says otherwise
SAFE_NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
#: per-rank values copied into the merged record's ``extra`` as ``rank<R>_<name>``
PER_RANK_MEASUREMENTS = (
    "max_allocated_bytes",
    "max_reserved_bytes",
    "device_peak_bytes",
    "memory_after_load_bytes",
    "cuda_context_bytes",
    "tokens_per_s",
)
PER_RANK_EXTRA = ("device_baseline_used_bytes", "load_peak_allocated_bytes", "load_peak_reserved_bytes")
#: memory fields of Measurements merged as the maximum over ranks
_MAX_FIELDS = (
    "memory_after_load_bytes",
    "max_allocated_bytes",
    "max_reserved_bytes",
    "device_peak_bytes",
    "cuda_context_bytes",
    "num_alloc_retries",
)


# ============================================================================ rank context
@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a torchrun launch (RANK, LOCAL_RANK, WORLD_SIZE)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistContext:
        env = os.environ if environ is None else environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as exc:
            raise MeasurementError(f"bad torchrun environment (RANK/LOCAL_RANK/WORLD_SIZE): {exc}") from None
        return cls(rank=rank, local_rank=local, world_size=max(world, 1))


def check_parallel(setup: TrainingSetup) -> None:
    """Refuse, with one clear message, what the built-in trainer cannot measure on several GPUs.

    Raises:
        MeasurementError: ZeRO-2/ZeRO-3 (DeepSpeed), QLoRA with FSDP, or several GPUs without a
            measurable strategy.
    """
    if is_deepspeed(setup):
        require_deepspeed()
    if setup.num_gpus > 1 and setup.parallel not in MEASURABLE:
        raise MeasurementError(f"--num-gpus {setup.num_gpus} needs --parallel {'|'.join(MEASURABLE)} to be measured")
    if setup.offload != "none" and setup.parallel == "ddp":
        raise MeasurementError("--offload needs --parallel fsdp|zero2|zero3 (DDP keeps everything on the GPU)")


def check_world(setup: TrainingSetup, ctx: DistContext) -> None:
    """The setup's GPU count must be this launch's world size.

    Raises:
        MeasurementError: a multi-GPU setup outside torchrun (or with another world size), a
            single-GPU setup inside a multi-process launch, or what ``check_parallel`` refuses.
    """
    if setup.num_gpus == 1 and not ctx.is_distributed:
        if setup.parallel is not None and not is_deepspeed(setup):
            raise MeasurementError(
                "measurements on one GPU take no --parallel except zero2|zero3 (DeepSpeed at world size 1); "
                "use --num-gpus 2 or more with ddp|fsdp"
            )
        if is_deepspeed(setup):
            check_parallel(setup)
        return
    check_parallel(setup)
    if ctx.world_size != setup.num_gpus:
        where = "outside a torchrun launch" if not ctx.is_distributed else f"in a launch of {ctx.world_size} processes"
        raise MeasurementError(
            f"the setup asks for {setup.num_gpus} GPUs but this process runs {where}: multi-GPU runs are "
            "measured by vramplan.trainer.measure_in_subprocess, which launches one process per GPU with torchrun"
        )


# ============================================================================ Trainer arguments
def _unwrap(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (``PeftModel.base_model.model``)."""
    inner = getattr(model, "base_model", None)
    inner = getattr(inner, "model", None) if inner is not None else None
    return inner if inner is not None and inner is not model else model


def layer_classes(model: Any) -> list[str]:
    """Class names of the model's transformer blocks for FSDP auto-wrap: its ``_no_split_modules``
    that occur in the model (``LlamaDecoderLayer`` for Llama)."""
    present = {type(m).__name__ for m in model.modules()}
    names: list[str] = []
    for candidate in (model, _unwrap(model)):
        for name in getattr(candidate, "_no_split_modules", None) or ():
            if name in present and name not in names:
                names.append(name)
    return names


def _fsdp_flag() -> Any:
    """``TrainingArguments.fsdp`` meaning "on": ``True`` where the FSDP options live in
    ``fsdp_config`` (transformers >= 5.1x deprecates the "full_shard auto_wrap" string), else the string."""
    from transformers import TrainingArguments

    return True if hasattr(TrainingArguments, "_apply_legacy_fsdp_to_config") else "full_shard auto_wrap"


def trainer_kwargs(setup: TrainingSetup, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(extra ``TrainingArguments`` keywords, values for the record's ``extra``) for a multi-GPU run.

    Raises:
        MeasurementError: FSDP on a model whose transformer block class cannot be found.
    """
    check_parallel(setup)
    kwargs: dict[str, Any] = {"ddp_timeout": DDP_TIMEOUT_S}
    extra: dict[str, Any] = {"launcher": "torchrun", "parallel_engine": setup.parallel}
    if is_deepspeed(setup):
        kwargs["deepspeed"] = deepspeed_config(setup)
        extra.update(
            parallel_engine=f"deepspeed zero{ZERO_STAGES[setup.parallel]} (Trainer deepspeed= config)",
            deepspeed_offload=setup.offload,
        )
        return kwargs, extra
    if setup.parallel == "ddp":
        kwargs["ddp_find_unused_parameters"] = False
        extra["ddp_find_unused_parameters"] = "false"
        extra["parallel_engine"] = "ddp (torch DistributedDataParallel via accelerate)"
        return kwargs, extra
    classes = layer_classes(model)
    if not classes:
        raise MeasurementError(
            f"FSDP auto-wrap needs the model's transformer block class (_no_split_modules); "
            f"{type(_unwrap(model)).__name__} declares none"
        )
    kwargs["fsdp"] = _fsdp_flag()
    kwargs["fsdp_config"] = {"version": 2, "reshard_after_forward": True, "transformer_layer_cls_to_wrap": classes}
    if setup.offload == "all":
        kwargs["fsdp_config"]["offload_params"] = True
    extra.update(
        parallel_engine="fsdp2 (accelerate fully_shard, full shard)",
        fsdp_version=2,
        fsdp_reshard_after_forward="true",
        fsdp_wrap_classes=",".join(classes),
    )
    return kwargs, extra


# ============================================================================ parent side
def torchrun_command(
    num_gpus: int, worker_args: Sequence[str], *, python: str | None = None, module: str = "vramplan.trainer.worker"
) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m <module> <args>``."""
    if num_gpus < 1:
        raise MeasurementError(f"number of processes must be >= 1, got {num_gpus}")
    return [
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={num_gpus}",
        "-m",
        module,
        *worker_args,
    ]


def launch_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of the torchrun launcher: ``env`` with multicast kept off and one
    OpenMP thread per rank unless set."""
    out = dict(env)
    for key, value in SAFE_NCCL_ENV.items():
        out.setdefault(key, value)
    out.setdefault("OMP_NUM_THREADS", "1")
    return out


def read_rank_runs(out_dir: str | Path, world_size: int) -> dict[int, MeasuredRun]:
    """The rank records present in ``out_dir`` (rank -> run); unreadable files are skipped."""
    runs: dict[int, MeasuredRun] = {}
    for rank in range(world_size):
        path = Path(out_dir) / RANK_RECORD.format(rank=rank)
        if path.is_file():
            try:
                runs[rank] = MeasuredRun.model_validate_json(path.read_text(encoding="utf-8"))
            except ValueError:
                continue
    return runs


def _max(values: Sequence[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _merge_phases(peaks: Sequence[PhasePeaks]) -> PhasePeaks:
    return PhasePeaks(**{f: _max([getattr(p, f) for p in peaks]) for f in PhasePeaks.model_fields})


def merge_rank_runs(runs: Mapping[int, MeasuredRun], world_size: int) -> MeasuredRun:
    """One MeasuredRun from the rank records of a launch of ``world_size`` processes.

    Memory: the maximum over ranks (per-GPU peak); step times: the slowest rank per step;
    tokens/s: the sum over ranks (global); OOM: any rank's (its phase from the lowest such rank);
    environment and identity: rank 0's (else the lowest rank present) with ``num_gpus =
    world_size``; per-rank values in ``extra`` as ``rank<R>_<name>``.

    Raises:
        MeasurementError: no rank records.
    """
    if not runs:
        raise MeasurementError("no rank wrote a record")
    ranks = sorted(runs)
    first = runs[ranks[0]]
    ms = [runs[r].measurements for r in ranks]
    values: dict[str, Any] = {f: _max([getattr(m, f) for m in ms]) for f in _MAX_FIELDS}
    n_steps = min(len(m.step_times_s) for m in ms)
    step_times = tuple(max(m.step_times_s[i] for m in ms) for i in range(n_steps))
    rates = [m.tokens_per_s for m in ms]
    complete = len(ranks) == world_size and all(r is not None for r in rates)
    oom_ranks = [r for r, m in zip(ranks, ms, strict=True) if m.oom]
    measurements = Measurements(
        params_total=first.measurements.params_total,
        params_trainable=first.measurements.params_trainable,
        step0=_merge_phases([m.step0 for m in ms]),
        steady=_merge_phases([m.steady for m in ms]),
        step_times_s=step_times,
        tokens_per_s=sum(rates) if complete else None,  # type: ignore[arg-type]
        oom=bool(oom_ranks),
        oom_phase=runs[oom_ranks[0]].measurements.oom_phase if oom_ranks else None,
        memory_cap_bytes=_max([m.memory_cap_bytes for m in ms]),
        steps=min(m.steps for m in ms),
        **values,
    )
    extra: dict[str, Any] = dict(first.extra)
    for key in PER_RANK_EXTRA:
        extra.pop(key, None)
    extra.pop("rank", None)
    extra["world_size"] = world_size
    extra["ranks_recorded"] = ",".join(str(r) for r in ranks)
    if oom_ranks:
        extra["oom_ranks"] = ",".join(str(r) for r in oom_ranks)
    for r, run in zip(ranks, (runs[r] for r in ranks), strict=True):
        for name in PER_RANK_MEASUREMENTS:
            extra[f"rank{r}_{name}"] = getattr(run.measurements, name)
        for name in PER_RANK_EXTRA:
            extra[f"rank{r}_{name}"] = run.extra.get(name)
        for name in ("step0", "steady"):
            for phase, value in getattr(run.measurements, name).model_dump().items():
                extra[f"rank{r}_{name}_{phase}_bytes"] = value
    notes = [first.notes] if first.notes else []
    missing = [r for r in range(world_size) if r not in runs]
    if missing:
        why = " (stopped after an out-of-memory on another rank)" if oom_ranks else ""
        notes.append(f"no record from rank(s) {','.join(map(str, missing))}{why}")
    env: RunEnvironment = first.environment.model_copy(update={"num_gpus": world_size})
    return first.model_copy(
        update={
            "environment": env,
            "measurements": measurements,
            "notes": "; ".join(notes),
            "extra": {k: v for k, v in extra.items() if v is not None},
        }
    )


RunChild = Callable[..., tuple[int, list[str]]]


def measure_ranks(
    setup: TrainingSetup,
    request_path: Path,
    work_dir: Path,
    *,
    run_child: RunChild,
    env: dict[str, str],
    python: str | None,
    timeout_s: float | None,
    progress: Callable[[str], None] | None,
    log_path: Path,
) -> MeasuredRun:
    """Launch ``setup.num_gpus`` ranks with torchrun, wait, and merge their records.

    ``run_child(args, env=, timeout_s=, progress=, log_path=) -> (exit code, tail lines)`` runs
    the launcher (``worker._run_child``: own process group, killed on timeout).

    Raises:
        MeasurementError: a rank refused the request (its message), the launch failed without
            an out-of-memory record, or it timed out.
    """
    check_parallel(setup)
    out_dir = work_dir / "ranks"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = torchrun_command(
        setup.num_gpus, ["measure-rank", "--request", str(request_path), "--out-dir", str(out_dir)], python=python
    )
    if progress:
        progress(f"launching {setup.num_gpus} ranks with torchrun ({setup.parallel})")
    code, tail = run_child(args, env=launch_env(env), timeout_s=timeout_s, progress=progress, log_path=log_path)
    runs = read_rank_runs(out_dir, setup.num_gpus)
    complete = code == 0 and len(runs) == setup.num_gpus
    if not complete and not any(r.measurements.oom for r in runs.values()):
        errors = [line.removeprefix("error: ") for line in tail if line.startswith("error: ")]
        detail = errors[-1] if code != 0 and errors else "\n".join(tail[-15:])
        raise MeasurementError(f"multi-GPU measurement failed (torchrun exit {code}): {detail}")
    return merge_rank_runs(runs, setup.num_gpus)
