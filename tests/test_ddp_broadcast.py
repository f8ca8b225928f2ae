"""DDP's construction broadcast (memory/allocator/ddp_broadcast.py): torch's bucketing, hand-derived Llama-3.1-8B
buckets, and the load peaks of the shipped 2-GPU DDP runs."""

import json
import random
from pathlib import Path

import pytest

from vramplan.estimator import estimate
from vramplan.memory.allocator.ddp_broadcast import (
    DDP_BROADCAST_BUCKET_BYTES,
    broadcast_flat_bytes,
    broadcast_peak_bytes,
    module_states,
)
from vramplan.memory.parallel import ddp_broadcast_bytes
from vramplan.models import resolve_model
from vramplan.runs import load_runs, shipped_runs_dir
from vramplan.specs import LoraSpec, TrainingSetup

MIB = 2**20
LLAMA_8B = resolve_model("llama-3.1-8b")
H, I, V = 4096, 14336, 128_256


def lora_ddp(**kw) -> TrainingSetup:
    return TrainingSetup(method="lora", lora=LoraSpec(rank=16), grad_ckpt=True, num_gpus=2, parallel="ddp", **kw)


def test_a_bucket_closes_at_250_mib_per_dtype_and_a_lone_tensor_is_not_copied():
    big, small = DDP_BROADCAST_BUCKET_BYTES, 100 * MIB
    states = [("float2", big), ("float2", small), ("float4", 1), ("float2", small), ("float2", small), ("float4", 2)]
    # buckets by first index: [big] alone (a view), [small x3] closed at 300 MiB, the fp32 pair left open
    assert broadcast_flat_bytes(states) == [0, 3 * small, 3]
    assert broadcast_peak_bytes([0, 3 * small, 3]) == 3 * small + 3
    assert broadcast_peak_bytes([5, 7, 2]) == 12  # two in flight


def test_llama_8b_lora_broadcast_peaks_at_its_last_two_bf16_buckets():
    # the last bf16 bucket: layer 31's up and down proj, its two norms, the final norm and the untied lm_head; the one
    # before it: layer 30's down proj and norms, layer 31's q, k, v, o and gate proj
    last = 2 * H * I * 2 + 3 * H * 2 + V * H * 2
    before = H * I * 2 + 2 * H * 2 + (H * H + 2 * H * 1024 + H * H) * 2 + H * I * 2
    assert (last, before) == (1_285_578_752, 318_783_488)
    assert ddp_broadcast_bytes(LLAMA_8B, lora_ddp(), estimate_weights(LLAMA_8B, lora_ddp())) == last + before


def test_a_ddp_estimate_names_the_broadcast_and_a_single_gpu_one_has_no_such_phase():
    e = estimate(LLAMA_8B, lora_ddp())
    assert "engine_init" in e.memory.phases and any("broadcasts the parameters" in a for a in e.assumptions)
    one = estimate(LLAMA_8B, lora_ddp().model_copy(update={"num_gpus": 1, "parallel": None})).memory
    assert "engine_init" not in one.phases


def estimate_weights(model, setup) -> dict[str, int]:
    from vramplan.estimator import CALIBRATED_DEFAULTS, _terms

    return _terms(model, setup, None, dict(CALIBRATED_DEFAULTS)).weights


def test_the_buckets_are_torchs_own():
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    dtypes = {"float2": torch.bfloat16, "float4": torch.float32, "uint8": torch.uint8}
    rng = random.Random(7)
    for _ in range(50):
        states = [(rng.choice(list(dtypes)), rng.choice([1, 2, 3, 40, 100, 260]) * MIB) for _ in range(rng.randint(1, 30))]
        tensors = [torch.empty(n // dtypes[d].itemsize, dtype=dtypes[d], device="meta") for d, n in states]
        buckets, _ = dist._compute_bucket_assignment_by_size(tensors, [DDP_BROADCAST_BUCKET_BYTES])
        want = [sum(states[i][1] for i in b) if len(b) > 1 else 0 for b in buckets]
        assert broadcast_flat_bytes(states) == want


def test_module_states_follow_named_parameters_of_a_peft_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    path = Path(__file__).resolve().parent.parent / "vramplan/models/configs/meta-llama__Llama-3.2-1B-Instruct.json"
    raw = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("torch_dtype", "dtype")}
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**raw), dtype=torch.bfloat16)
    config = peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    real = [(f"float{p.element_size()}", p.numel() * p.element_size()) for p in model.parameters()]
    spec, setup = resolve_model("llama-3.2-1b"), lora_ddp()
    w = estimate_weights(spec, setup)
    assert module_states(spec, setup, w["weights.embeddings"], w.get("weights.lm_head", 0)) == real


DDP_RUNS = [r for r in load_runs([shipped_runs_dir()]) if r.setup.parallel == "ddp" and r.setup.num_gpus > 1]


@pytest.mark.skipif(not DDP_RUNS, reason="no shipped DDP run records")
@pytest.mark.parametrize("run", DDP_RUNS, ids=lambda r: r.run_id)
def test_the_construction_phase_is_the_measured_load_peak_of_each_ddp_run(run):
    # H200 x2, llama-3.2-1b / 3.1-8b LoRA, qwen2.5-7b QLoRA: 3,071 / 17,833 / 10,531 MB measured, -0.03 / -0.00 /
    # -0.16 % (the QLoRA weights' own 17 MB); without the broadcast the largest load-time phase was 2.4 / 9.0 / 25 % below them
    m = estimate(resolve_model(run.model_source or run.model), run.setup).memory
    assert m.phases["engine_init"] == pytest.approx(run.extra["rank0_load_peak_allocated_bytes"], rel=0.002)


#: reserved peak of each DDP run (simulated, leave-one-out as `vramplan validate`): with the broadcast's cached segments
#: the 1B LoRA went -5.1 % -> 0.0 % (to the byte) and the 7B QLoRA -1.9 % -> -0.1 %; the 8B LoRA stays +2.3 %: its own
#: replay now gives -0.06 %, but the one-GPU replay plus bucket segments (simulated._at_least_one_gpu_plus_buckets, the
#: planner's floor) is larger and is kept. (Measured, that run reserved 422 MB less than the one-GPU hf runs of the setup.)
RESERVED_BOUNDS = {
    "llama-3.2-1b-lora-r16-s2048-b1-gc-adamwtorchfused-bf16-sdpa-ddp-x2-": (-0.005, 0.005),
    "qwen2.5-7b-qlora-nf4dq-r16-s2048-b1-gc-adamwtorchfused-bf16-sdpa-ddp-x2-": (-0.005, 0.005),
    "llama-3.1-8b-lora-r16-s2048-b1-gc-adamwtorchfused-bf16-sdpa-ddp-x2-": (0.0, 0.03),
}


@pytest.mark.skipif(not DDP_RUNS, reason="no shipped DDP run records")
@pytest.mark.parametrize("run", DDP_RUNS, ids=lambda r: r.run_id)
def test_each_ddp_runs_reserved_peak_stays_in_its_bound(run):
    low, high = next(b for prefix, b in RESERVED_BOUNDS.items() if run.run_id.startswith(prefix))
    m = estimate(resolve_model(run.model_source or run.model), run.setup).memory
    assert m.reserved_rule == "simulated"
    assert low <= m.peak_reserved_bytes / run.measurements.max_reserved_bytes - 1 <= high


def test_a_one_gpu_ddp_estimate_does_not_stand_in_for_a_two_gpu_one():
    # one GPU has no broadcast and no buckets: the replay cache keeps the two apart, whichever is asked first
    from vramplan.estimator import estimate
    from vramplan.memory.allocator import simulated
    from vramplan.models import resolve_model
    from vramplan.specs import LoraSpec, TrainingSetup

    model = resolve_model("llama-3.2-1b")
    one = TrainingSetup(method="lora", lora=LoraSpec(rank=16), grad_ckpt=True, parallel="ddp", num_gpus=1)
    two = one.model_copy(update={"num_gpus": 2})
    alone = {}
    for s in (one, two):
        simulated.clear_caches()
        alone[s.num_gpus] = estimate(model, s).memory.peak_reserved_bytes
    assert alone[1] != alone[2]
    for first, second in ((one, two), (two, one)):
        simulated.clear_caches()
        estimate(model, first)
        assert estimate(model, second).memory.peak_reserved_bytes == alone[second.num_gpus]
