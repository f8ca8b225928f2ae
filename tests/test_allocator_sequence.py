"""The predicted allocation sequence: its live peak is the estimator's peak, its tensors add up to the terms,
and its replay through the allocator model gives reserved_rule "simulated"."""

import gzip
import json
import sys
from pathlib import Path

import pytest

from gpu_catalog import find_gpu
from vramplan.errors import VramplanError
from vramplan.estimator import CALIBRATED_DEFAULTS, _terms, estimate
from vramplan.memory.allocator.replay import apply_op, replay
from vramplan.memory.allocator.sequence import EMPTY_CACHE, training_sequence
from vramplan.memory.allocator.tensors import (
    grad_tensor,
    grouped_by_layer,
    layer_adapter_tensors,
    layer_weight_tensors,
    state_tensors,
)
from vramplan.memory.trainable import trainable_groups
from vramplan.models import resolve_model
from vramplan.models.params import linear_shapes
from vramplan.runs import load_runs, shipped_runs_dir, single_gpu_run
from vramplan.specs import LoraSpec, TrainingSetup

GIB = 2**30
ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "docs" / "allocator_traces"
sys.path.insert(0, str(ROOT / "scripts"))

import trace_replay_check  # noqa: E402
# the runs the simulated rule accepts (simulated.check_reserved_rule): one GPU, no DeepSpeed, every stack
SIMULATED_RUNS = [
    r for r in load_runs([shipped_runs_dir()]) if single_gpu_run(r) and r.measurements.max_allocated_bytes
]
# the hf stack's (the accuracy and phase checks below were stated for them)
RUNS = [r for r in SIMULATED_RUNS if r.setup.stack == "hf" and not r.setup.liger]
H100 = find_gpu("h100-sxm")


def _stack_id(run) -> str:
    return ("" if run.setup.stack == "hf" else run.setup.stack + "-") + ("liger-" if run.setup.liger else "") + run.run_id


def _terms_of(model, setup, gpu=H100):
    return _terms(model, setup, gpu, dict(CALIBRATED_DEFAULTS))


@pytest.mark.parametrize("run", SIMULATED_RUNS, ids=[_stack_id(r) for r in SIMULATED_RUNS])
def test_most_live_bytes_over_the_sequence_is_the_estimators_peak_allocated(run):
    model = resolve_model(run.model_source or run.model)
    t = _terms_of(model, run.setup)
    seq = training_sequence(model, run.setup, t)
    # the tensors' bytes (the closed-form rules' estimate; the default adds the allocator's whole blocks)
    assert seq.live_peak() == estimate(model, run.setup, H100, reserved_rule="rules").memory.peak_allocated_bytes


@pytest.mark.parametrize("run", SIMULATED_RUNS, ids=[_stack_id(r) for r in SIMULATED_RUNS])
def test_every_free_in_the_sequence_frees_a_live_tensor(run):
    from vramplan.memory.allocator.ops import EMPTY_CACHE

    model = resolve_model(run.model_source or run.model)
    live: set[int] = set()
    for op in training_sequence(model, run.setup, _terms_of(model, run.setup)).ops:
        if op >= 0:
            assert op not in live
            live.add(op)
        elif op != EMPTY_CACHE:
            assert ~op in live
            live.remove(~op)


SETUPS = [
    ("llama-3.2-1b", TrainingSetup(method="full", optimizer="adamw_8bit")),
    ("llama-3.2-1b", TrainingSetup(method="full", optimizer="adafactor", dtype="fp32")),
    ("qwen2.5-0.5b", TrainingSetup(method="full", optimizer="paged_adamw_8bit")),
    ("qwen2.5-0.5b", TrainingSetup(method="full", optimizer="sgd")),
    ("llama-3.1-8b", TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="int8")),
    ("llama-3.1-8b", TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="nf4", double_quant=False)),
    ("olmoe-1b-7b-0924", TrainingSetup(method="lora", lora=LoraSpec(rank=16))),
    ("qwen3-1.7b", TrainingSetup(method="full")),
]


@pytest.mark.parametrize("name, setup", SETUPS, ids=[f"{n}-{s.method}-{s.optimizer}" for n, s in SETUPS])
def test_tensors_add_up_to_the_terms(name, setup):
    model = resolve_model(name)
    t = _terms_of(model, setup)
    layers = layer_weight_tensors(model, setup)
    linear = t.weights.get("weights.linear", t.weights.get("weights.quantized"))
    names = {x.name for x in linear_shapes(model)}
    linear_listed = sum(sum(p) for layer in layers for n, p, _ in layer if n in names)
    assert linear_listed == linear
    adapters = sum(sum(layer) for layer in layer_adapter_tensors(model, setup))
    assert adapters == t.weights.get("weights.adapters", 0)
    per_layer, head = grouped_by_layer(trainable_groups(model, setup), model.num_layers)
    tensors = [g for gs in per_layer for g in gs] + head
    assert sum(grad_tensor(g) for g in tensors) == t.grads
    assert sum(sum(state_tensors(g, setup)) for g in tensors) == t.states


def test_a_tied_model_loads_its_lm_head_and_frees_it():
    # measured on every tied model's run: load peak allocated - after load = V * h * 2 (llama-3.2-1b: 0.49 GiB)
    model = resolve_model("llama-3.2-1b")
    setup = TrainingSetup(method="full")
    seq = training_sequence(model, setup, _terms_of(model, setup), steps=0)
    embed = model.vocab_size * model.hidden_size * 2
    # the load's last op frees the lm_head built before tying, a tensor of the embedding's size; then training
    # starts with accelerator.free_memory()'s empty_cache
    assert seq.ops[-1] == EMPTY_CACHE
    assert seq.ops[-2] < 0 and seq.sizes[~seq.ops[-2]] == embed
    after_load = sum(seq.sizes[i] for i in seq.ops[seq.marks["load"]:] if i >= 0) - embed
    assert seq.live_peak() - after_load == embed


def test_training_starts_by_emptying_the_cache_as_the_recorded_history_does():
    # Trainer._inner_training_loop -> accelerator.free_memory() -> torch.cuda.empty_cache(): in the H200 history
    # r-l1-full the first empty-cache op follows the tied lm_head copy's free (501 MiB) and precedes every forward
    # allocation; the predicted sequence empties the cache at the same point
    doc = json.loads(gzip.decompress((ROOT / "docs" / "allocator_traces" / "r-l1-full.events.json.gz").read_bytes()))
    ops, sizes = doc["ops"], doc["sizes"]
    first = ops.index(EMPTY_CACHE)
    big_before = [op for op in ops[:first] if op != EMPTY_CACHE and sizes[op if op >= 0 else ~op] > 400 * 2**20]
    assert big_before[-1] < 0 and sizes[~big_before[-1]] == 128256 * 2048 * 2
    model = resolve_model("llama-3.2-1b")
    setup = TrainingSetup(method="full", seq_len=2048)
    seq = training_sequence(model, setup, _terms_of(model, setup))
    assert seq.ops[seq.marks["step0.forward"] - 1] == EMPTY_CACHE


def test_qlora_load_warms_the_allocator_with_the_weights_byte_count():
    # transformers caching_allocator_warmup: 4-bit weights at 0.5 byte per element, the rest bf16
    model = resolve_model("llama-3.1-8b")
    setup = TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="nf4")
    seq = training_sequence(model, setup, _terms_of(model, setup), steps=0)
    warmup = seq.ops[seq.marks["load"]]
    assert seq.ops[seq.marks["load"] + 1] == ~warmup  # allocated and freed at once
    assert abs(seq.sizes[warmup] - 5.59e9) < 0.01e9


def test_the_sequence_starts_with_start_cudas_tensor_and_the_warmup_leaves_out_its_cached_segment():
    # trainer/cuda_start.py makes and frees torch.empty(1) first: a 2 MiB small-pool segment, reserved and unused,
    # which caching_allocator_warmup subtracts (byte_count - (memory_reserved - memory_allocated)); the recorded
    # histories of Llama-3.1-8B QLoRA warm up with 5330.51 MiB, 2 MiB under the weights' byte count
    model = resolve_model("llama-3.1-8b")
    setup = TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="nf4", double_quant=False)
    seq = training_sequence(model, setup, _terms_of(model, setup), steps=0)
    assert seq.ops[:2] == [0, ~0] and seq.sizes[0] == 4
    warmup = seq.sizes[seq.ops[seq.marks["load"]]]
    assert warmup == 5589442560  # the request of both recorded 8B QLoRA histories, to the byte


def test_replay_reproduces_the_steady_step_loss_segments_of_a_recorded_run():
    # llama-3.2-1b full FT + GC s2048 on H100: 12.22 GiB reserved (three new loss segments in step 1)
    model = resolve_model("llama-3.2-1b")
    setup = TrainingSetup(method="full", seq_len=2048, grad_ckpt=True)
    res = replay(training_sequence(model, setup, _terms_of(model, setup)))
    assert res.peak_reserved_bytes / GIB == pytest.approx(12.22, rel=0.005)
    assert res.peak_allocated_bytes >= estimate(model, setup, H100).memory.peak_allocated_bytes


def test_a_memory_cap_below_the_need_runs_out_and_one_above_fits():
    # the capped H100 runs of llama-3.2-1b full s2048 no GC: 12.86 GiB cap OOMs, 14.12 GiB fits
    model = resolve_model("llama-3.2-1b")
    setup = TrainingSetup(method="full", seq_len=2048)
    seq = training_sequence(model, setup, _terms_of(model, setup))
    capped = replay(seq, allowed_bytes=int(12.86 * GIB))
    assert capped.oom_at_op is not None
    # the run's message: "Tried to allocate 1002.00 MiB ... 12.27 GiB is allocated by PyTorch"
    assert seq.sizes[seq.ops[capped.oom_at_op]] == 4 * 2048 * model.vocab_size  # a 4 N V loss buffer
    assert replay(seq, allowed_bytes=int(14.12 * GIB)).oom_at_op is None


def test_a_cap_that_two_steps_survive_fails_in_the_third_as_measured():
    # cap = max_allocated + 256 MiB (13.50 GiB): the run OOMs in step 2 on the H100 and the H200 (both records say
    # steps=2); release-and-retry under the cap rearranges the segments, so two simulated steps fit, three do not
    model = resolve_model("llama-3.2-1b")
    setup = TrainingSetup(method="full", seq_len=2048)
    cap = int(13.503190517425537 * GIB)
    assert replay(training_sequence(model, setup, _terms_of(model, setup)), allowed_bytes=cap).oom_at_op is None
    three = training_sequence(model, setup, _terms_of(model, setup), steps=3)
    oom = replay(three, allowed_bytes=cap).oom_at_op
    assert oom is not None and oom > three.marks["step2.forward"]
    assert replay(three, allowed_bytes=int(14.12 * GIB)).oom_at_op is None


def test_simulated_rule_reports_the_allocator_state_at_the_reserved_peak():
    model = resolve_model("llama-3.1-8b")
    setup = TrainingSetup(method="lora", lora=LoraSpec(rank=16), grad_ckpt=True)
    rules = estimate(model, setup, H100, reserved_rule="rules").memory
    m = estimate(model, setup, H100, reserved_rule="simulated").memory
    assert estimate(model, setup, H100).memory == m  # "auto", the default, simulates one GPU
    assert m.reserved_rule == "simulated" and m.rules_reserved_bytes == rules.peak_reserved_bytes
    assert m.allocated_at_reserved_peak_bytes + m.free_in_segments_at_reserved_peak_bytes == m.peak_reserved_bytes
    assert 0 < m.largest_free_block_at_reserved_peak_bytes <= m.free_in_segments_at_reserved_peak_bytes
    assert m.device_peak_bytes - m.peak_reserved_bytes == rules.device_peak_bytes - rules.peak_reserved_bytes
    assert m.peak_allocated_bytes == rules.peak_allocated_bytes


@pytest.mark.parametrize(
    "setup, rule",
    [
        (TrainingSetup(method="full"), "fitted"),
        (TrainingSetup(method="full", num_gpus=2, parallel="fsdp"), "simulated"),
        (TrainingSetup(method="full", parallel="zero2"), "simulated"),
    ],
    ids=["unknown-rule", "multi-gpu", "deepspeed"],
)
def test_simulated_rule_refuses_what_it_cannot_do(setup, rule):
    with pytest.raises(VramplanError, match="--reserved-rule"):
        estimate(resolve_model("llama-3.2-1b"), setup, reserved_rule=rule)


def test_simulated_reserved_accuracy_on_the_shipped_runs_does_not_regress():
    # docs/allocator_simulation.md: 2026-12-02, over the 98 hf runs median 0.28 %, worst 3.6 %, worst under -2.4 % (the
    # reserved peak uses no fitted constant; 8.0 / -8.0 % before the sequence followed the recorded histories)
    from vramplan.validation import validate

    v = validate(RUNS, reserved_rule="simulated")
    stats = v.stats("reserved")
    assert stats["runs"] >= 90
    assert stats["median_abs"] <= 0.004, stats
    errors = [c.error("reserved") for c in v.comparisons]
    assert max(map(abs, errors)) <= 0.04 and min(errors) >= -0.03
    # the 2026-12-02 hold-out's one miss (docs/holdout/sim-compare.txt, predicted before it ran): Qwen2.5-7B QLoRA
    # r64 at s = 4096 was -10.4 % until its history (h-q7-qlora-r64-gc-s4096, a rerun of the same setup) showed the
    # PEFT wrap's bf16 adapters and the rotary embedding's tables; +0.03 % since, on both records
    misses = [c.error("reserved") for c in v.comparisons if c.run_id in HOLDOUT_MISS]
    assert len(misses) == 2 and all(abs(miss) <= 0.002 for miss in misses)


@pytest.mark.parametrize("stack", ["hf", "hf+liger", "trl", "trl+liger", "unsloth"])
def test_simulated_reserved_meets_the_issue_targets_on_every_simulated_stack(stack):
    # issue 11: median |error| <= 1.5 %, worst <= 5 %, no run under-predicted by more than 3 % (2026-12-02: hf 0.3 /
    # 3.6 / -2.4, hf+liger 0.8 / 1.3 / -1.3, trl 0.8 / 2.9 / -2.9, trl+liger 1.3 / 2.7 / -2.7 %)
    from vramplan.validation import validate

    # (Unsloth on Gemma 3 among them since its recorded layer backward, allocator/unsloth_gemma3_layer.py)
    runs = [r for r in SIMULATED_RUNS if _stack(r) == stack]
    stats = validate(runs, reserved_rule="simulated").stats("reserved")
    assert stats["runs"] >= 10
    assert stats["median_abs"] <= 0.015 and stats["worst_abs"] <= 0.05 and stats["worst_under"] >= -0.03, stats


#: the simulated rule's one miss on the hold-out of 2026-12-02 (-10.4 %; fixed since: see above), and its rerun with a history
HOLDOUT_MISS = (
    "qwen2.5-7b-qlora-nf4dq-r64-s4096-b1-gc-adamwtorchfused-bf16-sdpa-030efde8",
    "qwen2.5-7b-qlora-nf4dq-r64-s4096-b1-gc-adamwtorchfused-bf16-sdpa-2de34101",
)


def _stack(r) -> str:
    return r.setup.stack + ("+liger" if r.setup.liger else "")


def _phased(r) -> bool:
    m = r.measurements
    return r.setup.grad_accum == 1 and not m.oom and bool(m.step0.forward) and bool(m.steady.backward)


PHASED = [r for r in RUNS if _phased(r)]


@pytest.mark.parametrize("run", PHASED, ids=[r.run_id for r in PHASED])
def test_sequence_follows_the_measured_phase_peaks_of_steps_0_and_1(run):
    # the probe's windows (trainer/probe.py): step 0 forward / backward / optimizer, then step 1; the
    # sequence's allocated trajectory is right to ~1 % (Gemma-2 eager forward +6 %, +8.6 % at s 2048: its softcapping
    # buffers held through the forward's window, not at the run's peak)
    from vramplan.memory.allocator.sequence import live_peaks_by_stretch

    model = resolve_model(run.model_source or run.model)
    peaks = live_peaks_by_stretch(training_sequence(model, run.setup, _terms_of(model, run.setup)))
    m = run.measurements
    for step, measured in (("step0", m.step0), ("step1", m.steady)):
        for phase in ("forward", "backward", "optimizer"):
            got, want = peaks[f"{step}.{phase}"], getattr(measured, phase)
            softcapped = run.model.startswith("gemma-2") and phase == "forward"
            assert abs(got / want - 1) <= (0.09 if softcapped else 0.07), (step, phase, got / want - 1)


def test_cli_estimate_json_shows_the_simulated_reserved_peak_and_the_allocator_state():
    import json

    from typer.testing import CliRunner

    from vramplan.cli import app

    args = ["estimate", "--model", "llama-3.2-1b", "--method", "full", "--grad-ckpt", "--format", "json"]
    res = CliRunner().invoke(app, [*args, "--reserved-rule", "simulated"])
    assert res.exit_code == 0, res.output
    mem = json.loads(res.output)["memory"]
    assert mem["reserved_rule"] == "simulated"
    assert mem["allocated_at_reserved_peak_bytes"] + mem["free_in_segments_at_reserved_peak_bytes"] == mem[
        "peak_reserved_bytes"
    ]
    assert mem["largest_free_block_at_reserved_peak_bytes"] > 0 and mem["rules_reserved_bytes"] > 0
    bad = CliRunner().invoke(app, [*args, "--reserved-rule", "fitted"])
    assert bad.exit_code == 2 and "accepted: auto | rules | simulated" in bad.output


@pytest.mark.parametrize("name, rank", [("llama-3.1-8b", 16), ("llama-3.1-8b", 64), ("qwen3-1.7b", 8)])
def test_autocast_adapter_copies_of_the_sequence_are_the_estimators_term(name, rank):
    # autocast_mode.cpp::cached_cast: bf16 copies of the trainable fp32 adapters, every layer's at the forward's end
    from vramplan.memory.adapters import adapter_autocast_copy_bytes, adapter_bytes
    from vramplan.memory.allocator.tensors import layer_adapter_copies

    model = resolve_model(name)
    setup = TrainingSetup(method="lora", lora=LoraSpec(rank=rank), grad_ckpt=True)
    layers = layer_adapter_copies(model, setup)
    total, one_layer = adapter_autocast_copy_bytes(model, setup)
    assert (sum(map(sum, layers)), max(map(sum, layers))) == (total, one_layer)
    assert total == pytest.approx(adapter_bytes(model, setup.lora) / 2, rel=0.01)  # 2 of the fp32 adapters' 4 B
    assert adapter_autocast_copy_bytes(model, setup.model_copy(update={"grad_ckpt": False})) == (0, 0)


def _segments_created(sizes, ops, stop_at_bytes):
    """The sizes of the segments a replay creates, in order, until the first request of stop_at_bytes."""
    from vramplan.memory.allocator.caching import CachingAllocator

    a = CachingAllocator(total_memory_bytes=150 * GIB)
    blocks, out = [None] * len(sizes), []
    for op in ops:
        if op >= 0 and sizes[op] == stop_at_bytes:
            return out
        before = a.reserved
        apply_op(a, blocks, sizes, op)
        if a.reserved > before:
            out.append(a.reserved - before)
    return out


def test_the_nf4_load_without_double_quantization_makes_the_segments_of_its_recorded_history():
    # docs/allocator_traces/t-l8-qlora-nodq-gc (H200): warmup, per-weight quantization, fp32 upcast; every segment
    # up to the first loss buffer (1002 MiB) has the recorded size and comes in the recorded order (the warmup 2 MiB
    # larger than the run's split the load's free blocks otherwise: 84 MiB more reserved, -6.0 % at the peak)
    trace = TRACES / "t-l8-qlora-nodq-gc.events.json.gz"
    doc = json.loads(gzip.decompress(trace.read_bytes()))
    run = next(r for r in RUNS if r.extra and r.extra.get("memory_snapshot", "").startswith("t-l8-qlora-nodq-gc"))
    model = resolve_model(run.model_source or run.model)
    seq = training_sequence(model, run.setup, _terms_of(model, run.setup))
    loss_buffer = 4 * run.setup.seq_len * model.vocab_size
    # the recorded list starts after start_cuda's tensor: put it back in front
    rec = trace_replay_check.with_pre_recording_tensor(doc["sizes"], doc["ops"])
    recorded = _segments_created(rec.sizes, rec.ops, loss_buffer)
    predicted = _segments_created(seq.sizes, seq.ops, loss_buffer)
    assert predicted == recorded


def _chain_of(name, setup, target):
    from vramplan.memory.allocator.lora_chain import lora_chains
    from vramplan.memory.stacks import stack_profile

    model = resolve_model(name)
    profile = stack_profile(setup)
    act = profile.activations(model, setup)
    unit = setup.batch_size * setup.seq_len * model.hidden_size
    chains = lora_chains(model, setup, act, unit, profile.adapter_itemsize, profile.kbit_fp32_upcast)
    from vramplan.memory.allocator.tensors import lora_target_pieces

    at = next(i for t, i in lora_target_pieces(model, setup, act) if t.name.endswith(target))
    return chains[at]


@pytest.mark.parametrize(
    "name, dtype, target, mib",
    [
        # s-h200-l8-lora (H200, bf16): q_proj 16 / 32 / 32 / 16, down_proj 16 / 112 / 112 / 16 MiB
        ("llama-3.1-8b", "bf16", "q_proj", (0, 16, 32, 32, 16)),
        ("llama-3.1-8b", "bf16", "down_proj", (0, 16, 112, 112, 16)),
        # t-q05-lora-fp32-s1024 (fp32 weights: the norm's fp32 output needs no copy, autocast casts it for the matmul)
        ("qwen2.5-0.5b", "fp32", "gate_proj", (1.75, 9.5, 0, 3.5, 9.5)),
        ("qwen2.5-0.5b", "fp32", "down_proj", (0, 1.75, 19, 19, 1.75)),
    ],
)
def test_a_lora_targets_forward_transients_are_the_recorded_ones(name, dtype, target, mib):
    seq_len = 2048 if name == "llama-3.1-8b" else 1024
    setup = TrainingSetup(method="lora", lora=LoraSpec(rank=16), dtype=dtype, seq_len=seq_len)
    c = _chain_of(name, setup, target)
    got = tuple(x / 2**20 for x in (c.input_cast, c.base_out, c.input_copy, c.dropout_out, c.lora_out))
    assert got == pytest.approx(mib, abs=0.01)


def test_the_non_checkpointed_lora_forward_makes_the_segments_of_its_recorded_history():
    # s-h200-l8-lora: the segments (>= 20 MiB) made up to the first bf16 logits, in order; with the LoRA chains'
    # transients 92 % of them match the recorded ones (longest common subsequence), without them 70 %
    doc = json.loads(gzip.decompress((TRACES / "s-h200-l8-lora.events.json.gz").read_bytes()))
    run = next(r for r in RUNS if (r.extra or {}).get("memory_snapshot", "").startswith("s-h200-l8-lora."))
    model = resolve_model(run.model_source or run.model)
    seq = training_sequence(model, run.setup, _terms_of(model, run.setup))
    logits = run.setup.seq_len * model.vocab_size * 2
    rec = trace_replay_check.with_pre_recording_tensor(doc["sizes"], doc["ops"])
    recorded = [x >> 20 for x in _segments_created(rec.sizes, rec.ops, logits) if x >= 20 << 20]
    predicted = [x >> 20 for x in _segments_created(seq.sizes, seq.ops, logits) if x >= 20 << 20]
    assert trace_replay_check._common_subsequence(recorded, predicted) / max(len(recorded), len(predicted)) >= 0.9


def _kept_made_with_two_residuals_alive(sizes, ops, residual: int) -> float:
    """Of the residual-sized tensors kept > 500 ops (checkpointed layers' inputs), the share whose next two ops free
    residual-sized tensors: a checkpointed layer's `residual + mlp_out`, both freed once their sum exists."""
    from vramplan.memory.allocator.ops import EMPTY_CACHE

    made, freed = {}, {}
    for n, op in enumerate(ops):
        if op >= 0:
            made[op] = n
        elif op != EMPTY_CACHE:
            freed[~op] = n
    kept = [t for t in made if sizes[t] == residual and t in freed and freed[t] - made[t] > 500]
    two = [t for t in kept if all(op < 0 and op != EMPTY_CACHE and sizes[~op] == residual
                                  for op in ops[made[t] + 1 : made[t] + 3])]  # fmt: skip
    return len(two) / len(kept)


def test_a_checkpointed_layer_makes_its_output_while_its_residual_and_mlp_output_are_alive():
    # s-h200-l8-lora-gc (Llama-3.1-8B LoRA + checkpointing, H200): 93 of the 99 kept layer inputs of its 3 steps
    doc = json.loads(gzip.decompress((TRACES / "s-h200-l8-lora-gc.events.json.gz").read_bytes()))
    run = next(r for r in RUNS if (r.extra or {}).get("memory_snapshot", "").startswith("s-h200-l8-lora-gc."))
    model = resolve_model(run.model_source or run.model)
    residual = run.setup.seq_len * model.hidden_size * 2
    assert _kept_made_with_two_residuals_alive(doc["sizes"], doc["ops"], residual) >= 0.9
    seq = training_sequence(model, run.setup, _terms_of(model, run.setup))
    assert _kept_made_with_two_residuals_alive(seq.sizes, seq.ops, residual) >= 0.9
    # layer 0's input, the embedding's output, comes before the first matmul (the rotary embedding's freqs, fp32 of
    # half the head width) and its cuBLAS workspace
    forward = seq.ops[seq.marks["step0.forward"] :]
    freqs = run.setup.seq_len * model.head_dim // 2 * 4
    assert [seq.sizes[op] for op in forward[:3]] == [residual, freqs, _terms_of(model, run.setup).workspace // 2]


def _autograd_workspace_follows_the_logits_gradient(sizes, ops, workspace: int, logits_grad: int) -> bool:
    """The first bf16 logits gradient (the first logits-sized request right after a 2x larger free: log_softmax's
    backward) is followed within 4 ops by a never-freed workspace-sized request, the autograd thread's cuBLAS workspace
    that lm_head's backward matmul makes after its first output."""
    freed = {~op for op in ops if op < 0}
    at = next(n for n, op in enumerate(ops) if op >= 0 and sizes[op] == logits_grad and ops[n - 1] < 0
              and sizes[~ops[n - 1]] == 2 * logits_grad)  # fmt: skip
    return any(op >= 0 and sizes[op] == workspace and op not in freed for op in ops[at + 1 : at + 5])


HF_HISTORIES = [
    r for r in RUNS
    if (r.extra or {}).get("memory_snapshot", "").startswith(("s-h200", "t-"))
    and not r.setup.expandable_segments and (TRACES / r.extra["memory_snapshot"].replace(".pickle", ".events.json.gz")).exists()
]  # fmt: skip


@pytest.mark.parametrize("run", HF_HISTORIES, ids=[r.extra["memory_snapshot"].removesuffix(".pickle") for r in HF_HISTORIES])
def test_the_autograd_threads_workspace_is_made_by_the_first_backward_matmul(run):
    # every recorded hf history: "+logits_grad -lsm_grad +first output +32 MiB": not at the first forward matmul
    model = resolve_model(run.model_source or run.model)
    t = _terms_of(model, run.setup)
    logits_grad = run.setup.batch_size * run.setup.seq_len * model.vocab_size * 2
    path = TRACES / run.extra["memory_snapshot"].replace(".pickle", ".events.json.gz")
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert _autograd_workspace_follows_the_logits_gradient(doc["sizes"], doc["ops"], t.workspace // 2, logits_grad)
    seq = training_sequence(model, run.setup, t)
    assert _autograd_workspace_follows_the_logits_gradient(seq.sizes, seq.ops, t.workspace // 2, logits_grad)


CKPT_MLP_HISTORIES = ["r-l8-qlora-gc-s4096", "r-l8-qlora-nodq-gc-s4096"]


@pytest.mark.parametrize("name", CKPT_MLP_HISTORIES)
def test_a_checkpointed_qlora_mlp_frees_its_tensors_as_its_forward_does(name):
    # the hf 8B QLoRA s4096 histories: the checkpointed forward's MLP holds at most 3 (b, s, i) fp32 tensors at once
    # (gate / act, the clone, the sum; act, up, the product: lora_chain.CheckpointedMlp), not gate, up and the
    # product with their transients; holding them made two more 224 MiB segments, one fewer 1002 MiB one and a
    # reserved peak 4-5 % under the recorded one
    run = next(r for r in RUNS if (r.extra or {}).get("memory_snapshot", "").startswith(name + "."))
    model = resolve_model(run.model_source or run.model)
    i_fp32 = run.setup.seq_len * model.intermediate_size * 4
    doc = json.loads(gzip.decompress((TRACES / f"{name}.events.json.gz").read_bytes()))
    seq = training_sequence(model, run.setup, _terms_of(model, run.setup))
    forward = seq.ops[seq.marks["step0.forward"] : seq.marks["step0.backward"]]
    sizes, ops = doc["sizes"], doc["ops"]  # the recorded first forward: its first MLP to its fp32 logits
    start = next(n for n, op in enumerate(ops) if op >= 0 and sizes[op] == i_fp32)
    logits = run.setup.seq_len * model.vocab_size * 4
    stop = next(n for n, op in enumerate(ops) if n > start and op >= 0 and sizes[op] == logits)
    assert _most_alive_of_size(sizes, ops[start:stop], i_fp32) <= 3
    assert _most_alive_of_size(seq.sizes, forward, i_fp32) <= 3
    row = trace_replay_check.compare_predicted(TRACES / f"{name}.events.json.gz", run)
    assert abs(row["peak_error"]) < 0.015 and row["in_order"] >= 0.95, row


def _most_alive_of_size(sizes, ops, nbytes: int) -> int:
    alive = most = 0
    for op in ops:
        if op >= 0 and sizes[op] == nbytes:
            alive += 1
            most = max(most, alive)
        elif op < 0 and op != -(2**62) and sizes[~op] == nbytes:
            alive -= 1
    return most


def _history(name: str):
    run = next(r for r in RUNS if (r.extra or {}).get("memory_snapshot", "").startswith(name + "."))
    model = resolve_model(run.model_source or run.model)
    doc = json.loads(gzip.decompress((TRACES / f"{name}.events.json.gz").read_bytes()))
    return run, model, doc, training_sequence(model, run.setup, _terms_of(model, run.setup))


def test_a_checkpointed_qlora_mlp_casts_its_adapters_where_it_uses_them():
    # r-l8-qlora-r64-gc (8B QLoRA, rank 64): autocast casts each MLP adapter weight at its first use inside the MLP
    # (1.75 MiB bf16 copies of gate / up's lora_B and down's lora_A: large-pool blocks), not at the layer's start
    run, model, doc, seq = _history("r-l8-qlora-r64-gc")
    s = run.setup
    i_fp32, logits = s.seq_len * model.intermediate_size * 4, s.seq_len * model.vocab_size * 4
    b_copy = model.intermediate_size * s.lora.rank * 2
    forward = seq.ops[seq.marks["step0.forward"] : seq.marks["step0.backward"]]
    for sizes, ops in ((doc["sizes"], doc["ops"]), (seq.sizes, forward)):
        # the copies alive at the fp32 logits' allocation (autocast's cache lives until the loss): all 3 per layer
        # were made while one of the MLP's (b, s, i) fp32 tensors was alive
        assert _copies_made_in_the_mlp(sizes, ops, b_copy, i_fp32, logits) == 3 * model.num_layers


def test_a_checkpointed_qlora_layers_backward_makes_its_adapters_gradients_as_autograd_reaches_them():
    # r-l8-qlora-r64-gc: each layer's backward makes its own adapters' gradients, a target's between its neighbours'
    # dequantized 4-bit weights (at most two 3.5 MiB tensors in a row: down_proj's lora_A gradient after up_proj's
    # lora_B one, or a dequantization's absmax pair), not every layer's at once in the last layer's backward; all
    # at once they filled the freed bf16 logits segment and left the warm-up segment's space whole, so the step-0
    # optimizer states took a freed 1002 MiB segment and step 1's backward made one more (+6.5 % reserved)
    run, model, doc, seq = _history("r-l8-qlora-r64-gc")
    grad = model.intermediate_size * run.setup.lora.rank * 4  # gate / up lora_B, down lora_A in fp32
    weight = run.setup.seq_len * model.intermediate_size * 4  # = an MLP weight dequantized to bf16
    assert _longest_run_beside(doc["sizes"], doc["ops"], grad, weight) == 2
    assert _longest_run_beside(seq.sizes, seq.ops, grad, weight) == 2


HF_CKPT_QLORA_HISTORIES = [
    "r-l8-qlora-gc-s4096", "r-l8-qlora-nodq-gc-s4096", "r-l8-qlora-r64-gc", "s-h200-l8-qlora-gc", "t-l8-qlora-nodq-gc",
    "s-h200-q7-qlora-gc", "h-q7-qlora-r64-gc-s4096",
]  # fmt: skip


@pytest.mark.parametrize("name", HF_CKPT_QLORA_HISTORIES)
def test_a_checkpointed_hf_qlora_run_makes_the_segments_of_its_recorded_history(name):
    # every segment of at least 20 MiB, in order (r-l8-qlora-gc-s4096 made one more 224 MiB one before its layer
    # forward freed the attention's pieces before making the residual sum; r64 one more 1002 MiB one)
    run, _, doc, seq = _history(name)
    recorded = trace_replay_check.with_pre_recording_tensor(doc["sizes"], doc["ops"])
    assert trace_replay_check.segments_made(seq)[0] == trace_replay_check.segments_made(recorded)[0]
    row = trace_replay_check.compare_predicted(TRACES / f"{name}.events.json.gz", run)
    assert abs(row["peak_error"]) < 0.005, row


def _longest_run_beside(sizes, ops, small: int, big: int) -> int:
    """The most `small`-sized allocations in a row (no `big`-sized one between) made while a `big`-sized tensor
    is alive."""
    alive = run = most = 0
    for op in ops:
        if op >= 0:
            if sizes[op] == big:
                alive, run = alive + 1, 0
            elif sizes[op] == small and alive:
                run += 1
                most = max(most, run)
        elif op != -(2**62) and sizes[~op] == big:
            alive -= 1
    return most


def _copies_made_in_the_mlp(sizes, ops, copy: int, within: int, stop_at: int) -> int:
    """The most `copy`-sized tensors alive at a `stop_at`-sized allocation that were made while a `within`-sized
    tensor was alive (an 8B model's loading makes tensors of those sizes too: its bf16 embedding, MLP weights)."""
    alive_within, made, most = 0, {}, 0
    for op in ops:
        if op >= 0:
            if sizes[op] == stop_at:
                most = max(most, sum(made.values()))
            if sizes[op] == copy:
                made[op] = alive_within > 0
            if sizes[op] == within:
                alive_within += 1
        elif op != -(2**62):
            made.pop(~op, None)
            if sizes[~op] == within:
                alive_within -= 1
    return most


def _signed_sizes(sizes, ops) -> list[int]:
    """Each op as +bytes (allocation) or -bytes (free), empty-cache ops left out."""
    return [sizes[op] if op >= 0 else -sizes[~op] for op in ops if op != EMPTY_CACHE]


def _occurs_in(part: list[int], whole: list[int]) -> bool:
    """`part` is a contiguous stretch of `whole`."""
    return ",".join(map(str, part)) in ",".join(map(str, whole))


WRAP_HISTORIES = ["h-q7-qlora-r64-gc-s4096", "r-l8-qlora-r64-gc", "s-olmoe-liger-lora-gc"]


@pytest.mark.parametrize("name", WRAP_HISTORIES)
def test_the_peft_wrap_makes_each_adapter_in_the_base_dtype_then_its_fp32_copy_as_recorded(name):
    # peft _move_adapter_to_device_of_base_layer (bf16: the base layer's dtype, a Linear4bit's compute_dtype), then
    # cast_adapter_dtype's fp32 copies: the wrap's every allocation and free, in order, is a stretch of the history
    # (QLoRA r64: adapters of more than 1 MiB, in the large pool; OLMoE: the experts' adapters made after every target
    # module's, cast layer by layer)
    run = next(r for r in SIMULATED_RUNS if (r.extra or {}).get("memory_snapshot", "").startswith(name + "."))
    model = resolve_model(run.model_source or run.model)
    doc = json.loads(gzip.decompress((TRACES / f"{name}.events.json.gz").read_bytes()))
    seq = training_sequence(model, run.setup, _terms_of(model, run.setup))
    wrap = _signed_sizes(seq.sizes, seq.ops[seq.marks["peft"] : seq.marks["step0.forward"]])
    adapters = sum(sum(layer) for layer in layer_adapter_tensors(model, run.setup))
    assert sum(x for x in wrap if x > 0) == adapters + adapters // 2  # every adapter once in bf16, once in fp32
    assert _occurs_in(wrap, _signed_sizes(doc["sizes"], doc["ops"]))


def test_the_rotary_tables_are_made_at_the_forwards_start_and_kept_to_the_layers_backwards_end():
    # h-q7-qlora-r64-gc-s4096 (fp32 hidden states under prepare_model_for_kbit_training): freqs, the workspace, emb,
    # cos and sin (2 MiB each: b * s * head_dim * 4 bytes), kept; freed after layer 0's backward, before the optimizer
    run, model, doc, seq = _history("h-q7-qlora-r64-gc-s4096")
    t = _terms_of(model, run.setup)
    assert t.rotary_tables == 2 * 4096 * 128 * 4
    big = [x for x in _signed_sizes(doc["sizes"], doc["ops"]) if abs(x) > 64 * 1024]  # the history's positions left out
    forward = _signed_sizes(seq.sizes, seq.ops[seq.marks["step0.forward"] : seq.marks["step0.backward"]])
    assert _occurs_in(forward[1:12], big)
    table = t.rotary_tables // 2
    made = [op for op in seq.ops[seq.marks["step0.forward"] : seq.marks["step0.backward"]] if op >= 0]
    kept = [op for op in made if seq.sizes[op] == table and ~op not in seq.ops[: seq.marks["step0.backward"]]]
    assert len(kept) == 2
    freed_at = [seq.ops.index(~op) for op in kept]
    assert all(seq.marks["step0.backward"] < n < seq.marks["step0.optimizer"] for n in freed_at)


def _live_at(seq, op_index: int) -> list[int]:
    live: set[int] = set()
    for op in seq.ops[:op_index]:
        if op >= 0:
            live.add(op)
        elif op != EMPTY_CACHE:
            live.discard(~op)
    return sorted(live)


def test_unsloth_offloads_each_checkpoint_through_two_staging_buffers():
    # unsloth_zoo gradient_checkpointing.py: layer inputs go to host memory; two 2 MiB staging buffers are made at the
    # first offload, the first grown to one checkpoint (history u-l8-qlora-gc-s4096: +2 +2 +32 -2 MiB before layer 0)
    model = resolve_model("llama-3.1-8b")
    one = 2 * 2048 * model.hidden_size  # one bf16 layer input at s = 2048
    hf = TrainingSetup(method="lora", lora=LoraSpec(rank=16, dropout=0.0), grad_ckpt=True)
    held = {}
    for stack in ("hf", "unsloth"):
        setup = hf.model_copy(update={"stack": stack})
        seq = training_sequence(model, setup, _terms_of(model, setup))
        first_forward = seq.ops[seq.marks["step0.forward"] : seq.marks["step0.backward"]]
        sizes = [seq.sizes[op] if op >= 0 else -seq.sizes[~op] for op in first_forward if op != EMPTY_CACHE]
        mib2 = 2 * 1024**2
        if stack == "unsloth":
            start = sizes.index(mib2)
            assert sizes[start : start + 4] == [mib2, mib2, one, -mib2]
        held[stack] = sum(1 for i in _live_at(seq, seq.marks["step1.backward"]) if seq.sizes[i] == one)
    # at step 1's backward hf holds every layer's input; Unsloth its two staging buffers (the second grown in step 1),
    # the last layer's input (not offloaded after the first pass), the final norm's output and the chunked loss's
    # saved gradient of the hidden states
    assert held["hf"] >= model.num_layers
    assert held["unsloth"] == 5


def test_unsloth_empties_the_cache_between_the_first_forward_and_its_backward_as_every_history_does():
    model = resolve_model("llama-3.1-8b")
    for stack, expected in (("hf", 0), ("unsloth", 1)):
        setup = TrainingSetup(method="lora", lora=LoraSpec(rank=16, dropout=0.0), grad_ckpt=True, stack=stack)
        seq = training_sequence(model, setup, _terms_of(model, setup))
        between = seq.ops[seq.marks["step0.forward"] : seq.marks["step0.backward"]]
        assert between.count(EMPTY_CACHE) == expected
        assert seq.ops[seq.marks["step1.forward"] :].count(EMPTY_CACHE) == 0


UNSLOTH_HISTORIES = sorted(p for p in TRACES.glob("u-*.events.json.gz") if "-full-" not in p.name)


@pytest.mark.parametrize("path", UNSLOTH_HISTORIES, ids=[p.name.split(".")[0] for p in UNSLOTH_HISTORIES])
def test_unsloth_sequence_reaches_the_reserved_peak_of_its_recorded_history(path):
    # 2026-12-02: -2.2 ... +0.1 % over the 10 LoRA / QLoRA histories (scripts/trace_replay_check.py --predicted);
    # +4 ... +111 % before the offloaded checkpoints, the checkpoint load and the first-backward empty_cache
    from vramplan.runs import load_runs, shipped_runs_dir

    name = path.name.removesuffix(".events.json.gz")
    run = next(r for r in load_runs([shipped_runs_dir()]) if (r.extra or {}).get("memory_snapshot") == name + ".pickle")
    row = trace_replay_check.compare_predicted(path, run)
    assert -0.03 <= row["peak_error"] <= 0.01, row


@pytest.mark.parametrize("name, method", [("llama-3.2-1b", "full"), ("llama-3.1-8b", "lora"), ("qwen2.5-7b", "qlora")])
def test_a_ddp_sequence_is_the_one_gpu_sequence_plus_its_broadcast_and_the_reducers_buckets(name, method):
    model = resolve_model(name)
    lora = LoraSpec(rank=16) if method != "full" else None
    one = TrainingSetup(method=method, lora=lora, quant="nf4" if method == "qlora" else None, grad_ckpt=True)
    ddp = one.model_copy(update={"num_gpus": 4, "parallel": "ddp"})
    single, per_gpu = (training_sequence(model, s, _terms_of(model, s)) for s in (one, ddp))
    grads = _terms_of(model, one).grads
    m = estimate(model, ddp, H100).memory  # (the allocator's count of whole blocks comes on top of the tensors')
    assert per_gpu.live_peak() == m.peak_allocated_bytes - m.breakdown.get("allocator_whole_blocks", 0)
    assert per_gpu.live_peak() - single.live_peak() == grads  # every gradient has its bucket copy
    # training starts: free_memory(), then the DDP wrap: its broadcast's flat copies (each freed), then its buckets
    marks = per_gpu.marks
    assert per_gpu.ops[marks["ddp.broadcast"] - 1] == EMPTY_CACHE
    broadcast = per_gpu.ops[marks["ddp.broadcast"] : marks["ddp.buckets"]]
    assert sorted(op for op in broadcast if op >= 0) == sorted(~op for op in broadcast if op < 0)
    buckets = [per_gpu.sizes[op] for op in per_gpu.ops[marks["ddp.buckets"] : marks["step0.forward"]]]
    assert sum(buckets) == grads and buckets[0] <= 1024**2 and max(buckets) <= 25 * 1024**2  # first bucket, cap
    assert estimate(model, ddp, H100).memory.reserved_rule == "simulated"


@pytest.mark.parametrize("history, name, seq_len, batch", [
    ("s-h200-l1-full-gc", "llama-3.2-1b", 2048, 1), ("d-l3-full-gc-s4096", "llama-3.2-3b", 4096, 1),
    # Qwen3's q/k norms (QWEN3_NO_GRAD_LAYER): 0.6B (q width 2 h), 4B
    ("f-q3-06-full-gc-b2-s4096", "qwen3-0.6b", 4096, 2), ("f-q3-4b-full-gc", "qwen3-4b", 2048, 1),
])  # fmt: skip
def test_a_checkpointed_full_ft_layer_runs_its_recorded_no_grad_forward(history, name, seq_len, batch):
    # no_grad_layer.py: the pattern, its kinds' sizes for the model, is op for op what the history's layers 2-5 do
    from vramplan.memory.allocator.no_grad_layer import no_grad_layer_sizes, no_grad_pattern

    model = resolve_model(name)
    setup = TrainingSetup(method="full", grad_ckpt=True, seq_len=seq_len, batch_size=batch)
    pattern, _ = no_grad_pattern(model, setup, liger=False)
    sizes = no_grad_layer_sizes(model, setup)
    doc = json.loads(gzip.decompress((TRACES / f"{history}.events.json.gz").read_bytes()))
    rec = trace_replay_check.with_pre_recording_tensor(doc["sizes"], doc["ops"])
    born, ops = {}, []
    for i, op in enumerate(rec.ops):
        if op >= 0:
            born[op] = i
            ops.append(rec.sizes[op])
        elif op != EMPTY_CACHE:
            ops.append(-(i - born[~op]))
        else:
            ops.append(None)
    wanted = [sizes[t] if t[0] != "-" else int(t) for t in pattern]
    block = lambda x: x if x is None or x < 0 else max(512, -(-x // 512) * 512)  # noqa: E731  (requests as rounded)
    wanted, ops = [block(x) for x in wanted], [block(x) for x in ops]
    starts = [i for i in range(len(ops) - len(wanted)) if ops[i : i + len(wanted)] == wanted]
    assert len(starts) >= model.num_layers - 2  # every layer but the first (its rotary set-up) and in each step
    seq = training_sequence(model, setup, _terms_of(model, setup))
    mine = [block(seq.sizes[op]) for op in seq.ops if op >= 0]
    assert sum(1 for i in range(len(mine)) if mine[i : i + 3] == wanted[:3]) >= model.num_layers  # the sequence uses it


def test_an_expandable_segments_replay_serves_every_gpu_and_equals_each_gpus_own():
    # the planner's near-miss --expandable-segments try asked one replay per GPU; a segment's virtual range is the
    # only thing the GPU's memory sizes, so one replay (made with EXPANDABLE_REPLAY_MEMORY_BYTES) serves them all
    from gpu_catalog import find_gpu
    from vramplan.estimator import CALIBRATED_DEFAULTS, _terms
    from vramplan.memory.allocator import simulated
    from vramplan.memory.allocator.replay import replay
    from vramplan.memory.allocator.sequence import training_sequence
    from vramplan.models import resolve_model
    from vramplan.specs import LoraSpec, TrainingSetup

    model = resolve_model("llama-3.2-1b")
    setup = TrainingSetup(method="lora", lora=LoraSpec(), grad_ckpt=True, expandable_segments=True)
    simulated.clear_caches()
    results = []
    for gpu in (find_gpu("rtx-4090"), find_gpu("h100-sxm"), find_gpu("h200")):
        t = _terms(model, setup, gpu, dict(CALIBRATED_DEFAULTS))
        results.append(simulated.simulate(model, setup, t, gpu.memory_bytes))
        own = replay(training_sequence(model, setup, t), expandable_segments=True, total_memory_bytes=gpu.memory_bytes)
        assert results[-1].peak_reserved_bytes == own.peak_reserved_bytes
        assert results[-1].peak_allocated_bytes == own.peak_allocated_bytes
    assert len({id(r) for r in results[1:]}) == 1  # (the 4090's cuBLAS workspace differs: a replay of its own)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("llama-3.2-1b", {"method": "full"}),
        ("llama-3.2-1b", {"method": "lora", "lora": LoraSpec(), "num_gpus": 2, "parallel": "zero3"}),
        ("qwen2.5-0.5b", {"method": "full", "num_gpus": 4, "parallel": "fsdp"}),
    ],
)
def test_a_sequence_built_for_one_workspace_size_serves_the_other_gpus_exactly(name, kw):
    # the planner asks for each setup on Hopper (2 x 32 MiB cuBLAS workspaces) and older GPUs (2 x 8.125 MiB): the
    # second sequence is the first with the two workspace sizes replaced, and must equal a build of its own
    from vramplan.memory.allocator import simulated

    model = resolve_model(name)
    setup = TrainingSetup(grad_ckpt=True, **kw)
    simulated.clear_caches()
    seqs = {}
    for gpu_id in ("h100-sxm", "a100-80gb", "h200"):
        gpu = find_gpu(gpu_id)
        t = simulated_terms(model, setup, gpu)
        seqs[gpu_id] = simulated.rank_sequence(model, setup, t)
        simulated.clear_caches()
        own = simulated.rank_sequence(model, setup, t)
        assert (seqs[gpu_id].sizes, seqs[gpu_id].ops, seqs[gpu_id].streams) == (own.sizes, own.ops, own.streams)
        # (`own` is kept: the next GPU's sequence comes from it)
    assert seqs["h100-sxm"].sizes != seqs["a100-80gb"].sizes
    assert seqs["h100-sxm"].sizes == seqs["h200"].sizes
    changed = [i for i, (a, b) in enumerate(zip(seqs["h100-sxm"].sizes, seqs["a100-80gb"].sizes)) if a != b]
    assert changed == sorted(seqs["h100-sxm"].workspace) and len(changed) == 2


def simulated_terms(model, setup, gpu):
    from vramplan.estimator import fsdp_rank_terms

    constants = dict(CALIBRATED_DEFAULTS)
    return fsdp_rank_terms(model, setup, gpu, constants) if setup.parallel == "fsdp" else _terms(model, setup, gpu, constants)
