"""scripts/campaign.py: the issue-3 grid's coverage and the driver (resume, caps, skips, summary)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def campaign():
    spec = importlib.util.spec_from_file_location("campaign", ROOT / "scripts" / "campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["campaign"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("campaign", None)


# --------------------------------------------------------------------------- the grid
def test_grid_covers_what_issue_3_asks(campaign):
    grid = campaign.issue3_grid()
    setups = [r.setup for r in grid]
    assert len(grid) >= 45
    assert len({r.name for r in grid}) == len(grid)
    assert len({r.model for r in grid}) >= 7
    assert {s.method for s in setups} == {"full", "lora", "qlora"}
    ranks = {s.lora.rank for s in setups if s.lora}
    assert min(ranks) == 8 and max(ranks) == 64
    assert {s.lora.all_linear for s in setups if s.lora} == {True, False}
    assert min(s.seq_len for s in setups) == 512 and max(s.seq_len for s in setups) == 8192
    assert {1, 8} <= {s.batch_size for s in setups}
    assert {s.grad_ckpt for s in setups} == {True, False}
    assert {"adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"} <= {s.optimizer for s in setups}
    assert {s.expandable_segments for s in setups} == {True, False}
    assert sum(1 for r in grid if r.cap_from or r.cap_gib) == 3
    assert {"olmoe-1b-7b-0924", "qwen3-30b-a3b"} & {r.model for r in grid}


def test_grid_keeps_fp32_on_small_models_and_eager_on_short_sequences(campaign):
    for r in campaign.issue3_grid():
        if r.setup.dtype == "fp32":
            assert r.model in ("llama-3.2-1b", "qwen2.5-0.5b"), r.name
        if r.setup.attn == "eager":
            assert r.setup.seq_len <= 1024, r.name


def test_capped_runs_come_after_their_reference(campaign):
    names = [r.name for r in campaign.issue3_grid()]
    for i, r in enumerate(campaign.issue3_grid()):
        if r.cap_from:
            assert names.index(r.cap_from.ref) < i


def test_grid_models_are_in_the_catalog(campaign):
    models = pytest.importorskip("vramplan.models")
    for name in {r.model for r in campaign.issue3_grid()}:
        assert models.load_raw_config(name)["model_type"]


# --------------------------------------------------------------------------- selection and checks
def test_select_by_names_globs_start_and_limit(campaign):
    grid = campaign.issue3_grid()
    assert [r.name for r in campaign.select(grid, "l8-lora-gc,l1-full", 0, None)] == ["l8-lora-gc", "l1-full"]
    assert all(r.name.startswith("l8-qlora") for r in campaign.select(grid, "l8-qlora*", 0, None))
    assert campaign.select(grid, None, 2, 3) == grid[2:5]
    with pytest.raises(SystemExit, match="no-such-run"):
        campaign.select(grid, "no-such-run", 0, None)


def test_lower_bound_skips_8b_full_fine_tuning_on_a_small_card(campaign):
    from vramplan.specs import TrainingSetup

    full = TrainingSetup(method="full")
    assert campaign.lower_bound_bytes(8_000_000_000, full) == 64_000_000_000
    assert campaign.lower_bound_bytes(8_000_000_000, full.model_copy(update={"optimizer": "adamw_8bit"})) == 48e9


# --------------------------------------------------------------------------- the driver
TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 128,
    "max_position_embeddings": 64,
}


@pytest.fixture
def tiny_campaign(campaign, tmp_path, monkeypatch):
    """The driver over a two-run grid, measuring in-process (the subprocess path has its own test)."""
    pytest.importorskip("torch")
    from vramplan.runs import save_run
    from vramplan.specs import TrainingSetup
    from vramplan.trainer.run import run_measurement

    config = tmp_path / "tiny" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY))
    model = str(config)
    grid = [
        campaign.RunSpec("tiny-full", model, TrainingSetup(method="full", seq_len=8), steps=2),
        campaign.RunSpec(
            "tiny-full-capped",
            model,
            TrainingSetup(method="full", seq_len=8),
            cap_from=campaign.CapFrom("tiny-full", "max_allocated_bytes", 0.9),
            steps=2,
        ),
    ]
    calls = []

    class FakeServer:
        broken = False

        def close(self):
            pass

    def fake_measure(model, setup, steps, *, runs_dir, memory_cap_gib=None, server=None, **kw):
        if server is not None and server.broken:
            raise campaign.ForkServerError("fork server exited")
        calls.append(server)
        run = run_measurement(model, setup, steps=steps, config=TINY, memory_cap_gib=memory_cap_gib)
        save_run(run, runs_dir)
        return run

    monkeypatch.setattr(campaign, "issue3_grid", lambda: grid)
    monkeypatch.setattr(campaign, "measure_in_subprocess", fake_measure)
    monkeypatch.setattr(campaign, "param_counts", lambda models: {})
    monkeypatch.setattr(campaign, "gpu_info", lambda: None)
    monkeypatch.setattr(campaign, "ForkServer", FakeServer)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    return campaign, tmp_path / "out", calls


def test_campaign_writes_records_progress_and_summary(tiny_campaign, capsys):
    campaign, out, _ = tiny_campaign
    assert campaign.main(["--out", str(out)]) == 0
    progress = campaign.load_progress(out / "campaign-progress.jsonl")
    assert progress["tiny-full"]["status"] == "ok"
    assert Path(progress["tiny-full"]["record"]).is_file()
    # on CPU there is no max_allocated, so the capped run cannot derive its cap: skipped, with why
    assert progress["tiny-full-capped"]["status"] == "skipped"
    assert "max_allocated_bytes" in progress["tiny-full-capped"]["error"]
    summary = (out / "campaign-summary.txt").read_text()
    assert "tiny-full" in summary and summary in capsys.readouterr().out


def test_campaign_resumes_without_repeating_done_runs(tiny_campaign):
    campaign, out, calls = tiny_campaign
    campaign.main(["--out", str(out)])
    n = len(calls)
    campaign.main(["--out", str(out)])
    assert len(calls) == n
    assert "tiny-full" in (out / "campaign-summary.txt").read_text()


def test_campaign_measures_through_the_fork_server(tiny_campaign):
    campaign, out, calls = tiny_campaign
    campaign.main(["--out", str(out), "--only", "tiny-full"])
    assert len(calls) == 1 and isinstance(calls[0], campaign.ForkServer)


def test_campaign_falls_back_to_new_interpreters_when_the_server_dies(tiny_campaign):
    campaign, out, calls = tiny_campaign
    campaign.ForkServer.broken = True
    campaign.main(["--out", str(out), "--only", "tiny-full"])
    assert calls == [None]
    assert campaign.load_progress(out / "campaign-progress.jsonl")["tiny-full"]["status"] == "ok"


def test_campaign_budget_stops_cleanly_and_still_summarizes(tiny_campaign):
    campaign, out, calls = tiny_campaign
    campaign.main(["--out", str(out), "--budget-s", "1"])
    assert calls == []
    assert "budget" in (out / "campaign-summary.txt").read_text()


def test_campaign_driver_never_imports_torch():
    """The driver must hold no GPU memory while a child measures."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('campaign', {str(ROOT / 'scripts' / 'campaign.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['campaign'] = m; spec.loader.exec_module(m)\n"
        "print('torch' in sys.modules)\n"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
