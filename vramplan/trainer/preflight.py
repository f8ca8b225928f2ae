"""`vramplan.preflight(trainer)` and `PreflightCallback`: before the first step of a user's own
Trainer / SFTTrainer, predict the peak from the live job and say whether it fits this GPU.

    trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds, peft_config=lora)
    vramplan.preflight(trainer, strict=True)   # raises PreflightError when it will not fit
    trainer.train()
    # or: Trainer(..., callbacks=[vramplan.PreflightCallback(strict=True)])

The job is read by vramplan.configs.live (the same readers as --from-config); the estimate is
vramplan's analytic one (what `vramplan estimate` prints for the same setup). torch is imported only
to ask CUDA for the device name and memory; the estimate itself is pure arithmetic (~10 ms).
"""

import sys
from typing import Any

from gpu_catalog import find_gpu, list_gpus, match_cuda_name

from ..api import default_calibration
from ..configs import resolve
from ..configs.live import read_live
from ..setup_flags import SETUP_PARAMS, build_setup
from ..errors import VramplanError
from ..estimator import DEFAULT_HEADROOM, estimate
from ..models import parse_config
from ..specs import Estimate, GpuSpec, GpuVerdict

def _defaults() -> dict[str, Any]:
    """The estimate flags' defaults (those of `vramplan.estimate`, tested equal to the CLI's), under what the
    live job says."""
    import inspect

    from ..python_api import estimate as api_estimate

    params = inspect.signature(api_estimate).parameters
    return {name: params[name].default for name in SETUP_PARAMS if name != "method"}


class PreflightError(VramplanError):
    """The job will not fit the GPU (raised by strict preflight before the first step)."""


def preflight(
    trainer: Any,
    *,
    strict: bool = False,
    gpu: str | None = None,
    seq_len: int | None = None,
    headroom: float = DEFAULT_HEADROOM,
    report: bool = True,
) -> Estimate:
    """Predict the peak of `trainer`'s job (a transformers Trainer or TRL SFTTrainer, before train())
    on `gpu` (a catalog id; default: CUDA device 0), print verdict, breakdown and suggestions, and
    return the Estimate. strict=True raises PreflightError when it will not fit."""
    return check(trainer.model, trainer.args, type(trainer), getattr(trainer, "train_dataset", None),
                 strict=strict, gpu=gpu, seq_len=seq_len, headroom=headroom, report=report)  # fmt: skip


def check(model: Any, args: Any, trainer_class: type | None, dataset: Any, *, strict: bool, gpu: str | None,
          seq_len: int | None, headroom: float, report: bool) -> Estimate:  # fmt: skip
    config, reading = read_live(model, args, trainer_class, dataset, seq_len=seq_len)
    name = str(config.get("_name_or_path") or config.get("model_type") or "live model")
    resolved = resolve(dict(_defaults(), model=name, method=None), (), readings=[reading])
    setup = build_setup(**{k: resolved.params[k] for k in SETUP_PARAMS})
    spec = parse_config(config, name=name.rsplit("/", 1)[-1].lower(), source="live model config")
    gpu_spec, gpu_notes = _gpu(gpu)
    result = estimate(spec, setup, gpu_spec, headroom=headroom, calibration=default_calibration(),
                      assumptions=resolved.assumptions + gpu_notes)  # fmt: skip
    result = result.model_copy(update={"setup": setup})
    if report and getattr(args, "process_index", 0) == 0:  # one report per job, not one per rank
        _print(result, spec, setup, gpu_spec, headroom)
    if strict:
        enforce(result)
    return result


def enforce(result: Estimate) -> None:
    """Raise PreflightError when the estimate has a verdict and it does not fit."""
    v, shown = result.verdict, result.calibrated or result.memory
    if v is not None and not v.fits:
        raise PreflightError(f"will not fit {v.gpu_name}: predicted device peak {shown.device_peak_bytes / 2**30:.2f} GiB "
                             f"> {v.usable_bytes / 2**30:.2f} GiB usable ({v.headroom_fraction:.0%} headroom)")  # fmt: skip


def _gpu(gpu: str | None) -> tuple[GpuSpec | None, tuple[str, ...]]:
    """The catalog GPU named, else CUDA device 0: its catalog entry by device name and total memory,
    else (a MIG slice, an unlisted card) a catalog entry of the same compute capability with the
    capacity torch.cuda.mem_get_info reports. None without CUDA."""
    if gpu:
        return find_gpu(gpu), ()
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None, ("no CUDA device and no gpu=: no fit verdict",)
    name = torch.cuda.get_device_name(0)
    _free, total = torch.cuda.mem_get_info(0)
    found = match_cuda_name(name, total)
    if found is not None:
        return found, ()
    major, minor = torch.cuda.get_device_capability(0)
    same = next((g for g in list_gpus() if g.compute_capability == f"{major}.{minor}"), None)
    if same is None:
        return None, (f"{name} is not in the catalog and no entry shares compute capability {major}.{minor}: no verdict",)
    spec = same.model_copy(update={"id": "cuda:0", "name": name, "memory_bytes": int(total), "price_usd_per_hour": None})
    return spec, (f"{name} is not in the catalog: capacity {total:,} bytes from torch.cuda.mem_get_info",)


def _print(result: Estimate, spec, setup, gpu_spec: GpuSpec | None, headroom: float) -> None:
    from rich.console import Console

    from ..suggestions import suggestions
    from ..report.estimate_view import estimate_renderable
    from ..specs import setup_label

    console = Console(stderr=True, width=110)
    console.print(estimate_renderable(result, f"vramplan preflight · {result.model} · {setup_label(setup)}"))
    v: GpuVerdict | None = result.verdict
    if v is not None and not v.fits and gpu_spec is not None:
        rows = suggestions(spec, setup, gpu_spec, headroom=headroom, calibration=default_calibration())
        if rows:
            console.print(f"to fit {v.gpu_name}, smallest change first:")
            for s in rows[:8]:
                console.print(f"  - {s.change}: saves {s.saves_bytes / 2**30:.2f} GiB" + ("  (fits)" if s.fits else ""))


def __getattr__(name: str) -> Any:
    if name == "PreflightCallback":
        cls = _callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _callback_class() -> type:
    """PreflightCallback, defined on first use so that importing vramplan never imports transformers."""
    from transformers import TrainerCallback

    class PreflightCallback(TrainerCallback):
        """Runs vramplan's preflight at on_train_begin (before the first step); strict=True stops the
        run with PreflightError when the job will not fit. The trainer class is read from the args
        (an SFTConfig means TRL's SFTTrainer)."""

        def __init__(self, *, strict: bool = False, gpu: str | None = None, seq_len: int | None = None,
                     headroom: float = DEFAULT_HEADROOM, report: bool = True) -> None:  # fmt: skip
            self.strict, self.gpu, self.seq_len, self.headroom, self.report = strict, gpu, seq_len, headroom, report
            self.estimate: Estimate | None = None

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
            dataset = getattr(train_dataloader, "dataset", None)
            self.estimate = check(model, args, None, dataset, strict=False, gpu=self.gpu, seq_len=self.seq_len,
                                  headroom=self.headroom, report=self.report)  # fmt: skip
            if self.strict:
                enforce(self.estimate)
            return control

    return PreflightCallback
