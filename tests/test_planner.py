"""plan: options, sorting, why-not text, suggestions; fit: the largest value that fits; the plan/fit CLI contract."""

import itertools
import json
import re
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gpu_catalog import find_gpu, list_gpus
from vramplan.api import dataset_total_tokens, default_calibration, fit_for, plan_for
from vramplan.cli import app
from vramplan.errors import VramplanError
from vramplan.estimator import estimate
from vramplan.models import resolve_model
from vramplan.planner import fit, gpu_counts, plan
from vramplan.specs import LoraSpec, TrainingSetup

LLAMA = resolve_model("llama-3.1-8b")
GIB = 2**30
OPTION_KEYS = {"gpu", "num_gpus", "parallel", "fits", "memory", "headroom_bytes", "tokens_per_s", "step_time_s",
               "wall_time_s", "cost_usd", "why_not"}  # fmt: skip
#: the order suggestions come in (smallest change first), by the flag each starts with
SUGGESTION_ORDER = ["--grad-ckpt", "--stack", "--liger", "--batch-size", "--optimizer", "--method", "--lora-targets", "--seq-len",
                    "--expandable-segments", "--num-gpus"]  # fmt: skip
#: LoRA at s8192 b4 without checkpointing: far too big for a 24 GB card, so every suggestion applies
BIG_LORA = "--model llama-3.1-8b --method lora --seq-len 8192 --batch-size 4"


def run(args: str):
    return CliRunner().invoke(app, shlex.split(args))


def run_json(args: str) -> dict:
    res = run(args + " --format json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def device_peak(setup: TrainingSetup, gpu: str) -> int:
    e = estimate(LLAMA, setup, find_gpu(gpu), calibration=default_calibration())
    return (e.calibrated or e.memory).device_peak_bytes


def qlora(**kw) -> TrainingSetup:
    return TrainingSetup(method="qlora", lora=LoraSpec(rank=16), quant="nf4", grad_ckpt=True, **kw)


def test_plan_json_has_the_contract_keys():
    doc = run_json("plan --model llama-3.1-8b --method qlora --grad-ckpt --gpus rtx-4090,h100 --max-gpus 2")
    assert set(doc) >= {"options", "suggestions"}
    for option in doc["options"]:
        assert set(option) >= OPTION_KEYS
        assert {"peak_allocated_bytes", "peak_reserved_bytes", "device_peak_bytes", "breakdown", "peak_phase"} <= set(option["memory"])
    assert {(o["gpu"], o["num_gpus"], o["parallel"]) for o in doc["options"]} == {
        (g, n, p) for g in ("rtx-4090", "h100-sxm") for n, p in [(1, "none")] + [(2, s) for s in ("ddp", "fsdp", "zero2", "zero3")]
    }


def test_plan_covers_every_gpu_count_and_strategy():
    assert gpu_counts(8) == (1, 2, 4, 8)
    assert gpu_counts(6) == (1, 2, 4, 6)
    p = plan(LLAMA, qlora(), list_gpus(), max_gpus=8)
    assert len(p.options) == len(list_gpus()) * (1 + 3 * 4)


def test_fitting_options_come_first_then_the_closest_to_fitting():
    options = plan(LLAMA, TrainingSetup(method="full"), list_gpus()).options
    fits = [o.fits for o in options]
    assert fits == sorted(fits, reverse=True) and any(fits) and not all(fits)
    ratios = [o.memory.device_peak_bytes / o.usable_bytes for o in options if not o.fits]
    assert ratios == sorted(ratios)


@pytest.mark.parametrize(
    "sort, value, descending",
    [
        ("cost", lambda o: o.usd_per_token, False),
        ("time", lambda o: o.tokens_per_s, True),
        ("memory", lambda o: o.headroom_bytes, True),
    ],
)
def test_fitting_options_are_sorted_by_the_chosen_key(sort, value, descending):
    options = [o for o in plan(LLAMA, qlora(), list_gpus(), sort=sort).options if o.fits and value(o) is not None]
    values = [value(o) for o in options]
    for a, b in itertools.pairwise(values):  # keys are compared at 3 significant digits
        assert (a >= b * 0.995) if descending else (a <= b * 1.005)


def test_why_not_says_what_is_needed_and_what_is_usable():
    option = next(o for o in plan(LLAMA, TrainingSetup(method="full"), [find_gpu("rtx-4090")]).options if o.num_gpus == 1)
    assert not option.fits
    need, usable = re.fullmatch(r"needs (\d+\.\d) GiB per GPU, (\d+\.\d) GiB usable", option.why_not).groups()
    assert float(need) == pytest.approx(option.memory.device_peak_bytes / GIB, abs=0.05)
    assert float(usable) == pytest.approx(find_gpu("rtx-4090").memory_bytes * 0.95 / GIB, abs=0.05)


def test_fitting_options_have_no_why_not_and_a_consistent_time_and_cost():
    p = plan_for("llama-3.1-8b", qlora(), gpus="h100", dataset_examples=10_000, epochs=2)
    option = next(o for o in p.options if o.fits and o.num_gpus == 4)
    assert option.why_not is None
    assert p.total_tokens == 10_000 * 2048 * 2
    assert option.wall_time_s == pytest.approx(p.total_tokens / option.tokens_per_s)
    assert option.cost_usd == pytest.approx(3.99 * 4 * option.wall_time_s / 3600)


def test_cost_is_null_without_a_catalog_price():
    doc = run_json("plan --model llama-3.1-8b --method qlora --grad-ckpt --gpus rtx-5090 --dataset-tokens 1000000")
    assert find_gpu("rtx-5090").price_usd_per_hour is None
    assert all(o["cost_usd"] is None and o["wall_time_s"] > 0 for o in doc["options"] if o["fits"])


def test_no_suggestions_when_one_gpu_fits():
    assert plan(LLAMA, qlora(), [find_gpu("rtx-4090")]).suggestions == ()


def test_suggestions_come_smallest_change_first_and_each_saves_what_it_says():
    doc = run_json(f"plan {BIG_LORA} --gpus rtx-4090,l4")
    assert doc["suggestions_gpu"] == "rtx-4090"
    changes = [s["change"] for s in doc["suggestions"]]
    order = [SUGGESTION_ORDER.index(c.split()[0]) for c in changes]
    assert order == sorted(order) and len(order) >= 6
    base = run_json(f"estimate {BIG_LORA} --gpu rtx-4090")["memory"]["device_peak_bytes"]
    for s in doc["suggestions"]:
        changed = run_json(f"estimate {BIG_LORA} {s['change']} --gpu rtx-4090")  # the suggestion, as flags
        assert s["saves_bytes"] == base - changed["memory"]["device_peak_bytes"] > 0
        assert s["fits"] == changed["fits"]


def test_more_gpus_with_fsdp_makes_full_fine_tuning_fit_a_small_card():
    p = plan(LLAMA, TrainingSetup(method="full", grad_ckpt=True), [find_gpu("a100-40gb")], max_gpus=8)
    assert not any(o.fits for o in p.options if o.num_gpus == 1)
    assert any(o.fits and o.parallel == "fsdp" for o in p.options)
    assert p.suggestions[-1].change.endswith("--parallel fsdp") and p.suggestions[-1].fits


@pytest.mark.parametrize("solve", ["batch-size", "seq-len", "lora-rank"])
def test_fit_value_fits_and_the_next_value_does_not(solve):
    r = fit_for("llama-3.1-8b", qlora(), gpu="rtx-4090", solve=solve)
    key = {"batch-size": "batch_size", "seq-len": "seq_len"}.get(solve)

    def setup(v: int) -> TrainingSetup:
        if key is None:
            return qlora().model_copy(update={"lora": LoraSpec(rank=v)})
        return TrainingSetup.model_validate({**qlora().model_dump(), key: v})

    assert r.value is not None and r.value > 1
    assert device_peak(setup(r.value), "rtx-4090") == r.device_peak_bytes <= r.usable_bytes
    assert device_peak(setup(r.value + 1), "rtx-4090") == r.next_device_peak_bytes > r.usable_bytes


@settings(deadline=None, max_examples=8)
@given(gpu=st.sampled_from(["rtx-3090", "l4", "a10g", "rtx-6000-ada", "a100-40gb"]),
       method=st.sampled_from(["lora", "qlora"]), ckpt=st.booleans())  # fmt: skip
def test_largest_batch_fits_and_one_more_does_not(gpu, method, ckpt):
    lora = LoraSpec(rank=16)
    setup = TrainingSetup(method=method, lora=lora, quant="nf4" if method == "qlora" else None, grad_ckpt=ckpt)
    r = fit(LLAMA, setup, find_gpu(gpu), "batch-size")
    if r.value is None:
        assert device_peak(setup, gpu) > r.usable_bytes
    else:
        assert r.device_peak_bytes <= r.usable_bytes < r.next_device_peak_bytes


def test_fit_reports_none_when_even_one_does_not_fit():
    r = fit(LLAMA, TrainingSetup(method="full"), find_gpu("rtx-4090"), "batch-size")
    assert r.value is None and r.device_peak_bytes is None


def test_seq_len_search_stops_at_the_model_context():
    r = fit(resolve_model("qwen2.5-0.5b"), qlora(), find_gpu("b200"), "seq-len")
    assert r.limit == resolve_model("qwen2.5-0.5b").max_position_embeddings


def test_fit_cli_json_and_table():
    doc = run_json("fit --model llama-3.1-8b --method qlora --grad-ckpt --gpu rtx-4090 --solve seq-len")
    assert doc["value"] > 2048 and doc["fits"] and doc["device_peak_bytes"] <= doc["usable_bytes"]
    res = run("fit --model llama-3.1-8b --method qlora --grad-ckpt --gpu rtx-4090 --solve batch-size")
    assert res.exit_code == 0 and "largest batch-size" in res.stdout


def test_plan_table_lists_options_and_suggestions():
    res = run(f"plan {BIG_LORA} --gpus rtx-4090")
    assert res.exit_code == 0, res.output
    assert "do not fit" in res.stdout and "smallest change first" in res.stdout and "--grad-ckpt" in res.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        ("plan --model llama-3.1-8b --method lora --sort fastest", "--sort fastest"),
        ("plan --model llama-3.1-8b --method lora --gpus nope-9000", "nope-9000"),
        ("plan --model llama-3.1-8b --method lora --max-gpus 0", "--max-gpus 0"),
        ("plan --model llama-3.1-8b --method lora --dataset-tokens 5 --dataset-examples 5", "not both"),
        ("plan --model llama-3.1-8b --method lora --epochs 2", "--epochs needs"),
        ("plan --model llama-3.1-8b --method lora --headroom 1.5", "--headroom"),
        ("fit --model llama-3.1-8b --method lora --gpu l4 --solve width", "--solve width"),
        ("fit --model llama-3.1-8b --method full --gpu l4 --solve lora-rank", "lora-rank"),
        ("fit --model llama-3.1-8b --method lora --gpu nope --solve seq-len", "nope"),
    ],
)
def test_bad_plan_and_fit_input_is_one_line_and_exit_2(args, needle):
    res = run(args)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_dataset_tokens_from_examples_and_epochs():
    assert dataset_total_tokens(1024, None, 100, 3) == 100 * 1024 * 3
    assert dataset_total_tokens(1024, 5_000, None, None) == 5_000
    assert dataset_total_tokens(1024, None, None, None) is None
    with pytest.raises(VramplanError):
        dataset_total_tokens(1024, -1, None, None)


def test_a_job_unsloth_can_run_gets_the_unsloth_suggestion_with_its_dropout_and_checkpointing_flags():
    from vramplan.suggestions import suggestions

    s = TrainingSetup(method="lora", lora=LoraSpec(), seq_len=8192)  # PEFT's default dropout, no checkpointing
    changes = {c.change: c for c in suggestions(LLAMA, s, find_gpu("rtx-4090"), calibration=default_calibration())}
    assert "--stack unsloth --lora-dropout 0 --no-grad-ckpt" in changes
    assert changes["--stack unsloth --lora-dropout 0 --no-grad-ckpt"].saves_bytes > 0
    # eager attention, fp4 or several GPUs are not what Unsloth runs: no such suggestion
    fp4 = qlora().model_copy(update={"quant": "fp4"})
    for other in (s.model_copy(update={"attn": "eager"}), fp4, s.model_copy(update={"num_gpus": 2, "parallel": "ddp"})):
        assert not any(c.change.startswith("--stack unsloth") for c in suggestions(LLAMA, other, find_gpu("rtx-4090"), calibration=default_calibration()))
