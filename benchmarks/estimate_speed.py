"""Prints the estimate-path timings that issue 2 targets (< 0.5 s CLI wall, < 5 ms in-process).

    python benchmarks/estimate_speed.py
"""

import statistics
import subprocess
import sys
import time

CLI = [sys.executable, "-m", "vramplan", "estimate", "--model", "llama-3.1-8b", "--method", "qlora",
       "--lora-rank", "16", "--seq-len", "2048", "--grad-ckpt", "--gpu", "rtx-4090", "--format", "json"]  # fmt: skip


def cli_wall_s(repeats: int = 7) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(CLI, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def in_process_ms(repeats: int = 200) -> list[float]:
    from gpu_catalog import find_gpu
    from vramplan.estimator import estimate
    from vramplan.models import resolve_model
    from vramplan.specs import LoraSpec, TrainingSetup

    spec = resolve_model("llama-3.1-8b")
    gpu = find_gpu("rtx-4090")
    setup = TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="nf4", grad_ckpt=True)
    estimate(spec, setup, gpu)  # warm pydantic schemas
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        estimate(spec, setup, gpu)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


if __name__ == "__main__":
    wall = cli_wall_s()
    ms = in_process_ms()
    print(f"vramplan estimate (CLI, fresh process): median {statistics.median(wall):.3f} s, max {max(wall):.3f} s  [target < 0.5 s]")
    print(f"estimate() in-process: median {statistics.median(ms):.2f} ms, p95 {sorted(ms)[int(0.95 * len(ms))]:.2f} ms  [target < 5 ms]")
