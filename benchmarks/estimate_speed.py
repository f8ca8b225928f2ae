"""Prints the estimate-path timings that issues 2 and 14 target: `vramplan estimate` (table and JSON) at most
0.2 s wall median in a fresh process, and well under 5 ms per estimate in-process. Each CLI time is also given
as a ratio to a bare `python -c pass` measured in the same loop (interleaved, so a busy machine slows both),
which is what to compare across machines.

    python benchmarks/estimate_speed.py [--repeats 15]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

SETUP = ["--model", "llama-3.1-8b", "--method", "qlora", "--lora-rank", "16", "--seq-len", "2048", "--grad-ckpt",
         "--gpu", "rtx-4090"]  # fmt: skip
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "vramplan estimate --format json": [sys.executable, "-m", "vramplan", "estimate", *SETUP, "--format", "json"],
    "vramplan estimate (table)": [sys.executable, "-m", "vramplan", "estimate", *SETUP],
}
#: issue 14: the CLI answers an estimate in at most this many seconds (median, fresh process)
TARGET_CLI_S = 0.2


def cli_wall_s(repeats: int) -> dict[str, list[float]]:
    """Wall seconds per command, the commands interleaved in each round (after one untimed warm-up round that
    also writes the bytecode caches, as an installed package has them)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for round_ in range(repeats + 1):
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            if round_:
                times[name].append(time.perf_counter() - t0)
    return times


def in_process_ms(repeats: int = 200) -> list[float]:
    from gpu_catalog import find_gpu
    from vramplan.estimator import estimate
    from vramplan.models import resolve_model
    from vramplan.specs import LoraSpec, TrainingSetup

    spec = resolve_model("llama-3.1-8b")
    gpu = find_gpu("rtx-4090")
    setup = TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="nf4", grad_ckpt=True)
    estimate(spec, setup, gpu)  # warm the specs (their checks are built on first use) and the caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        estimate(spec, setup, gpu)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    wall = cli_wall_s(args.repeats)
    bare = statistics.median(wall["python -c pass"])
    for name, ts in wall.items():
        med = statistics.median(ts)
        target = f"  [target <= {TARGET_CLI_S} s]" if name.startswith("vramplan") else ""
        print(f"{name:34s} median {med:.3f} s, min {min(ts):.3f} s, {med / bare:5.1f}x bare python{target}")
    ms = in_process_ms()
    print(f"estimate() in-process: median {statistics.median(ms):.2f} ms, p95 {sorted(ms)[int(0.95 * len(ms))]:.2f} ms  [target < 5 ms]")
