"""The built-in trainer on CPU: tiny Llama configs trained end to end through run_measurement."""

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from vramplan.specs import LoraSpec, MeasuredRun, TrainingSetup
from vramplan.trainer import MeasurementError, run_measurement
from vramplan.trainer import build as build_mod
from vramplan.trainer.data import SyntheticTokens
from vramplan.trainer.environment import allocator_env_for, make_run_id
from vramplan.trainer.probe import MemoryProbe

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}
LORA = TrainingSetup(method="lora", lora=LoraSpec(rank=4), seq_len=16, batch_size=2)
FULL = TrainingSetup(method="full", seq_len=16, batch_size=1, grad_accum=2)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_allocator_env(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)


def measure(setup, **kw):
    return run_measurement("tiny-llama", setup, steps=kw.pop("steps", 2), config=TINY_LLAMA, **kw)


# --------------------------------------------------------------------------- end to end on CPU
@pytest.mark.slow
def test_lora_run_produces_a_valid_record_without_memory_numbers():
    run = measure(LORA)
    assert MeasuredRun.model_validate_json(run.model_dump_json()) == run
    m = run.measurements
    assert not m.oom and m.steps == 2 and len(m.step_times_s) == 2
    assert m.tokens_per_s is not None and m.tokens_per_s > 0
    assert m.max_allocated_bytes is None and m.device_peak_bytes is None and m.step0.forward is None
    assert 0 < m.params_trainable < m.params_total
    # LoRA r=4 on every linear layer except lm_head: r * (in + out) per module
    per_layer = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    assert m.params_trainable == 2 * per_layer
    assert run.environment.gpu_id is None and run.environment.torch == torch.__version__


@pytest.mark.slow
def test_full_run_trains_every_parameter():
    m = measure(FULL).measurements
    assert (
        m.params_trainable
        == m.params_total
        == sum(p.numel() for p in build_mod.build_model(TINY_LLAMA, FULL).model.parameters())
    )
    assert m.tokens_per_s > 0


@pytest.mark.slow
def test_lora_targets_list_limits_the_adapters_with_checkpointing():
    setup = TrainingSetup(
        method="lora", lora=LoraSpec(rank=4, targets=("q_proj", "v_proj")), seq_len=16, grad_ckpt=True
    )
    m = measure(setup, steps=1).measurements
    assert m.params_trainable == 2 * 4 * ((64 + 64) + (64 + 32))


def test_qlora_without_bitsandbytes_is_a_clear_error():
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    setup = TrainingSetup(method="qlora", quant="nf4", lora=LoraSpec(rank=4), seq_len=16)
    with pytest.raises(MeasurementError, match="bitsandbytes"):
        measure(setup, checkpoint_cache=None)


@pytest.mark.slow
def test_qlora_on_cpu_when_bitsandbytes_allows_it(tmp_path):
    pytest.importorskip("bitsandbytes")
    setup = TrainingSetup(method="qlora", quant="nf4", lora=LoraSpec(rank=4), seq_len=16)
    try:
        run = measure(setup, checkpoint_cache=tmp_path)
    except (RuntimeError, ValueError, ImportError) as exc:  # no usable CPU backend in this bnb build
        pytest.skip(f"bitsandbytes cannot quantize on this machine: {exc}")
    assert not run.measurements.oom and run.measurements.params_trainable > 0


# --------------------------------------------------------------------------- OOM is a measurement
def _raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_oom_during_training_is_recorded_with_its_phase(monkeypatch, phase):
    real_build = build_mod.build_model

    def build_with_failing_layer(*args, **kwargs):
        built = real_build(*args, **kwargs)
        layer = built.model.get_base_model().model.layers[1].mlp
        if phase == "forward":
            layer.register_forward_hook(_raise_oom)
        else:
            layer.register_full_backward_hook(_raise_oom)
        return built

    monkeypatch.setattr(build_mod, "build_model", build_with_failing_layer)
    run = measure(LORA)
    assert run.measurements.oom is True
    assert run.measurements.oom_phase == phase
    assert run.measurements.steps == 0
    assert "out of memory" in run.extra["oom_message"]


def test_oom_while_loading_is_recorded_as_load(monkeypatch):
    monkeypatch.setattr(build_mod, "build_model", _raise_oom)
    m = measure(LORA).measurements
    assert m.oom and m.oom_phase == "load" and m.params_total is None


def test_bitsandbytes_style_oom_runtime_error_counts_as_oom(monkeypatch):
    def bnb_oom(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(build_mod, "build_model", bnb_oom)
    assert measure(LORA).measurements.oom


def test_other_errors_propagate(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("not an OOM")

    monkeypatch.setattr(build_mod, "build_model", broken)
    with pytest.raises(ValueError, match="not an OOM"):
        measure(LORA)


# --------------------------------------------------------------------------- allocator config
def test_expandable_segments_without_the_env_var_is_refused():
    setup = LORA.model_copy(update={"expandable_segments": True})
    with pytest.raises(MeasurementError, match="PYTORCH_CUDA_ALLOC_CONF"):
        measure(setup)


def test_env_var_without_expandable_segments_in_setup_is_refused(monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    with pytest.raises(MeasurementError, match="expandable_segments"):
        measure(LORA)


def test_allocator_env_for_sets_and_clears_expandable_segments():
    es = LORA.model_copy(update={"expandable_segments": True})
    env = allocator_env_for(es, {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128", "X": "1"})
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128,expandable_segments:True"
    assert env["X"] == "1"
    env = allocator_env_for(LORA, {"PYTORCH_ALLOC_CONF": "expandable_segments:True"})
    assert "PYTORCH_ALLOC_CONF" not in env and "PYTORCH_CUDA_ALLOC_CONF" not in env


# --------------------------------------------------------------------------- pieces
def test_probe_sees_the_trainer_phases_in_order():
    """The installed transformers fires the events where the probe expects them: with GA=2 and a
    reader whose peak depends on the phase being closed, step 0 and the steady state come out."""
    from transformers import Trainer, TrainingArguments

    class PhaseReader:
        probe = None

        def max_allocated(self):
            base = {"forward": 100, "backward": 200, "optimizer": 300}.get(self.probe.phase, 0)
            return base + 1000 * self.probe.step

        def allocated(self):
            return 0

        def reserved(self):
            return 0

        def max_reserved(self):
            return 0

        def reset_peak(self):
            pass

        def synchronize(self):
            pass

        def alloc_retries(self):
            return 0

    reader = PhaseReader()
    probe = MemoryProbe(reader)
    reader.probe = probe
    model = build_mod.build_model(TINY_LLAMA, FULL).model
    args = TrainingArguments(
        output_dir="unused",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        max_steps=3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=SyntheticTokens(256, 8, 6), callbacks=[probe])
    trainer.train()
    step0, steady = probe.phase_peaks(steady=False), probe.phase_peaks(steady=True)
    assert (step0.forward, step0.backward, step0.optimizer) == (100, 200, 300)
    assert (steady.forward, steady.backward, steady.optimizer) == (2100, 2200, 2300)
    assert probe.step_tokens == [16, 16, 16]
    assert probe._handles == []  # hooks removed at train end


def test_synthetic_tokens_are_fixed_length_unpadded_and_deterministic():
    ds = SyntheticTokens(vocab_size=50, seq_len=12, num_samples=3)
    item = ds[1]
    assert set(item) == {"input_ids", "labels"}
    assert item["input_ids"].shape == (12,) and int(item["input_ids"].max()) < 50
    assert torch.equal(item["labels"], item["input_ids"])
    assert torch.equal(ds[1]["input_ids"], SyntheticTokens(50, 12, 3)[1]["input_ids"])


def test_clean_config_drops_loading_keys_and_unwraps_gemma3():
    raw = {**TINY_LLAMA, "auto_map": {"AutoModel": "x.Y"}, "torch_dtype": "float16", "quantization": {"bits": 4}}
    assert build_mod.clean_config(raw) == TINY_LLAMA
    gemma3 = {"model_type": "gemma3", "text_config": {"hidden_size": 8, "model_type": "gemma3_text"}}
    assert build_mod.clean_config(gemma3) == {"hidden_size": 8, "model_type": "gemma3_text"}


def test_flash_attention_without_the_package_is_a_clear_error():
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed")
    with pytest.raises(MeasurementError, match="flash-attn"):
        build_mod.attn_implementation("flash")


def test_run_id_is_readable_and_unique_per_creation_time():
    setup = TrainingSetup(
        method="qlora", quant="nf4", lora=LoraSpec(rank=16), seq_len=2048, grad_ckpt=True, optimizer="paged_adamw_8bit"
    )
    a = make_run_id("llama-3.1-8b", setup, created_utc="2026-01-01T00:00:00Z")
    b = make_run_id("llama-3.1-8b", setup, created_utc="2026-01-01T00:00:01Z")
    assert a.startswith("llama-3.1-8b-qlora-nf4dq-r16-s2048-b1-gc-pagedadamw8bit-bf16-sdpa-")
    assert a != b


def test_gpu_id_is_the_catalog_id_when_the_card_is_known():
    from vramplan.trainer.environment import gpu_id_for

    pytest.importorskip("gpu_catalog")
    assert gpu_id_for("NVIDIA H100 80GB HBM3", None) == "h100-sxm"
    assert gpu_id_for("Some Future GPU 1", None) == "some-future-gpu-1"


def test_count_params_matches_the_built_model():
    built = build_mod.build_model(TINY_LLAMA, FULL)
    assert build_mod.count_params(TINY_LLAMA) == built.params_total


# --------------------------------------------------------------------------- subprocess path
@pytest.fixture(scope="module")
def fork_server():
    from vramplan.trainer.forkserver import ForkServer

    with ForkServer() as server:
        yield server


@pytest.mark.slow
def test_fork_server_measures_in_a_child_and_saves(fork_server, tmp_path):
    from vramplan.runs import load_runs
    from vramplan.trainer import measure_in_subprocess

    seen: list[str] = []
    run = measure_in_subprocess(
        "tiny-llama",
        LORA,
        2,
        config=TINY_LLAMA,
        runs_dir=tmp_path,
        timeout_s=120,
        progress=seen.append,
        server=fork_server,
    )
    assert run.measurements.steps == 2 and run.environment.allocator_conf is None
    assert [r.run_id for r in load_runs(tmp_path)] == [run.run_id]
    assert any(line.startswith("training") for line in seen)


@pytest.mark.slow
def test_fork_server_reports_a_bad_request(fork_server):
    from vramplan.trainer import measure_in_subprocess

    bad = TINY_LLAMA | {"model_type": "no-such-architecture"}
    with pytest.raises(MeasurementError, match="no-such-architecture"):
        measure_in_subprocess("tiny", LORA, 1, config=bad, timeout_s=120, server=fork_server)


@pytest.mark.slow
def test_fork_server_kills_a_child_past_its_timeout_and_keeps_serving(fork_server):
    from vramplan.trainer import measure_in_subprocess

    with pytest.raises(MeasurementError, match="timed out"):
        measure_in_subprocess("tiny", LORA, 10_000, config=TINY_LLAMA, timeout_s=1.0, server=fork_server)
    run = measure_in_subprocess("tiny", LORA, 1, config=TINY_LLAMA, timeout_s=120, server=fork_server)
    assert run.measurements.steps == 1


@pytest.mark.slow
def test_expandable_segments_run_gets_a_new_interpreter_with_the_env(fork_server, tmp_path):
    """The allocator reads PYTORCH_CUDA_ALLOC_CONF once: a run whose options differ from the
    server's is not forked but started fresh with the variable set."""
    from vramplan.trainer import measure_in_subprocess

    setup = LORA.model_copy(update={"expandable_segments": True})
    assert not fork_server.accepts(allocator_env_for(setup, fork_server.env))
    run = measure_in_subprocess("tiny-llama", setup, 2, config=TINY_LLAMA, timeout_s=120, server=fork_server)
    assert run.environment.allocator_conf == "expandable_segments:True"


# --------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@needs_cuda
def test_gpu_run_records_memory_numbers():
    run = measure(LORA, steps=3)
    m = run.measurements
    assert m.memory_after_load_bytes > 0
    assert m.step0.forward and m.step0.backward and m.step0.optimizer
    assert m.steady.forward and m.max_allocated_bytes >= m.steady.forward
    assert m.max_reserved_bytes >= m.max_allocated_bytes
    assert run.environment.gpu_name and run.environment.total_memory_bytes
