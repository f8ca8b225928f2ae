"""`vramplan measure` says at once what it cannot do (no torch, no CUDA, no bitsandbytes) and leaves no temporary
checkpoint behind, whatever happens (issue 14, part 4). No GPU and no training needed: the worker is stubbed."""

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vramplan.cli import app
from vramplan.errors import VramplanError
from vramplan.trainer import requirements as preflight

runner = CliRunner()
LORA = ["measure", "--model", "smollm2-135m", "--method", "lora", "--seq-len", "16", "--steps", "2"]


def _one_line_refusal(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
    return lines[0]


def test_without_torch_it_says_to_install_the_train_extra(monkeypatch):
    real = preflight._installed
    monkeypatch.setattr(preflight, "_installed", lambda m: m != "torch" and real(m))
    assert "pip install 'vramplan[train]'" in _one_line_refusal(runner.invoke(app, LORA))


def test_without_cuda_it_refuses_unless_device_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what the probe sees: no device, even on a GPU machine
    t0 = time.perf_counter()
    line = _one_line_refusal(runner.invoke(app, LORA))
    assert "no CUDA device" in line and "--device cpu" in line
    assert time.perf_counter() - t0 < 60  # refused before any model is built


def test_device_must_be_cuda_or_cpu():
    assert "--device tpu" in _one_line_refusal(runner.invoke(app, [*LORA, "--device", "tpu"]))


@pytest.mark.parametrize(
    "args, needle",
    [(["--method", "qlora"], "--method qlora"), (["--method", "lora", "--optimizer", "paged_adamw_8bit"], "--optimizer")],
)
def test_missing_bitsandbytes_is_said_at_once(monkeypatch, args, needle):
    real = preflight._installed
    monkeypatch.setattr(preflight, "_installed", lambda m: m != "bitsandbytes" and real(m))
    t0 = time.perf_counter()
    line = _one_line_refusal(runner.invoke(app, ["measure", "--model", "smollm2-135m", *args, "--device", "cpu"]))
    assert needle in line and "bitsandbytes" in line
    assert time.perf_counter() - t0 < 5


def test_a_failing_run_leaves_no_temporary_checkpoint(monkeypatch):
    monkeypatch.delenv(preflight.CHECKPOINT_CACHE_ENV, raising=False)
    seen: list[Path] = []

    def failing_worker(model, setup, steps, *, checkpoint_cache, **kwargs):
        folder = Path(checkpoint_cache)
        (folder / "model.safetensors").write_bytes(b"\0" * 1024)  # what a QLoRA checkpoint build leaves
        seen.append(folder)
        raise preflight.MeasurementError("worker crashed")

    import vramplan.trainer.worker as worker

    monkeypatch.setattr(worker, "measure_in_subprocess", failing_worker)
    res = runner.invoke(app, [*LORA, "--device", "cpu"])
    assert "worker crashed" in _one_line_refusal(res)
    assert seen and not seen[0].exists()


def test_an_interrupted_run_leaves_no_temporary_checkpoint(monkeypatch):
    monkeypatch.delenv(preflight.CHECKPOINT_CACHE_ENV, raising=False)
    with pytest.raises(KeyboardInterrupt):
        with preflight.checkpoint_cache() as folder:
            Path(folder, "x").write_text("x")
            raise KeyboardInterrupt
    assert not os.path.exists(folder)


def test_a_kept_cache_is_used_and_left(monkeypatch, tmp_path):
    monkeypatch.setenv(preflight.CHECKPOINT_CACHE_ENV, str(tmp_path))
    with preflight.checkpoint_cache() as folder:
        assert folder == str(tmp_path)
    assert tmp_path.is_dir()


def test_cuda_check_is_a_clean_error_type():
    with pytest.raises(VramplanError):
        preflight.check_device("cuda", probe=lambda: False)
    preflight.check_device("cuda", probe=lambda: True)
    preflight.check_device("cpu", probe=lambda: pytest.fail("the CPU path must not probe CUDA"))
