"""A warm worker: imports the training stack once, then forks one fresh child per measurement.

Importing torch + transformers + peft takes ~16 s on the H100 machine (measured: ``python -c
"import torch, transformers, peft; from transformers import Trainer"`` 16.1 s wall, torch alone
5.8 s), against ~3 s of actual loading and training for a 1B model. The server pays most of it
once: it preloads torch, accelerate and transformers' model machinery (``modeling_utils``,
the auto classes), which are ~90 % of that time (5.6 of 6.2 s on the CPU dev machine).

It must not preload ``transformers.training_args``/``Trainer``/``peft``: they import peft, peft
imports bitsandbytes, and bitsandbytes' import initializes CUDA (``cuda_specs.py::
get_compute_capabilities`` -> ``torch.cuda.get_device_capability``, seen on the H100 machine with
bitsandbytes 0.50.2). Those are imported by each child.

Why a forked child is as clean as a new process for what we measure: the server never
initializes CUDA (checked before every fork with ``torch.cuda.is_initialized()``), so each child
creates its own CUDA context, caching allocator, memory statistics and NVML baseline. The
allocator options (PYTORCH_CUDA_ALLOC_CONF) are the one thing a child cannot change after the
fact if PyTorch parsed them at import, so the parent only sends jobs whose allocator options
equal the server's (``ForkServer.allocator_conf``) and starts other runs as new processes.

Protocol (JSON lines): parent -> server ``{"argv": [...], "env": {...}, "log": path}``;
server -> parent ``{"ready": pid}``, ``{"started": pid}``, ``{"finished": pid, "code": int}``.
Each child runs ``worker.main(argv)`` with stdout/stderr appended to ``log`` in its own session
(so a timeout kills it and its children with one killpg).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from .environment import allocator_conf
from .errors import MeasurementError

#: modules whose import is the slow part; nothing that imports peft/bitsandbytes (CUDA init)
PRELOAD = (
    "torch",
    "torch.utils.data",
    "accelerate",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "vramplan.trainer.build",
    "vramplan.trainer.data",
)
_TAIL_LINES = 40


class ForkServerError(MeasurementError):
    """The fork server died or stopped answering (the measurement itself may be fine elsewhere)."""


# ---------------------------------------------------------------------------- server side
def serve(run_argv: Callable[[list[str]], int]) -> int:
    """Preload the stack, then fork a child per job read from stdin; returns at EOF."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import torch

    protocol = sys.stdout
    if torch.cuda.is_initialized():
        print(json.dumps({"error": "CUDA was initialized while preloading: cannot fork"}), file=protocol, flush=True)
        return 2
    print(json.dumps({"ready": os.getpid()}), file=protocol, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        if torch.cuda.is_initialized():
            print(json.dumps({"finished": None, "code": 3, "error": "CUDA initialized in server"}), flush=True)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(job, run_argv)
        print(json.dumps({"started": pid}), file=protocol, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"finished": pid, "code": os.waitstatus_to_exitcode(status)}), file=protocol, flush=True)
    return 0


def _child(job: dict[str, Any], run_argv: Callable[[list[str]], int]) -> None:
    """Body of a forked child: own session, the job's environment and log; never returns."""
    code = 1
    try:
        os.setsid()
        os.environ.clear()
        os.environ.update(job["env"])
        log_fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.close(null_fd)
        code = run_argv(list(job["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - a forked child must never return into the server loop
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# ---------------------------------------------------------------------------- parent side
class ForkServer:
    """Parent-side handle of a running fork server (a context manager).

    Raises:
        ForkServerError: the server did not come up (its stderr tail is in the message).
    """

    def __init__(
        self,
        *,
        python: str | None = None,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        from .worker import child_env

        self.env = child_env(env)
        self.allocator_conf = allocator_conf(self.env)
        stderr_fd, self._stderr_path = tempfile.mkstemp(prefix="vramplan-forkserver-", suffix=".log")
        self._proc = subprocess.Popen(
            [python or sys.executable, "-m", "vramplan.trainer.worker", "serve"],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr_fd,
            text=True,
            start_new_session=True,
        )
        os.close(stderr_fd)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            first = self._next(start_timeout_s)
        except ForkServerError:
            self.close()
            raise
        if "ready" not in first:
            self.close()
            raise ForkServerError(f"fork server refused to start: {first.get('error')}")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self._messages.put(json.loads(line))
            except json.JSONDecodeError:
                continue  # stray output: not protocol
        self._messages.put(None)

    def _poll(self, timeout_s: float | None) -> dict[str, Any] | None:
        """The next message, or None when none came within ``timeout_s``."""
        try:
            message = self._messages.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if message is None:
            self._messages.put(None)  # stay "exited" for later calls
            raise ForkServerError("fork server exited:\n" + self._stderr_tail())
        return message

    def _next(self, timeout_s: float | None) -> dict[str, Any]:
        message = self._poll(timeout_s)
        if message is None:
            raise ForkServerError(f"fork server did not answer within {timeout_s:.0f} s")
        return message

    def _stderr_tail(self) -> str:
        try:
            return "\n".join(Path(self._stderr_path).read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def accepts(self, env: dict[str, str]) -> bool:
        """Whether a job with environment ``env`` may run in a child of this server."""
        return self._proc.poll() is None and allocator_conf(env) == self.allocator_conf

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        timeout_s: float | None,
        progress: Callable[[str], None] | None,
        log_path: Path,
    ) -> tuple[int, list[str]]:
        """Run ``worker.main(argv)`` in a forked child; (exit code, last log lines).

        Raises:
            MeasurementError: the child ran past ``timeout_s`` (it is killed).
            ForkServerError: the server is gone.
        """
        log_path = Path(log_path)
        log_path.touch()
        offset = log_path.stat().st_size
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log_path)}) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ForkServerError(f"fork server is gone ({exc})") from exc
        pid = self._next(60.0).get("started")
        if pid is None:
            raise ForkServerError("fork server did not start the job")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        position = offset
        timed_out = False
        while (message := self._poll(0.5)) is None:
            position = _stream(log_path, position, progress)
            if deadline is not None and time.monotonic() > deadline and not timed_out:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        _stream(log_path, position, progress)
        tail = _tail(log_path, offset)
        if timed_out:
            raise MeasurementError(
                f"measurement timed out after {timeout_s:g} s; last output:\n" + "\n".join(tail[-10:])
            )
        return int(message.get("code", 1)), tail

    def close(self) -> None:
        if self._proc.stdin:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self._stderr_path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stream(log_path: Path, position: int, progress: Callable[[str], None] | None) -> int:
    """Hand new complete "[vramplan] ..." lines of the log to ``progress``; new read position."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(position)
            chunk = fh.read()
    except OSError:
        return position
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.decode("utf-8", errors="replace").splitlines():
        if progress and line.startswith("[vramplan]"):
            progress(line.removeprefix("[vramplan] "))
    return position + len(complete)


def _tail(log_path: Path, offset: int) -> list[str]:
    lines: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with contextlib.suppress(OSError), open(log_path, encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        lines.extend(line.rstrip("\n") for line in fh)
    return list(lines)
