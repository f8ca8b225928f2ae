"""run_measurement: one short real training run with the transformers Trainer -> a MeasuredRun.

The recipe is the stack the estimator models (design.md "Stack profiles"): transformers Trainer +
PEFT + bitsandbytes with their defaults, synthetic fixed-length batches, learning rate 1e-5,
no eval, no saving, no logging. An out-of-memory anywhere (load, forward, backward, optimizer)
is a result, not a crash: the record says ``oom=True``, the phase, and the peaks so far.

Allocator options (``PYTORCH_CUDA_ALLOC_CONF``) are read by PyTorch once, when CUDA initializes,
so this function only *checks* them against the setup; ``measure_in_subprocess`` (worker.py)
starts a fresh process with the right variable for each run.

Mixed precision (``TrainingArguments.bf16/fp16``):
* weights bf16 or fp32 -> ``bf16=True`` (bf16 autocast; fp32 weights stay fp32 masters).
* weights fp16 -> ``fp16=True`` only when every trainable parameter is fp32 (LoRA/QLoRA
  adapters are fp32 by PEFT default); fp16 autocast needs the GradScaler, whose ``unscale_``
  refuses fp16 gradients (torch/amp/grad_scaler.py L275 "Attempting to unscale FP16
  gradients."). Full fine-tuning of fp16 weights therefore runs in plain fp16 without autocast
  (``mixed_precision = "none"`` in the record's ``extra``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from vramplan import __version__
from vramplan.specs import MeasuredRun, Measurements, TrainingSetup

from .distributed import DistContext, check_world, trainer_kwargs
from .environment import (
    check_allocator_env,
    collect_environment,
    make_run_id,
    package_version,
)
from .cuda_start import dump_memory_history, start_cuda, start_memory_history
from .deepspeed_config import zero3_load_config
from .errors import MeasurementError
from .stacks import check_stack_installed, make_trainer, wraps_peft_itself

#: CLI optimizer name -> transformers ``TrainingArguments.optim`` (training_args.py OptimizerNames)
HF_OPTIM = {
    "adamw_torch_fused": "adamw_torch_fused",
    "adamw_torch": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
#: the Trainer's learning rate for measurement runs (memory does not depend on it)
LEARNING_RATE = 1e-5
#: substrings of out-of-memory errors that are not torch.OutOfMemoryError (bitsandbytes, cuBLAS,
#: CUDA runtime errors surfacing as RuntimeError)
_OOM_MARKERS = ("out of memory", "cublas_status_alloc_failed", "cuda_error_out_of_memory")

Progress = Callable[[str], None]


def is_oom(exc: BaseException) -> bool:
    """True for torch.OutOfMemoryError and for RuntimeErrors whose message says out of memory."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


def mixed_precision(setup: TrainingSetup, trainable_dtypes: set, *, on_cuda: bool) -> str:
    """The Trainer's autocast mode for this setup: "bf16", "fp16" or "none" (module docstring)."""
    import torch

    if setup.dtype != "fp16":
        return "bf16"
    if on_cuda and trainable_dtypes and trainable_dtypes <= {torch.float32}:
        return "fp16"
    return "none"


def training_argument_kwargs(
    setup: TrainingSetup,
    steps: int,
    *,
    output_dir: str,
    precision: str,
    use_cpu: bool,
    extra_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The TrainingArguments keywords of a measurement run (``extra_args``: the multi-GPU strategy's
    keywords, ``distributed.trainer_kwargs``); SFTConfig takes the same ones (it subclasses them)."""
    import dataclasses

    from transformers import TrainingArguments

    # transformers 5.2x renamed gradient_checkpointing* to activation_checkpointing* (old names
    # deprecated aliases, training_args.py ~L1533); older 5.x only has the old names
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    checkpointing = {prefix: setup.grad_ckpt}
    if setup.grad_ckpt:
        checkpointing[f"{prefix}_kwargs"] = {"use_reentrant": False}
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=setup.batch_size,
        gradient_accumulation_steps=setup.grad_accum,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        optim=HF_OPTIM[setup.optimizer],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **checkpointing,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=use_cpu,
        seed=0,
        **(extra_args or {}),
    )


def training_arguments(setup: TrainingSetup, steps: int, **kwargs):
    """The TrainingArguments of a measurement run (keywords of ``training_argument_kwargs``)."""
    from transformers import TrainingArguments

    return TrainingArguments(**training_argument_kwargs(setup, steps, **kwargs))


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw_config(model: str, config: dict | None, model_path: str | Path | None) -> tuple[dict | None, str]:
    """(HF config dict or None, model_source) for the run."""
    if config is not None:
        return config, "config dict"
    if model_path is not None:
        return None, f"checkpoint:{model_path}"
    from vramplan.models import load_raw_config

    return load_raw_config(model), model


def _vocab_rows(model) -> int:
    weight = model.get_input_embeddings().weight
    return int((getattr(weight, "ds_shape", None) or weight.shape)[0])  # ZeRO-3 partitioned: ds_shape is whole


def _build(raw: dict | None, setup: TrainingSetup, **kwargs):
    """The stack's model builder: Unsloth's loader for --stack unsloth, build.build_model otherwise."""
    if setup.stack == "unsloth":
        from .unsloth_build import build_unsloth_model

        kwargs.pop("device")
        kwargs.pop("fast_init", None)
        return build_unsloth_model(raw, setup, **kwargs)
    from .build import build_model

    return build_model(raw, setup, **kwargs)


def builds_on_cpu(setup: TrainingSetup) -> bool:
    """FSDP full fine-tuning and LoRA build the model on the CPU, as users' ``from_pretrained`` (CPU by default) does:
    the Trainer leaves an FSDP model where it is (``place_model_on_device`` is False under FSDP), accelerate's
    ``fsdp2_prepare_model`` upcasts the trainable parameters there, and ``fully_shard`` moves each unit to the GPU and
    keeps its shard. Built on the GPU instead, every GPU holds the whole model and then its fp32 copy before the shards
    (fake ranks of 2026-12-04: Llama-3.1-8B on 8 ranks peaked at 33.65 GiB allocated). QLoRA is quantized on the GPU
    as it loads (transformers puts a 4-bit model without a device_map on the current GPU), as for users."""
    return setup.parallel == "fsdp" and setup.method != "qlora"


@contextmanager
def _cpu_build_threads(ctx: DistContext):
    """More than torchrun's one OpenMP thread per rank while a model is built on the CPU: its random init (users load
    weights from disk instead) took past a run's timeout on one thread (2026-12-04); the GPU's allocations do not
    depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(ctx.world_size, 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_request(setup: TrainingSetup, steps: int, memory_cap_gib: float | None, ctx: DistContext) -> None:
    if steps < 1:
        raise MeasurementError(f"steps must be >= 1, got {steps}")
    check_world(setup, ctx)
    if memory_cap_gib is not None and memory_cap_gib <= 0:
        raise MeasurementError(f"memory cap must be > 0 GiB, got {memory_cap_gib}")
    if setup.optimizer in BNB_OPTIMIZERS and importlib.util.find_spec("bitsandbytes") is None:
        raise MeasurementError(f"--optimizer {setup.optimizer} needs bitsandbytes (pip install bitsandbytes)")
    check_allocator_env(setup)


def run_measurement(
    model: str,
    setup: TrainingSetup,
    *,
    steps: int,
    model_path: str | Path | None = None,
    config: dict[str, Any] | None = None,
    data: str | Path | None = None,
    tokenizer: str | Path | None = None,
    memory_cap_gib: float | None = None,
    checkpoint_cache: str | Path | None = None,
    progress: Progress | None = None,
    notes: str = "",
    memory_snapshot: str | Path | None = None,
) -> MeasuredRun:
    """Train ``model`` for ``steps`` optimizer steps with ``setup`` and return the measured record.

    ``model`` is a catalog name or config path (resolved with ``vramplan.models.load_raw_config``);
    ``config`` (an HF config dict) or ``model_path`` (a local checkpoint folder) replace that
    lookup, ``model`` then only names the run. ``memory_cap_gib`` limits PyTorch's allocator to
    that much (``torch.cuda.set_per_process_memory_fraction``) to stand in for a smaller card.
    On a machine without CUDA the run trains on the CPU and every memory value is None.
    ``memory_snapshot`` (a file path): record the caching allocator's history from model load to
    the end of training and write it there as a pickle (``torch.cuda.memory._dump_snapshot``:
    open it at https://pytorch.org/memory_viz, or replay it with ``scripts/allocator_replay.py``);
    recording is host-side and does not change the GPU memory measured.

    Inside a torchrun launch (WORLD_SIZE > 1, ``setup.num_gpus`` equal to it) this is one rank
    of a multi-GPU run (``distributed.py``): it trains on ``cuda:LOCAL_RANK`` with the Trainer's
    DDP or FSDP and records that GPU only; the parent merges the ranks' records.

    Raises:
        MeasurementError: the request cannot be measured as asked (allocator env mismatch,
            missing package, a GPU count that is not this launch's world size, ZeRO);
            UnknownModelError/ConfigError from the model lookup.
        Any non-OOM exception of the training stack propagates unchanged.
    """
    say = progress or (lambda message: None)
    ctx = DistContext.from_env()
    _check_request(setup, steps, memory_cap_gib, ctx)
    check_stack_installed(setup)
    import torch

    created = _utc_now()
    run_notes = [notes] if notes else []
    extra: dict[str, Any] = {
        "cuda_module_loading": os.environ.get("CUDA_MODULE_LOADING"),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "flash_attn": package_version("flash-attn") or package_version("flash_attn"),
        "gradient_checkpointing_use_reentrant": "false" if setup.grad_ckpt else None,
        "learning_rate": LEARNING_RATE,
    }
    if ctx.is_distributed:
        extra.update(rank=ctx.rank, world_size=ctx.world_size)
    on_cuda = torch.cuda.is_available()
    # before importing transformers' Trainer: it imports peft, which imports bitsandbytes, whose
    # import initializes CUDA (bitsandbytes/cuda_specs.py::get_compute_capabilities; seen on the
    # H100 machine), and the NVML baseline must be read before this process has a CUDA context
    cuda = start_cuda(setup, memory_cap_gib, extra, run_notes, device=ctx.local_rank) if on_cuda else None
    if not on_cuda and memory_cap_gib is not None:
        run_notes.append(f"memory cap {memory_cap_gib} GiB ignored: no CUDA device")
    # recording starts before Unsloth's import, which allocates (a 32 MiB segment on the H200)
    recording = start_memory_history(memory_snapshot, run_notes) if cuda else False
    if setup.stack == "unsloth":  # after the CUDA start (its import initializes CUDA), before transformers
        from .unsloth_build import import_unsloth

        extra["unsloth"] = import_unsloth()

    import transformers
    from transformers import PrinterCallback

    from .build import param_counts_of
    from .data import make_dataset
    from .gpu_memory import NullMemoryReader
    from .probe import MemoryProbe

    raw, model_source = _raw_config(model, config, model_path)
    monitor = cuda.monitor if cuda else None
    baseline = cuda.baseline if cuda else None
    reader = cuda.reader if cuda else NullMemoryReader()
    if monitor is not None:
        monitor.start()
    probe = MemoryProbe(reader, monitor, device_baseline_bytes=baseline)
    built = None
    oom, oom_phase = False, None
    t_start = time.perf_counter()
    t_loaded = None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with tempfile.TemporaryDirectory(prefix="vramplan-trainer-") as output_dir:
            say(f"building {model} ({setup.method}) on {'cuda' if on_cuda else 'cpu'}")
            zero3_load = zero3_load_config(setup)  # ZeRO-3 builds the model partitioned, as users' runs do
            if zero3_load is not None:
                extra["deepspeed_zero3_init_at_load"] = True
            device = f"cuda:{ctx.local_rank}" if on_cuda and not builds_on_cpu(setup) else "cpu"
            if on_cuda and device == "cpu":
                extra["fsdp_load_device"] = "cpu"
            with _cpu_build_threads(ctx) if device == "cpu" else nullcontext():
                built = _build(raw, setup, model_path=model_path, checkpoint_cache=checkpoint_cache, name=model,
                               device=device, fast_init=device == "cpu" and on_cuda)  # fmt: skip
            extra.update(built.extra)
            del zero3_load  # the Trainer's TrainingArguments register their own DeepSpeed config
            t_loaded = time.perf_counter()
            trainable_dtypes = {p.dtype for p in built.model.parameters() if p.requires_grad}
            precision = mixed_precision(setup, trainable_dtypes, on_cuda=on_cuda)
            extra["mixed_precision"] = precision
            # every rank draws its own micro-batches from the (distributed-sampled) dataset
            samples = setup.batch_size * setup.grad_accum * steps * ctx.world_size
            dataset = make_dataset(_vocab_rows(built.model), setup.seq_len, samples, data=data, tokenizer=tokenizer)
            parallel_args = None
            if ctx.is_distributed or setup.parallel is not None:  # DeepSpeed also at world size 1
                parallel_args, parallel_extra = trainer_kwargs(setup, built.model)
                extra.update(parallel_extra)
            args_kwargs = training_argument_kwargs(
                setup,
                steps,
                output_dir=output_dir,
                precision=precision,
                use_cpu=not on_cuda,
                extra_args=parallel_args,
            )
            trainer = make_trainer(setup, built.model, args_kwargs, dataset, probe, peft_config=built.peft_config,
                                   vocab_size=_vocab_rows(built.model), samples=samples)  # fmt: skip
            if wraps_peft_itself(setup):  # SFTTrainer wrapped the model: count what it trains
                built.params_total, built.params_trainable = param_counts_of(trainer.model)
            extra["trainer_class"] = type(trainer).__name__
            if setup.stack == "unsloth":  # Unsloth chooses padding-free batches itself when not told
                extra["padding_free"] = str(getattr(trainer.args, "padding_free", None))
            trainer.remove_callback(PrinterCallback)  # no metrics printout: the record is the output
            if setup.parallel == "fsdp" and not getattr(trainer, "is_fsdp_enabled", False):
                # accelerate keeps FSDP for multi-GPU runs only (MULTI_CPU falls back to DDP)
                raise MeasurementError("FSDP was not enabled by accelerate: --parallel fsdp needs CUDA GPUs")
            say(f"training {steps} steps")
            if monitor is not None:  # identical setups timed 0.43 and 0.60 s per step on the H200: record why
                extra.update({f"gpu_{k}_start": v for k, v in monitor.state().items()})
            trainer.train()
            if monitor is not None:
                extra.update({f"gpu_{k}_end": v for k, v in monitor.state().items()})
            if ctx.is_distributed:  # proof of the engine: DistributedDataParallel, FSDP<Model>, ...
                extra["trainer_wrapped_model"] = type(trainer.model_wrapped).__name__
    except Exception as exc:
        if not is_oom(exc):
            raise
        oom = True
        oom_phase = probe.record_failure()
        extra["oom_message"] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        say(f"out of memory during {oom_phase}")
    finally:
        transformers.logging.set_verbosity(verbosity)
        if recording:
            dump_memory_history(Path(memory_snapshot), extra)
        if monitor is not None:
            monitor.stop()
            extra["nvml_samples"] = monitor.samples
            extra["nvml_interval_s"] = monitor.interval_s
    t_end = time.perf_counter()
    extra["load_s"] = round((t_loaded or t_end) - t_start, 3)
    extra["train_s"] = round(t_end - t_loaded, 3) if t_loaded else None
    extra["load_peak_allocated_bytes"] = probe.load_peak_allocated_bytes
    extra["load_peak_reserved_bytes"] = probe.load_peak_reserved_bytes

    measurements = Measurements(
        params_total=built.params_total if built else None,
        params_trainable=built.params_trainable if built else None,
        **probe.summary(),
        # NVML "used" is device-wide: another process freeing memory meanwhile can make the difference negative
        cuda_context_bytes=cuda.context_bytes if cuda and cuda.context_bytes >= 0 else None,
        oom=oom,
        oom_phase=oom_phase,
        memory_cap_bytes=cuda.cap_bytes if cuda else None,
    )
    return MeasuredRun(
        run_id=make_run_id(model, setup, created_utc=created, memory_cap_bytes=cuda.cap_bytes if cuda else None),
        created_utc=created,
        model=model,
        model_source=model_source,
        setup=setup,
        environment=collect_environment(
            driver=cuda.driver if cuda else None,
            device=ctx.local_rank if on_cuda else None,
            num_gpus=ctx.world_size,
        ),
        measurements=measurements,
        tool_version=__version__,
        notes="; ".join(run_notes),
        extra={k: v for k, v in extra.items() if v is not None},
    )
