"""estimate() in-process time with reserved_rule "simulated" (cold: sequence built and replayed; cached: the
same setup again, as the planner asks on many GPUs) against the default closed-form rules.

    python benchmarks/simulated_speed.py
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_catalog import find_gpu  # noqa: E402

from vramplan.estimator import estimate  # noqa: E402
from vramplan.memory.allocator import simulated  # noqa: E402
from vramplan.models import resolve_model  # noqa: E402
from vramplan.specs import LoraSpec, TrainingSetup  # noqa: E402

CASES = [
    ("llama-3.2-1b", TrainingSetup(method="full", grad_ckpt=True)),
    ("llama-3.1-8b", TrainingSetup(method="lora", lora=LoraSpec(rank=16), grad_ckpt=True)),
    ("llama-3.1-8b", TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="nf4", grad_ckpt=True)),
    ("qwen2.5-7b", TrainingSetup(method="lora", lora=LoraSpec(rank=16), batch_size=2)),
]


def main() -> None:
    gpu = find_gpu("h100-sxm")
    for name, setup in CASES:
        spec = resolve_model(name)
        estimate(spec, setup, gpu)  # warm
        rules, cold, cached = [], [], []
        for _ in range(5):
            t0 = time.perf_counter()
            estimate(spec, setup, gpu)
            t1 = time.perf_counter()
            simulated._CACHE.clear()
            estimate(spec, setup, gpu, reserved_rule="simulated")
            t2 = time.perf_counter()
            estimate(spec, setup, gpu, reserved_rule="simulated")
            t3 = time.perf_counter()
            rules.append(t1 - t0), cold.append(t2 - t1), cached.append(t3 - t2)
        ms = lambda xs: f"{1e3 * statistics.median(xs):.2f} ms"  # noqa: E731
        print(f"{name:14s} {setup.method:5s}: rules {ms(rules)}  simulated cold {ms(cold)}  cached {ms(cached)}")


if __name__ == "__main__":
    main()
