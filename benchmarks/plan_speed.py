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


#: cold plans (a new process's first query: every simulated sequence built and replayed), the setups whose multi-GPU
#: options the simulation covers (FSDP, ZeRO-2, ZeRO-3 on 2, 4 and 8 GPUs)
COLD_SETUPS = {
    "llama-3.1-8b full s2048 gc": ("llama-3.1-8b", {"method": "full", "grad_ckpt": True}),
    "llama-3.1-8b lora r16 s2048 gc": ("llama-3.1-8b", {"method": "lora", "grad_ckpt": True}),
    "llama-3.1-70b lora r16 s2048 gc": ("llama-3.1-70b", {"method": "lora", "grad_ckpt": True}),
}


def cold_plan_ms(model_name: str, kwargs: dict) -> float:
    """One plan after clearing the replay, sequence-phase and coordinator caches (as in a new process)."""
    from gpu_catalog import list_gpus
    from vramplan.api import default_calibration
    from vramplan.memory.allocator import simulated
    from vramplan.models import resolve_model
    from vramplan.planner import plan
    from vramplan.specs import LoraSpec, TrainingSetup

    simulated.clear_caches()
    setup = TrainingSetup(lora=LoraSpec(rank=16) if kwargs["method"] != "full" else None, **kwargs)
    model, gpus, calibration = resolve_model(model_name), list_gpus(), default_calibration()
    t0 = time.perf_counter()
    plan(model, setup, gpus, max_gpus=8, total_tokens=1e9, calibration=calibration)
    return (time.perf_counter() - t0) * 1e3


if __name__ == "__main__":
    for label, (model_name, kwargs) in SETUPS.items():
        ms = plan_ms(model_name, kwargs)
        print(f"plan() whole catalog x 1..8 GPUs x every strategy, {label}: median {statistics.median(ms):.1f} ms, "
              f"max {max(ms):.1f} ms  [target < 200 ms]")  # fmt: skip
    for label, (model_name, kwargs) in COLD_SETUPS.items():
        ms = [cold_plan_ms(model_name, kwargs) for _ in range(2)]
        print(f"cold plan() whole catalog, {label}: {min(ms):.0f} ms (of 2)  [a fraction of a second]")
