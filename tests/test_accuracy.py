"""The accuracy targets on the shipped H100 runs, recomputed on every CI run (issue 4).

Leave-one-out: each run is predicted with a calibration fitted without it, so nothing is memorised.
"""

import pytest

from vramplan.api import default_calibration
from vramplan.calibration import fit, leave_one_out, usable_runs
from vramplan.estimator import estimate
from vramplan.models import resolve_model
from vramplan.runs import load_runs, shipped_runs_dir, single_gpu_run
from vramplan.validation import validate

# single-GPU runs: the multi-GPU (DDP/FSDP, H200) records hold NCCL buffers, DDP gradient buckets
# and FSDP shards that these single-GPU targets do not cover (calibration.usable_runs leaves them out)
RUNS = [r for r in load_runs([shipped_runs_dir()]) if single_gpu_run(r)]
LOO = leave_one_out(RUNS)


def test_campaign_covers_the_issue_grid():
    assert len(RUNS) >= 40
    models = {r.model for r in RUNS}
    assert len(models) >= 7
    assert {r.setup.method for r in RUNS} == {"full", "lora", "qlora"}
    assert {r.setup.optimizer for r in RUNS} >= {"adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"}
    assert {r.setup.attn for r in RUNS} >= {"sdpa", "eager"}
    assert {r.setup.dtype for r in RUNS} >= {"bf16", "fp32"}
    assert any(r.setup.expandable_segments for r in RUNS) and any(r.measurements.memory_cap_bytes for r in RUNS)


HF_RUNS = [r for r in RUNS if r.setup.stack == "hf" and not r.setup.liger]


def test_raw_model_allocated_peak_within_2_percent_on_every_run():
    # the hf stack's guarantee; the other stacks have their own targets below
    raw = validate(HF_RUNS)
    stats = raw.stats("allocated")
    assert stats["median_abs"] <= 0.005
    assert stats["worst_abs"] <= 0.02


#: the default reserved rule ("auto": simulated on one GPU) over every shipped single-GPU run, leave-one-out context.
#: Issue 11 asks median <= 1.5 %, worst <= 5 %, no under-prediction beyond 3 %. Session 9 (2026-12-02): reserved
#: median 0.32 %, worst 3.6 %, worst under -2.8 %; device 0.30 / 3.5 / -3.3 % (the Gemma 3 Unsloth run: 254 MiB outside
#: the allocator where its other checkpointed runs take 70, not its reserved peak). The hold-out misses, each predicted
#: before it ran, stay fixed:
#: * DEFAULT_HOLDOUT_MISS (docs/holdout/default-compare.txt): Llama-3.2-3B full FT with checkpointing at s = 4096, -6.6 %,
#:   until its rerun's history showed the checkpointed forward's no-grad frees (allocator/no_grad_layer.py);
#: * NOGRAD_HOLDOUT_MISS (docs/holdout/nograd-compare.txt): Qwen2.5-1.5B full FT with checkpointing at s = 4096 (tied
#:   embeddings), -5.9 %, until the checkpointed layers' backward ran as recorded (allocator/ckpt_backward_layer.py):
#:   step 0's backward had left a 1365 MiB hole the recorded run does not have, which took step 1's bf16 logits
NOGRAD_HOLDOUT_MISS = "qwen2.5-1.5b-full-s4096-b1-gc-adamwtorchfused-bf16-sdpa-0487c452"
DEFAULT_HOLDOUT_MISS = ("llama-3.2-3b-full-s4096-b1-gc-adamwtorchfused-bf16-sdpa-aaf9bde4", "llama-3.2-3b-full-s4096-b1-gc-adamwtorchfused-bf16-sdpa-9aa8c654")
WORST_UNDER = {"reserved": -0.03, "device": -0.035}
#: Unsloth on Gemma 3 (session 9's unsloth-gemma grids, the second predicted with the outside-allocator term before it
#: ran): with the summary backward reserved was -8.1 % (1B QLoRA s4096: 0.18 GiB), -3.9 % (1B LoRA), -3.2 % (4B LoRA
#: s4096); with Unsloth's recorded Gemma 3 layer backward (allocator/unsloth_gemma3_layer.py, session 11) all five are
#: within the targets. Bounded as reached (reserved, device), so that a change that moves them shows: what is left is
#: step 0's autotuning L2-flush buffers (docs/allocator_simulation.md, "Unsloth on Gemma 3")
UNSLOTH_GEMMA3_RUNS = {
    "gemma-3-1b-it-qlora-nf4dq-r16-s4096-b1-gc-adamwtorchfused-bf16-sdpa-": {"reserved": (-0.027, -0.02),
                                                                          "device": (-0.02, -0.013)},
    "gemma-3-1b-it-lora-r16-s2048-b1-gc-adamwtorchfused-bf16-sdpa-": {"reserved": (-0.018, -0.012),
                                                                     "device": (-0.014, -0.008)},
    "gemma-3-4b-it-lora-r16-s4096-b1-gc-adamwtorchfused-bf16-sdpa-": {"reserved": (-0.014, -0.008),
                                                                      "device": (-0.013, -0.007)},
    "gemma-3-4b-it-lora-r16-s2048-b1-gc-adamwtorchfused-bf16-sdpa-": {"reserved": (-0.01, -0.004),
                                                                      "device": (-0.009, -0.003)},
    "gemma-3-4b-it-qlora-nf4dq-r16-s2048-b1-gc-adamwtorchfused-bf16-sdpa-": {"reserved": (-0.003, 0.003),
                                                                          "device": (-0.003, 0.003)},
}  # fmt: skip


def _unsloth_gemma3_bounds(run_id: str, stack: str = "unsloth") -> dict | None:
    if stack != "unsloth":
        return None
    return next((b for prefix, b in UNSLOTH_GEMMA3_RUNS.items() if run_id.startswith(prefix)), None)


@pytest.mark.parametrize("total", ["reserved", "device"])
def test_leave_one_out_median_and_worst_error(total):
    stats = LOO.stats(total)
    assert stats["runs"] >= 150
    assert stats["median_abs"] <= 0.015, stats
    stack = {r.run_id: r.setup.stack for r in RUNS}
    errors = {c.run_id: c.error(total) for c in LOO.comparisons if c.error(total) is not None}
    for run_id in [i for i in errors if _unsloth_gemma3_bounds(i, stack[i])]:
        lo, hi = _unsloth_gemma3_bounds(run_id)[total]
        assert lo <= errors[run_id] <= hi, run_id  # as reached (and within the targets below)
    assert max(map(abs, errors.values())) <= 0.05
    assert min(errors.values()) >= WORST_UNDER[total]  # an under-prediction is an OOM for the user
    assert all(abs(errors[i]) <= 0.005 for i in (*DEFAULT_HOLDOUT_MISS, NOGRAD_HOLDOUT_MISS))  # the fixed misses


@pytest.mark.parametrize("total", ["reserved", "device"])
def test_the_closed_form_rules_stay_where_they_were(total):
    # the rules remain for FSDP and DeepSpeed and with --reserved-rule rules: 2.0 / 9.2 / -5.4 % over the single-GPU
    # runs before session 8's checkpointed full-FT hold-out, whose s = 4096 runs they over-predict by up to 14.4 %;
    # 15.3 % (Llama-3.2-1B b2 s4096) since session 9's hold-out runs joined the calibration (199 runs: 2.1 / 15.3 / -5.4)
    stats = leave_one_out(RUNS, "rules").stats(total)
    assert stats["median_abs"] <= 0.03 and stats["worst_abs"] <= 0.16 and stats["worst_under"] >= -0.07, stats


def test_shipped_calibration_matches_a_refit():
    shipped = default_calibration()
    refit = fit(RUNS)
    assert shipped is not None
    for name, value in refit.constants.items():
        assert shipped.constants[name] == pytest.approx(value, rel=1e-6), name


def test_capped_runs_agree_with_the_prediction():
    # l1-full under caps: 0.97 x allocated and allocated + 256 MiB ran out of memory, 1.02 x reserved fitted.
    # A cap below the predicted allocated peak must OOM; a cap above the predicted reserved peak must fit.
    capped = [r for r in RUNS if r.measurements.memory_cap_bytes]
    assert len(capped) >= 3 and any(r.measurements.oom for r in capped) and not all(r.measurements.oom for r in capped)
    cal = default_calibration()
    for run in capped:
        mem = estimate(resolve_model(run.model), run.setup, calibration=cal).calibrated
        cap = run.measurements.memory_cap_bytes
        if cap < mem.peak_allocated_bytes:
            assert run.measurements.oom, run.run_id
        if cap >= mem.peak_reserved_bytes:
            assert not run.measurements.oom, run.run_id
    smallest_fit = min(r.measurements.memory_cap_bytes for r in capped if not r.measurements.oom)
    largest_oom = max(r.measurements.memory_cap_bytes for r in capped if r.measurements.oom)
    assert largest_oom < smallest_fit


def test_every_usable_run_is_compared():
    assert len(LOO.comparisons) == len(usable_runs(RUNS))


#: models whose after-load memory holds bytes the weight formula does not explain yet (README, limits):
#: qwen3-4b (hold-out run) has 54 MiB more allocated than its weights and adapters (-0.7 %), with parameter
#: counts equal to the real model's
#: gemma-3-1b-it: its s = 4096 full-FT hold-out run (2026-12-02, session 8) holds 50 MiB (2.6 %) more after load than its
#: weights, as its TRL runs do at s = 2048; not explained yet
def _allocated_after_load(spec, setup) -> int:
    """torch.cuda.memory_allocated() after load as the allocator model counts it: the predicted sequence's load replayed,
    each block it did not split counted whole (simulated.WHOLE_BLOCKS: Qwen2.5-3B holds 108.5 MiB more than its
    weights' bytes)."""
    from vramplan.estimator import CALIBRATED_DEFAULTS, _terms
    from vramplan.memory.allocator.caching import CachingAllocator
    from vramplan.memory.allocator.replay import apply_op
    from vramplan.memory.allocator.sequence import training_sequence

    seq = training_sequence(spec, setup, _terms(spec, setup, None, dict(CALIBRATED_DEFAULTS)), steps=0)
    allocator, blocks = CachingAllocator(), [None] * len(seq.sizes)
    for op in seq.ops:
        apply_op(allocator, blocks, seq.sizes, op)
    return allocator.allocated


def test_weights_after_load_match_the_real_stack():
    # issue 2 target: after load within 0.5 % of torch.cuda.memory_allocated(), bf16 and NF4 with double quantization;
    # models under 2 GiB carry a few MiB of fixed extras. The weights' (+ adapters') bytes, and the allocator's count
    # of them (its whole blocks): Qwen2.5-3B and -7B hold 108.5 and 43.0 MiB more than their weights, as replayed
    from vramplan.memory.adapters import adapter_bytes
    from vramplan.memory.weights import weight_bytes

    checked = whole = 0
    # hf stack only: with SFTTrainer "after load" is read after its own set-up (on_train_begin), and
    # gemma-3-1b TRL full FT holds 2.6 % there that the weights do not explain (open, issue 10)
    for run in HF_RUNS:
        s = run.setup
        if not (s.dtype == "bf16" and (s.quant is None or (s.quant == "nf4" and s.double_quant))):
            continue
        spec = resolve_model(run.model)
        weights = sum(weight_bytes(spec, s).values()) + (adapter_bytes(spec, s.lora) if s.lora else 0)
        counted = _allocated_after_load(spec, s)
        assert counted >= weights
        measured = run.measurements.memory_after_load_bytes
        tolerance = 0.005 if measured > 2 * 2**30 else 0.01
        assert abs(counted / measured - 1) <= tolerance, run.run_id
        whole += abs(weights / measured - 1) > tolerance  # the weights alone miss it
        checked += 1
    assert checked >= 30 and whole >= 2


RAW = validate(RUNS)


@pytest.mark.parametrize("stack", LOO.stacks())
def test_every_stack_meets_its_targets_on_its_shipped_runs(stack):
    # issue 10: per stack, allocated (raw) median <= 1 %, worst <= 3 %; reserved and device (leave-one-out)
    # median <= 3 %, worst <= 8 %, no under-prediction beyond 5 %. New stacks' runs are guarded as they land.
    alloc = RAW.stats("allocated", stack)
    assert alloc["median_abs"] <= 0.01 and alloc["worst_abs"] <= 0.03, (stack, alloc)
    for total in ("reserved", "device"):
        s = LOO.stats(total, stack)
        worst, under = 0.08, -0.05
        assert s["median_abs"] <= 0.03 and s["worst_abs"] <= worst and s["worst_under"] >= under, (stack, total, s)
