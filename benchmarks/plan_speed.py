"""Prints the in-process time of a plan over the whole GPU catalog, 1..8 GPUs, every strategy (issue 5: < 200 ms).

    python benchmarks/plan_speed.py
"""

import statistics
import time

#: (model, setup): one that fits single GPUs, one that fits none (so the plan also computes suggestions)
SETUPS = {
    "llama-3.1-8b qlora r16 s2048 gc": ("llama-3.1-8b", {"method": "qlora", "quant": "nf4", "grad_ckpt": True}),
    "qwen2.5-72b full s2048 (+ suggestions)": ("qwen2.5-72b", {"method": "full"}),
}


def plan_ms(model_name: str, kwargs: dict, repeats: int = 15) -> list[float]:
    from gpu_catalog import list_gpus
    from vramplan.api import default_calibration
    from vramplan.models import resolve_model
    from vramplan.planner import plan
    from vramplan.specs import LoraSpec, TrainingSetup

    model = resolve_model(model_name)
    gpus = list_gpus()
    lora = LoraSpec(rank=16) if kwargs["method"] != "full" else None
    setup = TrainingSetup(lora=lora, **kwargs)
    calibration = default_calibration()
    plan(model, setup, gpus, max_gpus=8, total_tokens=1e9, calibration=calibration)  # warm caches and schemas
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = plan(model, setup, gpus, max_gpus=8, total_tokens=1e9, calibration=calibration)
        times.append((time.perf_counter() - t0) * 1e3)
    assert len(result.options) == len(gpus) * (1 + 3 * 4)
    return times


if __name__ == "__main__":
    for label, (model_name, kwargs) in SETUPS.items():
        ms = plan_ms(model_name, kwargs)
        print(f"plan() whole catalog x 1..8 GPUs x every strategy, {label}: median {statistics.median(ms):.1f} ms, "
              f"max {max(ms):.1f} ms  [target < 200 ms]")  # fmt: skip
