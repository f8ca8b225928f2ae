"""Hold-out check: predict setups no calibration run has, commit the predictions, then measure them.

    python scripts/holdout.py predict            # -> docs/holdout/predictions.json (commit it before measuring)
    python scripts/holdout.py compare RUNS_DIR   # predicted (as committed) vs the measured run records
    python scripts/holdout.py --grid stacks predict   # -> docs/holdout/stacks-predictions.json
    python scripts/holdout.py --grid zero-x1 predict  # DeepSpeed at world size 1 (campaign_multi.py --grid zero)

The grid is ``scripts/campaign.py --grid holdout`` (or ``--grid stacks``, ...; ``zero-x1`` is the ZeRO part of
``scripts/campaign_multi.py --grid zero --num-gpus 1``). ``compare`` reads the committed predictions, never
recomputes them, so the numbers it prints are the ones made before the runs existed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import GRIDS  # noqa: E402
import campaign  # noqa: E402

from gpu_catalog import find_gpu  # noqa: E402
from vramplan.api import estimate_for  # noqa: E402
from vramplan.errors import VramplanError  # noqa: E402
from vramplan.models import resolve_model  # noqa: E402
from vramplan.throughput import step_time  # noqa: E402
from vramplan.runs.store import load_runs  # noqa: E402
from vramplan.specs import TrainingSetup, setup_label  # noqa: E402

HOLDOUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "holdout"
PREDICTIONS = HOLDOUT_DIR / "predictions.json"
#: the DeepSpeed grids at world size 1 (campaign_multi.py's GRIDS; zero-x1 is its "zero" grid's one-GPU runs)
ZERO_ONE_GPU_GRIDS = ("zero-x1", "zero-holdout", "zero-holdout2", "zero2-seq", "zero3-seq", "zero3-large", "zero3-offload",
                      "zero3-offload-hist", "zero-lora-holdout", "zero-lora-holdout2")  # fmt: skip
#: multi-GPU grids (campaign_multi.py's GRIDS) -> the GPU count they are built for; measured on two or more GPUs, or as
#: fake ranks on one (vramplan/trainer/fake_rank.py: allocated and reserved, no device peak)
MULTI_GPU_GRIDS = {"ddp-holdout": ("ddp-holdout", 2), "zero-x2": ("zero", 2), "scale-x4": ("scale", 4),
                   "scale-x8": ("scale", 8), "fsdp-ranks": ("fsdp-ranks", 2),
                   "fsdp-holdout": ("fsdp-holdout", 2), "fsdp-lora": ("fsdp-lora", 2),
                   "fsdp-cpu": ("fsdp-cpu", 2), "fsdp-cpu-holdout": ("fsdp-cpu-holdout", 2),
                   "fsdp-qlora-holdout": ("fsdp-qlora-holdout", 2),
                   "fsdp-lora-holdout": ("fsdp-lora-holdout", 2),
                   "zero2-ranks-holdout": ("zero2-ranks-holdout", 2),
                   "zero3-ranks-holdout": ("zero3-ranks-holdout", 2),
                   "zero3-lora-ranks-holdout": ("zero3-lora-ranks-holdout", 2),
                   "zero3-offload-ranks-holdout": ("zero3-offload-ranks-holdout", 2)}  # fmt: skip
#: grid -> its committed predictions
PREDICTION_FILES = {
    "holdout": PREDICTIONS,
    **{g: HOLDOUT_DIR / f"{g}-predictions.json" for g in ("stacks", "unsloth", "timing", "sim", "default", "nograd",
                                                          "ckptbwd", "families", "qwen3", "unsloth-gemma", "unsloth-gemma2",
                                                          "unsloth-gemma3", *MULTI_GPU_GRIDS, *ZERO_ONE_GPU_GRIDS)},
}
GIB = 2**30


def _h200_step_s(model: str, setup: TrainingSetup) -> float | None:
    """The predicted seconds per optimizer step on the H200 (throughput constants as shipped)."""
    timed = step_time(resolve_model(model), setup, find_gpu("h200"))
    return round(timed.total_s, 4) if timed else None


def _simulated(spec) -> dict[str, int]:
    """The simulated reserved rule's reserved and device peaks, where it covers the setup (calibrated context)."""
    try:
        e = estimate_for(spec.model, spec.setup, reserved_rule="simulated")
    except VramplanError:
        return {}
    shown = e.calibrated or e.memory
    return {"reserved_simulated": shown.peak_reserved_bytes, "device_simulated": shown.device_peak_bytes}


def grid_specs(grid: str) -> list:
    """The runs of `grid`: a campaign.py grid, or zero-x1 (campaign_multi.py's ZeRO runs at world size 1)."""
    if grid in ZERO_ONE_GPU_GRIDS:
        import campaign_multi

        runs = campaign_multi.GRIDS["zero" if grid == "zero-x1" else grid](1)
        return [r for r in runs if r.setup.parallel in ("zero2", "zero3")]
    if grid in MULTI_GPU_GRIDS:  # campaign_multi.py --grid G --num-gpus N
        import campaign_multi

        name, n = MULTI_GPU_GRIDS[grid]
        runs = campaign_multi.GRIDS[name](n)
        return [r for r in runs if r.setup.num_gpus > 1]
    return getattr(campaign, GRIDS[grid])()


def predictions(grid: str) -> dict:
    """The current model's predictions for every run of `grid` (what ``predict`` writes)."""
    entries = []
    version = None
    for spec in grid_specs(grid):
        e = estimate_for(spec.model, spec.setup)
        shown = e.calibrated or e.memory
        version = e.calibration_version
        entries.append(
            {
                "name": spec.name,
                "model": spec.model,
                "setup": spec.setup.model_dump(mode="json"),
                "label": setup_label(spec.setup),
                "allocated": shown.peak_allocated_bytes,
                "reserved": shown.peak_reserved_bytes,
                "device": shown.device_peak_bytes,
                "reserved_rule": shown.reserved_rule,
                "stack": e.stack,
                "step_s_h200": _h200_step_s(spec.model, spec.setup),
                **_simulated(spec),
                # DDP's construction (its broadcast's flat copies with every weight): the record's load peak allocated
                **({"load_peak_allocated": shown.phases["engine_init"]} if spec.setup.parallel == "ddp" else {}),
            }
        )
    return {"calibration_version": version, "grid": grid, "predictions": entries}


def predict(path: Path, grid: str = "holdout") -> int:
    doc = predictions(grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(doc['predictions'])} predictions -> {path}")
    return 0


#: grids whose FSDP runs load the model on the CPU, the built-in trainer's way since 2026-12-04 (run.builds_on_cpu); the
#: FSDP grids before them built it on each GPU: each grid's predictions are compared with records of its own way
CPU_LOADED_GRIDS = frozenset({"fsdp-cpu", "fsdp-cpu-holdout", "fsdp-lora-holdout"})


def _fsdp_load_device(run) -> str | None:
    """Where an FSDP record's model was loaded ("cpu" / "gpu"); None for other strategies."""
    if run.setup.parallel != "fsdp":
        return None
    return (run.extra or {}).get("fsdp_load_device", "gpu")


def compare(path: Path | None, runs_dir: Path, grid: str = "holdout") -> int:
    """Measured runs against the committed predictions in `path`, or (path None) the current model's."""
    doc = json.loads(path.read_text()) if path is not None else predictions(grid)
    if path is None:
        print("the current model's predictions (not the committed ones)")
    # FSDP records of the grid's own way of loading (CPU_LOADED_GRIDS), the newest of a setup measured twice
    want = "cpu" if grid in CPU_LOADED_GRIDS else "gpu"
    runs = sorted(load_runs([runs_dir]), key=lambda r: r.created_utc or "")
    by_key = {(r.model, r.setup.model_dump_json()): r for r in runs
              if not r.measurements.oom and _fsdp_load_device(r) in (None, want)}  # fmt: skip
    errors: dict[str, list[float]] = {"allocated": [], "reserved": [], "device": []}
    print(f"predictions made with {doc['calibration_version']}")
    print(f"{'run':<24} {'rule':<21} {'alloc':>14} {'reserved':>14} {'device':>14}   errors (alloc/reserved/device)")
    for p in doc["predictions"]:
        key = (p["model"], TrainingSetup.model_validate(p["setup"]).model_dump_json())
        run = by_key.get(key)
        if run is None:
            print(f"{p['name']:<24} not measured")
            continue
        m = run.measurements
        # a fake rank (vramplan/trainer/fake_rank.py) has the allocator of a multi-GPU rank but not NCCL's memory
        fake = run.extra.get("process_group") == "fake"
        device = None if fake else m.device_peak_bytes
        measured = {"allocated": m.max_allocated_bytes, "reserved": m.max_reserved_bytes, "device": device}
        errs = {k: p[k] / v - 1 for k, v in measured.items() if v}
        for k, v in errs.items():
            errors[k].append(v)
        cols = "".join(f" {p[k] / GIB:6.2f}/{measured[k] / GIB:6.2f}" for k in ("allocated", "reserved", "device") if
                       measured[k])  # fmt: skip
        cols += "   fake rank: no device" if fake else ""
        print(f"{p['name']:<24} {p['reserved_rule']:<21}{cols}   " + " ".join(f"{100 * errs[k]:+5.2f}%" for k in errs))
        for k in ("reserved", "device"):
            if f"{k}_simulated" in p and measured[k]:
                errors.setdefault(f"{k} (simulated)", []).append(p[f"{k}_simulated"] / measured[k] - 1)
                print(f"{'':<24} simulated {k}: {p[f'{k}_simulated'] / GIB:6.2f}/{measured[k] / GIB:6.2f}  "
                      f"{100 * (p[f'{k}_simulated'] / measured[k] - 1):+5.1f}%")
    for k, errs in errors.items():
        if errs:
            print(
                f"{k:<9}: {len(errs)} runs, median |error| {100 * statistics.median(abs(e) for e in errs):.1f}%, "
                f"worst {100 * max(abs(e) for e in errs):.1f}%, worst under-prediction {100 * min(errs):+.1f}%"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("predict")
    c = sub.add_parser("compare")
    c.add_argument("runs_dir", type=Path)
    parser.add_argument("--grid", choices=sorted(PREDICTION_FILES), default="holdout")
    parser.add_argument("--predictions", type=Path, default=None, help="default: the grid's committed file")
    parser.add_argument("--now", action="store_true", help="compare: the current model's predictions instead")
    args = parser.parse_args(argv)
    path = args.predictions or PREDICTION_FILES[args.grid]
    if args.cmd == "predict":
        return predict(path, args.grid)
    return compare(None if args.now else path, args.runs_dir, args.grid)


if __name__ == "__main__":
    raise SystemExit(main())
