"""Small things a user hit (issue 14, part 7)."""

import re
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from gpu_catalog import find_gpu, list_gpus
from vramplan.api import default_calibration
from vramplan.cli import app
from vramplan.cli_options import build_setup
from vramplan.models import resolve_model
from vramplan.planner import fit
from vramplan.suggestions import suggestions
from vramplan.report.plan_view import fit_doc

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
runner = CliRunner()


def test_gpus_explains_its_star():
    assert any(g.memory_bytes_estimated for g in list_gpus())
    out = runner.invoke(app, ["gpus"]).output
    assert "*" in out and "* estimated: the marketed size minus a typical reservation" in out


def test_estimate_help_has_an_example():
    out = runner.invoke(app, ["estimate", "--help"]).output
    assert "Example: vramplan estimate --model" in out


def test_streamlit_usage_statistics_are_off():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False


def test_readme_documents_every_fit_json_key():
    r = fit(resolve_model("llama-3.2-1b"), _full(), find_gpu("rtx-4090"), "batch-size")
    for key in fit_doc(r):
        assert f"`{key}`" in README, key


def test_readme_offload_sentences_agree():
    assert "--offload" in README
    assert not re.search(r"CPU offload (is|are) not modell?ed", README)


def _full(seq_len=4096, grad_ckpt=False):
    return build_setup(method="full", lora_rank=16, lora_alpha=None, lora_dropout=0.05, lora_targets="all-linear",
                       quant=None, double_quant=True, seq_len=seq_len, batch_size=1, grad_accum=1, grad_ckpt=grad_ckpt,
                       optimizer="adamw_torch_fused", dtype="bf16", attn="sdpa", expandable_segments=False,
                       stack="hf", num_gpus=1, parallel=None)  # fmt: skip


def test_when_no_single_change_fits_the_smallest_combination_that_does_comes_last():
    model, gpu = resolve_model("llama-3.1-8b"), find_gpu("rtx-4090")
    found = suggestions(model, _full(), gpu, calibration=default_calibration(), max_gpus=1)
    singles, combo = found[:-1], found[-1]
    assert not any(s.fits for s in singles)
    assert combo.fits and combo.change.count("--") >= 2
    assert combo.saves_bytes > max(s.saves_bytes for s in singles)
    parts = sorted((s for s in singles if s.change in combo.change), key=lambda s: combo.change.index(s.change))
    assert len(parts) >= 2 and " ".join(p.change for p in parts) == combo.change
    assert [p.saves_bytes for p in parts] == sorted((p.saves_bytes for p in parts), reverse=True)


def test_no_combination_when_a_single_change_fits():
    model, gpu = resolve_model("llama-3.2-1b"), find_gpu("rtx-4090")
    found = suggestions(model, _full(seq_len=16384), gpu, calibration=default_calibration(), max_gpus=1)
    if any(s.fits for s in found):
        assert all(s.change.count("--") <= 3 for s in found)  # singles only (a single may carry 2 flags)
