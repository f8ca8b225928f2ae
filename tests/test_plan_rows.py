"""A plan a team lead can read (issue 14, part 6): one row per GPU type by default, the hidden rows counted,
every option still in JSON, and near misses told what would make them fit, with the bytes."""

import json

from typer.testing import CliRunner

from gpu_catalog import find_gpu
from vramplan.api import estimate_for, plan_for
from vramplan.cli import app
from vramplan.cli_options import build_setup
from vramplan.memory.constants import GIB
from vramplan.plan_rows import COST_TOLERANCE, _metric, best_per_gpu, near_miss_fixes

runner = CliRunner()
QLORA_8K = ["--model", "llama-3.1-8b", "--method", "qlora", "--seq-len", "8192", "--grad-ckpt"]


def _setup(seq_len=8192):
    return build_setup(method="qlora", lora_rank=16, lora_alpha=None, lora_dropout=0.05, lora_targets="all-linear",
                       quant="nf4", double_quant=True, seq_len=seq_len, batch_size=1, grad_accum=1, grad_ckpt=True,
                       optimizer="adamw_torch_fused", dtype="bf16", attn="sdpa", expandable_segments=False, stack="hf",
                       num_gpus=1, parallel=None)  # fmt: skip


PLAN = plan_for("llama-3.1-8b", _setup())


def test_one_row_per_gpu_type():
    rows = best_per_gpu(PLAN.options, PLAN.sort)
    assert sorted(r.gpu.id for r in rows) == sorted({o.gpu.id for o in PLAN.options})


def test_each_row_is_the_fewest_gpus_within_the_tolerance_of_that_gpus_best():
    for row in best_per_gpu(PLAN.options, PLAN.sort):
        same = [o for o in PLAN.options if o.gpu.id == row.gpu.id and o.fits]
        if not same:
            assert not row.fits
            continue
        best = min(_metric(o, "cost") for o in same)
        assert _metric(row, "cost") <= best + abs(best) * COST_TOLERANCE
        assert all(o.num_gpus >= row.num_gpus for o in same if _metric(o, "cost") <= best + abs(best) * COST_TOLERANCE)


def test_a100_at_equal_cost_per_token_shows_one_gpu_not_eight():
    row = next(r for r in best_per_gpu(PLAN.options, "cost") if r.gpu.id == "a100-80gb")
    assert row.fits and row.num_gpus == 1
    assert sum(o.gpu.id == "a100-80gb" and o.fits for o in PLAN.options) >= 10  # what used to be listed


def test_table_counts_the_hidden_rows_and_all_shows_them():
    res = runner.invoke(app, ["plan", *QLORA_8K])
    assert res.exit_code == 0, res.output
    rows = best_per_gpu(PLAN.options, PLAN.sort)
    hidden_line = next(line for line in res.output.splitlines() if "more options hidden" in line)
    hidden = int(hidden_line.split()[0])
    assert len(rows) < len(PLAN.options) and 0 < hidden <= len(PLAN.options) - len(rows)
    assert res.output.count("│ a100-80gb ") == 1
    every = runner.invoke(app, ["plan", *QLORA_8K, "--all"])
    assert "more options hidden" not in every.output
    assert every.output.count("│ a100-80gb ") == sum(o.gpu.id == "a100-80gb" for o in PLAN.options)


def test_json_keeps_every_option():
    res = runner.invoke(app, ["plan", *QLORA_8K, "--format", "json"])
    assert len(json.loads(res.output)["options"]) == len(PLAN.options)


def test_cost_order_is_visible_as_dollars_per_million_tokens():
    res = runner.invoke(app, ["plan", *QLORA_8K, "--gpus", "a100-80gb,h100-sxm,l40s"])
    prices = [float(cell.strip().lstrip("$")) for line in res.output.splitlines() if line.startswith("│")
              for cell in [line.split("│")[7]] if cell.strip().startswith("$")]  # fmt: skip
    assert len(prices) == 3 and prices == sorted(prices)


def _near_miss(short_bytes: int):
    """A one-GPU rtx-4090 option short of its usable memory by `short_bytes` (the headroom set to make it so)."""
    setup = _setup(seq_len=2048)
    gpu = find_gpu("rtx-4090")
    peak = (lambda e: (e.calibrated or e.memory).device_peak_bytes)(estimate_for("llama-3.1-8b", setup, gpu="rtx-4090"))
    headroom = 1 - (peak - short_bytes) / gpu.memory_bytes
    plan = plan_for("llama-3.1-8b", setup, gpus="rtx-4090", max_gpus=1, headroom=headroom)
    return plan.options[0], headroom, setup


def test_a_near_miss_says_what_makes_it_fit_with_the_bytes():
    option, headroom, setup = _near_miss(short_bytes=GIB // 10)
    assert not option.fits
    changes = {f.change.split()[0]: f for f in option.fixes}
    assert "--headroom" in changes and "--expandable-segments" in changes
    smaller = float(changes["--headroom"].change.split()[1])
    assert smaller < headroom and option.memory.device_peak_bytes <= option.gpu.memory_bytes * (1 - smaller)
    assert changes["--headroom"].saves_bytes == option.memory.device_peak_bytes - option.usable_bytes
    for f in option.fixes:
        assert f.saves_bytes > 0 and option.memory.device_peak_bytes - f.saves_bytes <= option.usable_bytes


def test_a_far_miss_gets_no_fixes():
    option, _, setup = _near_miss(short_bytes=8 * GIB)
    assert not option.fits and option.fixes == ()
    assert near_miss_fixes(None, setup, option, headroom=0.05, calibration=None) == ()


def test_the_table_shows_the_near_miss_fix():
    option, headroom, _ = _near_miss(short_bytes=GIB // 10)
    res = runner.invoke(app, ["plan", "--model", "llama-3.1-8b", "--method", "qlora", "--grad-ckpt", "--gpus",
                              "rtx-4090", "--max-gpus", "1", "--headroom", f"{headroom:.6f}"])  # fmt: skip
    assert "near misses" in res.output and "--headroom" in res.output
