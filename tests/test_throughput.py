"""FLOPs per token by method, step time on a GPU, and the leave-one-out check against the shipped H100 runs."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_catalog import find_gpu
from vramplan.models import resolve_model
from vramplan.runs import load_runs, shipped_runs_dir
from vramplan.specs import LoraSpec, TrainingSetup
from vramplan.throughput import (
    PRIORS,
    fit_throughput,
    flops_per_token,
    leave_one_out_step_times,
    median_abs_error,
    speed_runs,
    step_time,
    throughput_constants,
)

LLAMA = resolve_model("llama-3.1-8b")
H100 = find_gpu("h100-sxm")
#: Llama-3.1-8B: the nn.Linear weights of the 32 layers, and lm_head
BODY = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)
HEAD = 128_256 * 4096
#: issue 5: median |error| of step time on the shipped H100 runs, leave-one-out
STEP_TIME_TARGET = 0.15


def make(method: str, **kw) -> TrainingSetup:
    lora = LoraSpec(rank=16) if method != "full" else None
    return TrainingSetup(method=method, lora=lora, quant="nf4" if method == "qlora" else None, **kw)


@pytest.fixture(scope="module")
def shipped():
    return load_runs([shipped_runs_dir()])


def test_full_fine_tuning_is_6n_per_token_plus_attention():
    f = flops_per_token(LLAMA, make("full", seq_len=2048))
    assert f["forward"] + f["backward"] == 6 * (BODY + HEAD)
    assert f["attention"] == 3 * 4 * (2048 / 2) * 4096 * 32  # QK^T and AV, causal, forward + 2x backward
    assert f["recompute"] == f["adapters"] == 0


def test_lora_has_no_weight_gradients_for_the_frozen_base():
    f = flops_per_token(LLAMA, make("lora"))
    assert f["forward"] + f["backward"] == 4 * (BODY + HEAD)
    assert f["adapters"] == 6 * 41_943_040  # 41.94 M adapter params at r16 all-linear (memory_model.md section 2)


def test_checkpointing_recomputes_the_layers_forward_but_not_lm_head():
    plain = flops_per_token(LLAMA, make("qlora"))
    ckpt = flops_per_token(LLAMA, make("qlora", grad_ckpt=True))
    assert ckpt["recompute"] == 2 * BODY + plain["attention"] / 3


def test_eager_attention_computes_the_masked_half_too():
    sdpa = flops_per_token(LLAMA, make("lora", attn="sdpa"))["attention"]
    assert flops_per_token(LLAMA, make("lora", attn="eager"))["attention"] == 2 * sdpa


def test_step_time_leave_one_out_median_error_meets_the_target(shipped):
    checks = leave_one_out_step_times(shipped)
    h100 = {r.run_id for r in shipped if r.environment.gpu_id == "h100-sxm"}
    assert len(checks) >= 50
    assert median_abs_error([c for c in checks if c.run_id in h100]) <= STEP_TIME_TARGET
    # issue 10 asks 12 % on the H200; 2026-12-02: 13.2 % over 87 runs, with a between-run floor of about 6.7 %
    # (scripts/step_time_noise.py): this guards what is reached, not the target
    h200 = {r.run_id for r in shipped if r.environment.gpu_id == "h200"}
    assert median_abs_error([c for c in checks if c.run_id in h200]) <= 0.14


def test_launch_overheads_count_norm_modules_and_experts_per_pass():
    from vramplan.throughput import step_work

    gemma, olmoe = resolve_model("gemma-3-4b-it"), resolve_model("olmoe-1b-7b-0924")
    gc, no_gc = make("lora", grad_ckpt=True), make("lora", grad_ckpt=False)
    # Llama: 2 norms a layer; Gemma 3: 4 plus q/k norms; passes: forward + backward (+ the recompute)
    assert step_work(LLAMA, gc).overheads["norm_overhead_s"] == 32 * 2 * 3
    assert step_work(LLAMA, no_gc).overheads["norm_overhead_s"] == 32 * 2 * 2
    assert step_work(gemma, gc).overheads["norm_overhead_s"] == 34 * 6 * 3
    assert step_work(LLAMA, gc).overheads["expert_overhead_s"] == 0.0
    assert step_work(olmoe, gc).overheads["expert_overhead_s"] == 16 * 64 * 3


def test_the_launch_terms_improve_the_leave_one_out_fit(shipped):
    # 2026-12-02: 15.0 -> 12.8 % over 144 runs; with the ten hold-out runs, 13.8 -> 13.1 % over 154
    import vramplan.throughput as T

    with_counts = median_abs_error(leave_one_out_step_times(shipped))
    saved = dict(T.PRIORS)
    try:  # the same fit with both counts pinned at zero
        T.PRIORS["norm_overhead_s"] = (0.0, 0.0, 0.0)
        T.PRIORS["expert_overhead_s"] = (0.0, 0.0, 0.0)
        without = median_abs_error(leave_one_out_step_times(shipped))
    finally:
        T.PRIORS.clear()
        T.PRIORS.update(saved)
    assert with_counts < without - 0.005


def test_shipped_throughput_constants_are_the_fit_of_the_shipped_runs(shipped):
    fitted = fit_throughput(shipped).constants
    shipped_constants = throughput_constants()
    for name, value in fitted.items():
        assert shipped_constants[name] == pytest.approx(value, rel=1e-6), name


def test_fitted_constants_are_within_their_bounds():
    for name, value in throughput_constants().items():
        _, lo, hi = PRIORS[name]
        assert lo <= value <= hi, name


def test_speed_runs_leave_out_oom_and_capped_runs(shipped):
    used = speed_runs(shipped)
    assert all(not r.measurements.oom and r.measurements.memory_cap_bytes is None for r in used)
    assert len(used) < len(shipped)


def test_predicted_step_time_is_close_to_a_measured_run(shipped):
    run = next(r for r in shipped if r.run_id.startswith("llama-3.1-8b-lora-r16-s4096-b1-gc"))
    predicted = step_time(LLAMA, run.setup, H100).total_s
    measured = sum(run.measurements.step_times_s[1:]) / len(run.measurements.step_times_s[1:])
    assert predicted == pytest.approx(measured, rel=0.15)


def test_unknown_peak_gives_no_speed_not_a_guess():
    assert find_gpu("t4").bf16_tflops is None
    assert step_time(LLAMA, make("qlora"), find_gpu("t4")) is None


def test_ddp_on_nvlink_nearly_doubles_tokens_per_s():
    one = step_time(LLAMA, make("lora", grad_ckpt=True), H100)
    two = step_time(LLAMA, make("lora", grad_ckpt=True, num_gpus=2, parallel="ddp"), H100)
    assert 1.8 * one.tokens_per_s <= two.tokens_per_s <= 2 * one.tokens_per_s + 1e-6


def test_fsdp_over_pcie_exposes_more_communication_than_over_nvlink():
    setup = make("full", grad_ckpt=True, num_gpus=8, parallel="fsdp")
    nvlink = step_time(LLAMA, setup, find_gpu("a100-80gb"))
    pcie = step_time(LLAMA, setup, find_gpu("a100-80gb-pcie"))
    assert pcie.communication_s > nvlink.communication_s


@settings(deadline=None, max_examples=30)
@given(
    method=st.sampled_from(["full", "lora", "qlora"]),
    seq=st.sampled_from([512, 1024, 2048, 4096]),
    batch=st.integers(1, 8),
    ckpt=st.booleans(),
)
def test_step_time_grows_with_tokens_and_checkpointing_never_speeds_up(method, seq, batch, ckpt):
    base = step_time(LLAMA, make(method, seq_len=seq, batch_size=batch, grad_ckpt=ckpt), H100).total_s
    assert step_time(LLAMA, make(method, seq_len=seq * 2, batch_size=batch, grad_ckpt=ckpt), H100).total_s > base
    assert step_time(LLAMA, make(method, seq_len=seq, batch_size=batch + 1, grad_ckpt=ckpt), H100).total_s > base
    assert step_time(LLAMA, make(method, seq_len=seq, batch_size=batch, grad_ckpt=True), H100).total_s >= base
