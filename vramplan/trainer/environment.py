"""What a run record says about where it ran: GPU, driver, libraries, allocator config; run ids."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import tempfile
from pathlib import Path

from vramplan.specs import RunEnvironment, TrainingSetup

from .errors import MeasurementError

#: PyTorch reads its caching-allocator options from these (the second is the newer, device-generic
#: name, torch >= 2.9); both are read only when CUDA's allocator initializes
ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
EXPANDABLE = "expandable_segments:True"
#: where QLoRA random checkpoints are cached between runs unless told otherwise
CHECKPOINT_CACHE_ENV = "VRAMPLAN_CHECKPOINT_CACHE"


def default_checkpoint_cache() -> Path:
    """$VRAMPLAN_CHECKPOINT_CACHE, else <tmp>/vramplan-checkpoints."""
    explicit = os.environ.get(CHECKPOINT_CACHE_ENV)
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / "vramplan-checkpoints"


def allocator_conf(environ: dict[str, str] | None = None) -> str | None:
    """The allocator option string in effect for a new process with ``environ`` (None: unset)."""
    env = os.environ if environ is None else environ
    parts = [env[v] for v in ALLOC_CONF_VARS if env.get(v)]
    return ",".join(parts) if parts else None


def _options(conf: str | None) -> list[str]:
    return [o.strip() for o in (conf or "").split(",") if o.strip()]


def conf_has_expandable(conf: str | None) -> bool:
    return any(o.replace(" ", "").lower() == EXPANDABLE.lower() for o in _options(conf))


def allocator_env_for(setup: TrainingSetup, environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` whose allocator config matches ``setup.expandable_segments``.

    Other allocator options the user set are kept; the result uses PYTORCH_CUDA_ALLOC_CONF only.
    """
    env = dict(os.environ if environ is None else environ)
    options = [o for o in _options(allocator_conf(env)) if not o.lower().startswith("expandable_segments")]
    if setup.expandable_segments:
        options.append(EXPANDABLE)
    for var in ALLOC_CONF_VARS:
        env.pop(var, None)
    if options:
        env["PYTORCH_CUDA_ALLOC_CONF"] = ",".join(options)
    return env


def check_allocator_env(setup: TrainingSetup) -> None:
    """The allocator options must already be in this process's environment, because PyTorch reads
    them once when CUDA initializes. Run each measurement in a fresh process with the right
    variable (``measure_in_subprocess`` does that).

    Raises:
        MeasurementError: the setup and PYTORCH_CUDA_ALLOC_CONF disagree about expandable_segments.
    """
    conf = allocator_conf()
    has = conf_has_expandable(conf)
    if setup.expandable_segments and not has:
        raise MeasurementError(
            "expandable_segments was requested but PYTORCH_CUDA_ALLOC_CONF does not contain "
            f"'{EXPANDABLE}' in this process (it is {conf!r}); PyTorch reads it once at CUDA init: "
            "start a new process with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
            "(vramplan.trainer.measure_in_subprocess does this)"
        )
    if has and not setup.expandable_segments:
        raise MeasurementError(
            f"PYTORCH_CUDA_ALLOC_CONF={conf!r} enables expandable_segments but the setup does not: "
            "pass expandable_segments=True or unset the variable"
        )


def expandable_segments_active() -> bool | None:
    """Whether the live CUDA allocator uses expandable segments, read from its snapshot
    (``memory_snapshot()`` segments carry ``is_expandable``, torch/csrc/cuda/memory_snapshot.cpp).
    None when unknown (no segment yet, or a torch without the key)."""
    import torch

    segments = torch.cuda.memory_snapshot()
    flags = [seg["is_expandable"] for seg in segments if "is_expandable" in seg]
    return any(flags) if flags else None


def gpu_slug(name: str | None) -> str | None:
    """A directory-safe lowercase id from the CUDA device name: 'NVIDIA H100 80GB HBM3' ->
    'nvidia-h100-80gb-hbm3'."""
    if not name:
        return None
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or None


def gpu_id_for(name: str | None, total_memory_bytes: int | None) -> str | None:
    """The GPU catalog id of a measured device ('h100-sxm'), matched exactly by CUDA name and
    memory (``gpu_catalog.match_cuda_name``); the name's slug when the catalog has no such card."""
    if not name:
        return None
    try:
        from gpu_catalog import match_cuda_name
    except ImportError:
        return gpu_slug(name)
    spec = match_cuda_name(name, total_memory_bytes)
    return spec.id if spec is not None else gpu_slug(name)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_environment(*, driver: str | None = None, device: int | None = 0, num_gpus: int = 1) -> RunEnvironment:
    """GPU and software of this process. ``device=None`` describes a CPU run; ``num_gpus`` is the
    number of GPUs (ranks) of the run this process belongs to."""
    import torch

    gpu_name = total = None
    if device is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        gpu_name, total = props.name, int(props.total_memory)
    return RunEnvironment(
        gpu_name=gpu_name,
        gpu_id=gpu_id_for(gpu_name, total),
        total_memory_bytes=total,
        num_gpus=num_gpus,
        driver=driver,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=package_version("transformers"),
        peft=package_version("peft"),
        bitsandbytes=package_version("bitsandbytes"),
        accelerate=package_version("accelerate"),
        allocator_conf=allocator_conf(),
        hostname=socket.gethostname(),
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def make_run_id(model: str, setup: TrainingSetup, *, created_utc: str, memory_cap_bytes: int | None = None) -> str:
    """A readable, unique id: ``<model>-<method>[-<quant>]-r16-s2048-b1[-ga4]-gc-<optim>-<dtype>-<attn>[-es][-fsdp-x2][-cap24g]-<hash8>``.

    The hash covers the model, the whole setup, the cap and the creation time, so two runs of
    the same setup get different ids.
    """
    name = _slug(os.path.basename(model.rstrip("/")) if os.sep in model else model)
    parts = [name, setup.method]
    if setup.quant:
        parts.append(setup.quant + ("dq" if setup.double_quant and setup.quant != "int8" else ""))
    if setup.lora is not None:
        parts.append(f"r{setup.lora.rank}")
        if not setup.lora.all_linear:
            parts.append("t" + "+".join(t.removesuffix("_proj") for t in setup.lora.targets))
    parts += [f"s{setup.seq_len}", f"b{setup.batch_size}"]
    if setup.grad_accum > 1:
        parts.append(f"ga{setup.grad_accum}")
    parts.append("gc" if setup.grad_ckpt else "nogc")
    parts += [setup.optimizer.replace("_", ""), setup.dtype, setup.attn]
    if setup.expandable_segments:
        parts.append("es")
    if setup.num_gpus > 1:
        parts.append(f"{setup.parallel}-x{setup.num_gpus}")
    if memory_cap_bytes:
        parts.append(f"cap{memory_cap_bytes / 2**30:.3g}g")
    digest = hashlib.sha256(f"{model}|{setup.model_dump_json()}|{memory_cap_bytes}|{created_utc}".encode()).hexdigest()[
        :8
    ]
    return "-".join(_slug(p) for p in parts) + "-" + digest
