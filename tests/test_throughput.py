"""FLOPs per token by method, step time on a GPU, and the leave-one-out check against the shipped H100 and H200 runs."""

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
    leave_one_out_by,
    leave_one_out_step_times,
    median_abs_error,
    speed_runs,
    step_time,
    step_work,
    throughput_constants,
)

LLAMA = resolve_model("llama-3.1-8b")
H100 = find_gpu("h100-sxm")
#: Llama-3.1-8B: the nn.Linear weights of the 32 layers, and lm_head
BODY = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)
HEAD = 128_256 * 4096
#: issue 5: median |error| of step time on the shipped H100 runs, leave-one-out; issue 10: 12 % on the H200
STEP_TIME_TARGET = {"h100-sxm": 0.15, "h200": 0.12}


def make(method: str, **kw) -> TrainingSetup:
    lora = LoraSpec(rank=16) if method != "full" else None
    return TrainingSetup(method=method, lora=lora, quant="nf4" if method == "qlora" else None, **kw)


@pytest.fixture(scope="module")
def shipped():
    return load_runs([shipped_runs_dir()])


@pytest.fixture(scope="module")
def loo(shipped):
    return leave_one_out_step_times(shipped)


def _loo_with(shipped, **pinned):
    """Leave-one-out with some constants pinned (name=value): the same fit without those terms."""
    import vramplan.throughput as T

    saved = dict(T.PRIORS)
    try:
        T.PRIORS.update({k: (v, v, v) for k, v in pinned.items()})
        return median_abs_error(leave_one_out_step_times(shipped))
    finally:
        T.PRIORS.clear()
        T.PRIORS.update(saved)


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


def test_step_time_leave_one_out_median_error_meets_the_target_per_gpu_family(shipped, loo):
    # 2026-12-03: 10.9 % over 155 runs; H100 10.2 % (68), H200 11.0 % (87), under the between-run floor of about
    # 6.7 % plus the model's own error (scripts/step_time_noise.py)
    assert len(loo) >= 150
    by_gpu = leave_one_out_by(shipped, loo, lambda r: r.environment.gpu_id)
    assert set(by_gpu) == set(STEP_TIME_TARGET)
    for gpu, (runs, median) in by_gpu.items():
        assert runs >= 50, gpu
        assert median <= STEP_TIME_TARGET[gpu], gpu
    assert median_abs_error(loo) <= 0.115


def test_step_time_leave_one_out_error_by_method_and_stack(shipped, loo):
    # 2026-12-03: full 6.5 %, LoRA 11.1 %, QLoRA 15.8 %; hf 10.5 %, hf --liger 10.9 %, trl 11.0 %, trl --liger 13.2 %;
    # session 9 (20 checkpointed full-FT hold-out runs of three steps each): full 8.2 % over 75
    by_method = leave_one_out_by(shipped, loo, lambda r: r.setup.method)
    assert by_method["full"][1] <= 0.085 and by_method["lora"][1] <= 0.13 and by_method["qlora"][1] <= 0.18
    by_stack = leave_one_out_by(shipped, loo, lambda r: r.setup.stack + ("+liger" if r.setup.liger else ""))
    assert all(median <= 0.15 for _, median in by_stack.values()), by_stack


def test_launch_overheads_count_norm_modules_and_experts_per_pass():
    gemma, olmoe = resolve_model("gemma-3-4b-it"), resolve_model("olmoe-1b-7b-0924")
    gc, no_gc = make("lora", grad_ckpt=True), make("lora", grad_ckpt=False)
    # Llama: 2 norms a layer; Gemma 3: 4 plus q/k norms; passes: forward + backward (+ the recompute)
    assert step_work(LLAMA, gc).overheads["norm_overhead_s"] == 32 * 2 * 3
    assert step_work(LLAMA, no_gc).overheads["norm_overhead_s"] == 32 * 2 * 2
    assert step_work(gemma, gc).overheads["norm_overhead_s"] == 34 * 6 * 3
    assert step_work(LLAMA, gc).overheads["expert_overhead_s"] == 0.0
    assert step_work(olmoe, gc).overheads["expert_overhead_s"] == 16 * 64 * 3


def test_qlora_dequantizes_every_quantized_weight_once_per_pass():
    # forward and backward (grad input), plus the recompute under checkpointing; lm_head stays bf16
    assert step_work(LLAMA, make("qlora", grad_ckpt=True)).dequantized_weights == 3 * BODY
    assert step_work(LLAMA, make("qlora", grad_ckpt=False, grad_accum=2)).dequantized_weights == 2 * 2 * BODY
    assert step_work(LLAMA, make("lora", grad_ckpt=True)).dequantized_weights == 0


def test_adapter_traffic_counts_in_and_out_features_per_token_per_pass():
    # Llama-3.1-8B all-linear: q 4096+4096, k and v 4096+1024, o 4096+4096, gate and up 4096+14336, down 14336+4096
    per_layer = 8192 + 2 * 5120 + 8192 + 3 * 18432
    assert step_work(LLAMA, make("lora", grad_ckpt=True, seq_len=2048)).adapter_elements == 2048 * 3 * 32 * per_layer
    assert step_work(LLAMA, make("full", seq_len=2048)).adapter_elements == 0


def test_host_and_device_time_overlap_in_part():
    import vramplan.throughput as T

    setup, constants = make("lora", grad_ckpt=True, seq_len=2048), throughput_constants()
    features = T._features(step_work(LLAMA, setup), T.peak_flops(H100, setup), H100.bandwidth_gbps * 1e9)
    device, host, serial = T._parts(features, constants)
    t = step_time(LLAMA, setup, H100, constants)
    assert t.compute_s == pytest.approx(device)
    both = t.total_s - serial - t.optimizer_s  # device and host together
    assert max(device, host) < both < device + host
    assert both == pytest.approx(device + host - constants["host_device_overlap"] * min(device, host))


def test_more_bandwidth_at_the_same_peak_speeds_up_the_memory_bound_work():
    # the H200 has the H100's dense peak and 43 % more bandwidth: the adapters' traffic, the dequantization
    # and the optimizer step are faster, the matmuls are not
    h200 = find_gpu("h200")
    for method in ("lora", "qlora"):
        setup = make(method, grad_ckpt=True, seq_len=2048)
        assert step_time(LLAMA, setup, h200).compute_s < step_time(LLAMA, setup, H100).compute_s
    full = make("full", grad_ckpt=True, seq_len=2048)
    assert step_time(LLAMA, full, h200).compute_s == pytest.approx(step_time(LLAMA, full, H100).compute_s)


def test_the_fit_recovers_the_constants_that_made_the_step_times(shipped):
    # synthetic measurements from known constants (inside the bounds): the fit must find them again
    import vramplan.throughput as T

    rows = T._rows(shipped)
    truth = {k: lo + (hi - lo) * f for (k, (_, lo, hi)), f in zip(PRIORS.items(), (0.8, 0.1, 0.15, 0.05, 0.1, 0.1,
                                                                                   0.05, 0.01, 0.2, 0.1, 0.4))}
    synthetic = [T._Row(r.run_id, r.features, r.fixed_s, r.predicted_s(truth)) for r in rows]
    fitted = T._fit_rows(synthetic)
    for k, v in truth.items():
        assert fitted[k] == pytest.approx(v, rel=1e-4, abs=1e-9), k


def test_the_launch_terms_improve_the_leave_one_out_fit(shipped, loo):
    # 2026-12-02: 15.0 -> 12.8 % over 144 runs; with the ten hold-out runs, 13.8 -> 13.1 % over 154;
    # 2026-12-03, in the device/host model: 12.5 -> 10.9 % over 155 (H200 14.1 -> 11.0 %); session 8, with the 13
    # hold-out runs (12 full FT / LoRA of few norms each): 12.1 -> 11.1 % over 168; session 9, with 15 checkpointed full
    # FT runs (launch-bound less: 7B, 36-layer 3B / 4B, long sequences): 11.3 -> 11.1 % over 183
    assert median_abs_error(loo) < _loo_with(shipped, norm_overhead_s=0.0, expert_overhead_s=0.0) - 0.001


def test_the_non_flop_device_work_and_the_overlap_improve_the_leave_one_out_fit(shipped, loo):
    # 2026-12-03: 10.9 % over 155 runs; without the adapters' traffic and the dequantization 13.5 %, without the
    # host/device overlap 12.2 %, without all three 13.4 % (the old per-method efficiencies: 13.0 %)
    with_all = median_abs_error(loo)
    assert with_all < _loo_with(shipped, adapter_traffic_bytes=0.0, dequant_bytes_per_weight=0.0) - 0.015
    assert with_all < _loo_with(shipped, host_device_overlap=0.0) - 0.005


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
