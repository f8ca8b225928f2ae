"""Checks `vramplan measure` makes before it starts a worker, in the parent process (which never imports torch):
the training stack is installed, bitsandbytes is there when the setup needs it, and a CUDA device exists unless
the user asked for a CPU run. Each failure is one line, said at once instead of after minutes of work.
"""

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from .environment import CHECKPOINT_CACHE_ENV
from .errors import MeasurementError

#: the packages of the `vramplan[train]` extra the worker imports
STACK_MODULES = ("torch", "transformers", "peft", "accelerate")
#: optimizers implemented by bitsandbytes (transformers OptimizerNames)
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
DEVICES = ("cuda", "cpu")
#: asks a fresh interpreter whether torch sees a CUDA device (the parent must not import torch)
_CUDA_PROBE = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_stack() -> None:
    """Raises MeasurementError naming the missing packages of the training stack."""
    missing = [m for m in STACK_MODULES if not _installed(m)]
    if missing:
        raise MeasurementError(
            f"`vramplan measure` needs the training stack (missing: {', '.join(missing)}): pip install 'vramplan[train]'"
        )


def require_bitsandbytes(method: str, optimizer: str) -> None:
    """Raises MeasurementError when QLoRA or a bitsandbytes optimizer is asked for and bitsandbytes is absent."""
    needs = [f"--method {method}"] if method == "qlora" else []
    needs += [f"--optimizer {optimizer}"] if optimizer in BNB_OPTIMIZERS else []
    if needs and not _installed("bitsandbytes"):
        raise MeasurementError(f"{' and '.join(needs)} need bitsandbytes, which is not installed: pip install bitsandbytes")


def cuda_available(python: str | None = None, timeout_s: float = 120.0) -> bool:
    """Whether torch in a fresh `python` process sees a CUDA device (honours CUDA_VISIBLE_DEVICES)."""
    try:
        done = subprocess.run([python or sys.executable, "-c", _CUDA_PROBE], capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def check_device(device: str, *, probe=cuda_available) -> None:
    """Raises MeasurementError for an unknown --device, or --device cuda (the default) without a CUDA device."""
    if device not in DEVICES:
        raise MeasurementError(f"--device {device}: accepted: {' | '.join(DEVICES)}")
    if device == "cuda" and not probe():
        raise MeasurementError(
            "no CUDA device visible to torch: `vramplan measure` records GPU memory; "
            "add --device cpu to run the (slow, memory-less) CPU check anyway"
        )


@contextlib.contextmanager
def checkpoint_cache() -> Iterator[str]:
    """Where the measurement's random QLoRA checkpoint goes: $VRAMPLAN_CHECKPOINT_CACHE when the user keeps a
    cache (campaigns do), else a temporary folder removed when the block exits, however it exits."""
    kept = os.environ.get(CHECKPOINT_CACHE_ENV)
    if kept:
        yield kept
        return
    folder = tempfile.mkdtemp(prefix="vramplan-checkpoint-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
