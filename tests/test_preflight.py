"""vramplan.preflight / PreflightCallback on a live (tiny, CPU) Trainer and SFTTrainer."""

import json
import subprocess
import sys
import time
import warnings

import pytest
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import vramplan  # noqa: E402
from vramplan.cli import app  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1000, max_position_embeddings=4096, pad_token_id=0, eos_token_id=2)  # fmt: skip
ROWS = [{"input_ids": [5] * n, "labels": [5] * n} for n in (40, 96, 50)]


def tiny_model(lora: bool = True):
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
    if lora:
        config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                 task_type="CAUSAL_LM")  # fmt: skip
        model = peft.get_peft_model(model, config)
    return model


def trainer_for(model, tmp_path, rows=ROWS, **args):
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                    use_cpu=True, report_to="none", max_steps=1)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training_args = transformers.TrainingArguments(**{**defaults, **args})
    return transformers.Trainer(model=model, args=training_args, train_dataset=rows)


def cli_estimate(*args: str) -> dict:
    res = CliRunner().invoke(app, ["estimate", *args, "--gpu", "rtx-4090", "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def write_config(model, tmp_path) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(base.config.to_dict()))
    return str(path)


def test_preflight_predicts_what_vramplan_estimate_predicts_for_the_same_setup(tmp_path):
    model = tiny_model()
    e = vramplan.preflight(trainer_for(model, tmp_path), gpu="rtx-4090", report=False)
    cli = cli_estimate("--model", write_config(model, tmp_path), "--method", "lora", "--lora-rank", "8",
                       "--lora-alpha", "16", "--lora-dropout", "0", "--lora-targets", "q_proj,v_proj",
                       "--seq-len", "96", "--batch-size", "2", "--grad-accum", "2", "--dtype", "fp32")  # fmt: skip
    doc = vramplan.to_dict(e)
    assert doc["memory"] == cli["memory"] and doc["params"] == cli["params"] and doc["setup"] == cli["setup"]
    assert doc["fits"] is True


def test_full_fine_tuning_with_checkpointing_reads_the_trainable_dtype(tmp_path):
    import torch

    model = tiny_model(lora=False).to(torch.bfloat16)
    e = vramplan.preflight(trainer_for(model, tmp_path, gradient_checkpointing=True, optim="adamw_torch"),
                           gpu="rtx-4090", seq_len=256, report=False)  # fmt: skip
    assert (e.setup.method, e.setup.dtype, e.setup.grad_ckpt, e.setup.optimizer, e.setup.seq_len) == (
        "full", "bf16", True, "adamw_torch", 256)  # fmt: skip


def test_a_bitsandbytes_quantization_config_on_the_live_model_means_qlora(tmp_path):
    model = tiny_model()
    model.get_base_model().config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                                          "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                                          "bnb_4bit_compute_dtype": "bfloat16"}  # fmt: skip
    e = vramplan.preflight(trainer_for(model, tmp_path), gpu="rtx-4090", report=False)
    assert (e.setup.method, e.setup.quant, e.setup.double_quant, e.setup.dtype) == ("qlora", "nf4", True, "bf16")


def test_strict_preflight_raises_before_the_first_step_when_it_will_not_fit(tmp_path):
    trainer = trainer_for(tiny_model(), tmp_path, per_device_train_batch_size=64)
    with pytest.raises(vramplan.PreflightError, match="will not fit NVIDIA T4"):
        vramplan.preflight(trainer, strict=True, gpu="t4", seq_len=32768, report=False)
    assert vramplan.preflight(trainer, gpu="t4", seq_len=32768, report=False).verdict.fits is False  # not strict: no raise


def test_the_callback_stops_train_before_step_one(tmp_path):
    callback = vramplan.PreflightCallback(strict=True, gpu="t4", seq_len=32768, report=False)
    assert isinstance(callback, transformers.TrainerCallback)
    trainer = trainer_for(tiny_model(), tmp_path, per_device_train_batch_size=64)
    trainer.add_callback(callback)
    with pytest.raises(vramplan.PreflightError):
        trainer.train()
    assert trainer.state.global_step == 0 and callback.estimate is not None


def test_the_callback_lets_a_fitting_job_train(tmp_path, capsys):
    callback = vramplan.PreflightCallback(strict=True, gpu="rtx-4090")
    trainer = trainer_for(tiny_model(), tmp_path, rows=[{"input_ids": [5] * 64, "labels": [5] * 64}] * 4)
    trainer.add_callback(callback)
    trainer.train()
    assert trainer.state.global_step == 1 and callback.estimate.verdict.fits
    assert "FITS on NVIDIA GeForce RTX 4090" in capsys.readouterr().err


def test_sfttrainer_means_the_trl_stack_and_its_max_length(tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{f"w{i}": i + 3 for i in range(100)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]")
    rows = datasets.Dataset.from_list([{"text": " ".join(f"w{i % 100}" for i in range(n))} for n in (30, 60)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=2, max_length=384,
                             use_cpu=True, bf16=False, report_to="none", max_steps=1)  # fmt: skip
        trainer = trl.SFTTrainer(model=tiny_model(lora=False), args=args, train_dataset=rows, processing_class=tokenizer,
                                 peft_config=peft.LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))  # fmt: skip
    e = vramplan.preflight(trainer, gpu="rtx-4090", report=False)
    assert (e.setup.stack, e.setup.seq_len, e.setup.grad_ckpt, e.setup.lora.rank) == ("trl", 384, True, 4)


def test_preflight_costs_well_under_a_second(tmp_path):
    trainer = trainer_for(tiny_model(), tmp_path)
    vramplan.preflight(trainer, gpu="rtx-4090", report=False)
    start = time.perf_counter()
    vramplan.preflight(trainer, gpu="h100", report=False)
    assert time.perf_counter() - start < 0.25


def test_importing_vramplan_and_its_api_imports_no_torch():
    code = ("import sys, vramplan; from vramplan import estimate, plan, fit, preflight; "
            "estimate('llama-3.1-8b', method='qlora', gpu='rtx-4090'); "
            "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; assert not heavy, heavy")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.gpu
def test_preflight_prediction_is_close_to_the_measured_peak_of_the_same_run(tmp_path):
    """The campaign check: the callback's prediction against torch's max_memory_allocated of the very run
    it guarded (a random 8-layer Llama, LoRA, checkpointing, bf16). Not run in CI (needs CUDA)."""
    import torch

    config = transformers.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                                      num_attention_heads=16, num_key_value_heads=8, vocab_size=32000,
                                      max_position_embeddings=2048)  # fmt: skip
    model = transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16)
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = [{"input_ids": [5] * 1024, "labels": [5] * 1024}] * 8
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, bf16=True,
                                          gradient_checkpointing=True, max_steps=3, report_to="none")  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    callback = vramplan.PreflightCallback(report=False)
    trainer.add_callback(callback)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = torch.cuda.max_memory_allocated()
    predicted = callback.estimate.memory.peak_allocated_bytes
    assert callback.estimate.verdict is not None  # the GPU was found (catalog or mem_get_info)
    assert abs(predicted / measured - 1) < 0.15, (predicted, measured)
