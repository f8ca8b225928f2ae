"""estimate() in-process time with the simulated reserved peak, the default (cold: sequence built and replayed;
cached: the same setup again, as the planner asks on many GPUs) against the closed-form rules (--reserved-rule
rules), and one setup over the whole GPU catalog (issue 11: cold < 10 ms, catalog < 200 ms).

    python benchmarks/simulated_speed.py

"catalog" is what a plan's single-GPU options cost: estimate() on every catalog GPU for one new setup (the replay cache cleared first; GPUs of one cuBLAS workspace size share a
replay). Medians of REPEATS runs, the fastest in brackets: this machine is shared and noisy.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_catalog import find_gpu, list_gpus  # noqa: E402

from vramplan.estimator import estimate  # noqa: E402
from vramplan.memory.allocator import simulated  # noqa: E402
from vramplan.models import resolve_model  # noqa: E402
from vramplan.specs import LoraSpec, TrainingSetup  # noqa: E402

CASES = [
    ("llama-3.2-1b", TrainingSetup(method="full", grad_ckpt=True)),
    ("llama-3.1-8b", TrainingSetup(method="lora", lora=LoraSpec(rank=16), grad_ckpt=True)),
    ("llama-3.1-8b", TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="nf4", grad_ckpt=True)),
    ("qwen2.5-7b", TrainingSetup(method="lora", lora=LoraSpec(rank=16), batch_size=2)),
    ("llama-3.1-8b", TrainingSetup(method="full", grad_ckpt=True)),
    ("qwen3-8b", TrainingSetup(method="full", grad_ckpt=True)),
    # DeepSpeed ZeRO-2 / ZeRO-3 on one GPU: sequences with a side stream (the reduction stream's allocations)
    ("llama-3.2-1b", TrainingSetup(method="full", grad_ckpt=True, parallel="zero2", optimizer="adamw_torch_fused")),
    ("llama-3.2-1b", TrainingSetup(method="full", grad_ckpt=True, parallel="zero3", optimizer="adamw_torch_fused")),
    ("llama-3.1-8b", TrainingSetup(method="full", grad_ckpt=True, parallel="zero3", optimizer="adamw_torch_fused")),
    # FSDP2 on two ranks (fsdp_steps.py: the one-GPU layers plus the units' gathers and scatters on their streams)
    ("llama-3.2-1b", TrainingSetup(method="full", grad_ckpt=True, parallel="fsdp", num_gpus=2)),
    ("llama-3.1-8b", TrainingSetup(method="full", grad_ckpt=True, parallel="fsdp", num_gpus=2)),
    # FSDP2 LoRA (bf16 adapters, the embedding and lm_head units) on eight ranks, as plans for 70B jobs ask
    ("llama-3.1-8b", TrainingSetup(method="lora", lora=LoraSpec(rank=16), grad_ckpt=True, parallel="fsdp", num_gpus=8)),
]
REPEATS = 9


def _ms(xs: list[float]) -> str:
    return f"{1e3 * statistics.median(xs):6.2f} ms [{1e3 * min(xs):6.2f}]"


def main() -> None:
    gpu, gpus = find_gpu("h100-sxm"), list_gpus()
    for name, setup in CASES:
        spec = resolve_model(name)
        estimate(spec, setup, gpu, reserved_rule="rules")  # warm
        rules, cold, cached, catalog = [], [], [], []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            estimate(spec, setup, gpu, reserved_rule="rules")
            t1 = time.perf_counter()
            simulated.clear_caches()
            estimate(spec, setup, gpu, reserved_rule="simulated")
            t2 = time.perf_counter()
            estimate(spec, setup, gpu, reserved_rule="simulated")
            t3 = time.perf_counter()
            simulated.clear_caches()
            for g in gpus:
                estimate(spec, setup, g, reserved_rule="simulated")
            t4 = time.perf_counter()
            rules.append(t1 - t0), cold.append(t2 - t1), cached.append(t3 - t2), catalog.append(t4 - t3)
        label = f"{setup.method} {setup.num_gpus}x{setup.parallel}" if setup.parallel else setup.method
        print(f"{name:14s} {label:11s}: rules {_ms(rules)}  simulated cold {_ms(cold)}  cached {_ms(cached)}  "
              f"catalog ({len(gpus)} GPUs) {_ms(catalog)}")  # fmt: skip


if __name__ == "__main__":
    main()
