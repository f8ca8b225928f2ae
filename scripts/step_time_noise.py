#!/usr/bin/env python3
"""How much the measured step time itself moves on one GPU family: the floor under any step-time model.

    python scripts/step_time_noise.py [--gpu h200] [--runs DIR ...]

Over the shipped single-GPU runs with at least `--min-steps` steady steps (steps 1.., as
``vramplan.throughput.measured_step_s`` uses them):

* within a run: each run's steady steps, their spread (max / min - 1) and coefficient of variation;
* between runs: setups measured more than once (same model and setup), each run's mean steady step over the
  setup's mean, and the median |deviation| a model that knew each setup's true mean would still show;
* the GPU's state where the trainer recorded it (SM clock, power, throttle reasons at start and end).

It prints numbers; it asserts nothing (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vramplan.runs import load_runs, shipped_runs_dir  # noqa: E402
from vramplan.throughput import measured_step_s, speed_runs  # noqa: E402


def _key(run) -> str:
    return run.model + " " + json.dumps(run.setup.model_dump(mode="json"), sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", default="h200", help="gpu id of the runs (default h200)")
    parser.add_argument("--runs", nargs="*", default=None)
    parser.add_argument("--min-steps", type=int, default=5, help="steady steps a run needs for the within-run figures")
    args = parser.parse_args(argv)
    runs = [r for r in speed_runs(load_runs([Path(p) for p in args.runs] if args.runs else [shipped_runs_dir()]))
            if (r.environment.gpu_id or "") == args.gpu]
    if not runs:
        print(f"no speed runs on {args.gpu}")
        return 0

    long = [r for r in runs if len(r.measurements.step_times_s) - 1 >= args.min_steps]
    spreads, cvs = [], []
    for r in long:
        steady = r.measurements.step_times_s[1:]
        spreads.append(max(steady) / min(steady) - 1)
        cvs.append(statistics.pstdev(steady) / statistics.fmean(steady))
    if long:
        print(f"within a run ({len(long)} runs with >= {args.min_steps} steady steps on {args.gpu}):")
        print(f"  max/min - 1 of the steady steps: median {statistics.median(spreads):.1%}, worst {max(spreads):.1%}")
        print(f"  coefficient of variation:        median {statistics.median(cvs):.1%}, worst {max(cvs):.1%}")

    groups: dict[str, list] = defaultdict(list)
    for r in runs:
        groups[_key(r)].append(r)
    repeated = {k: v for k, v in groups.items() if len(v) > 1}
    deviations, pairs = [], []
    for rs in repeated.values():
        times = [measured_step_s(r) for r in rs]
        mean = statistics.fmean(times)
        deviations += [abs(t / mean - 1) for t in times]
        pairs.append(max(times) / min(times) - 1)
    if repeated:
        print(f"between runs ({len(repeated)} setups measured 2-3 times, {sum(len(v) for v in repeated.values())} runs):")
        print(f"  slowest / fastest - 1:                  median {statistics.median(pairs):.1%}, worst {max(pairs):.1%}")
        print(f"  |run / setup mean - 1| (a perfect model's error): median {statistics.median(deviations):.1%}")
        for rs in sorted(repeated.values(), key=lambda v: -(max(map(measured_step_s, v)) / min(map(measured_step_s, v)))):
            r0 = rs[0]
            label = f"{r0.model} {r0.setup.method} {r0.setup.stack}{'+liger' if r0.setup.liger else ''} s{r0.setup.seq_len}" \
                    f"{' gc' if r0.setup.grad_ckpt else ''}"
            times = ", ".join(f"{measured_step_s(r):.3f}" for r in sorted(rs, key=lambda r: r.created_utc))
            print(f"    {label:<48} {times} s")

    states = [(r.extra or {}) for r in runs if "gpu_sm_clock_mhz_start" in (r.extra or {})]
    if states:
        clocks = sorted({s[f"gpu_sm_clock_mhz_{w}"] for s in states for w in ("start", "end")})
        throttled = sum(1 for s in states if s.get("gpu_throttle_reasons_start") or s.get("gpu_throttle_reasons_end"))
        procs = sorted({s.get("gpu_compute_processes_end") for s in states})
        print(f"GPU state ({len(states)} runs that recorded it): SM clocks seen {clocks} MHz, "
              f"{throttled} with a throttle reason set, compute processes at the end {procs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
