"""The built-in trainer's stack plumbing (vramplan/trainer/stacks.py), without training."""

import importlib.util

import pytest

from vramplan.specs import LoraSpec, TrainingSetup
from vramplan.trainer import MeasurementError
from vramplan.trainer.stacks import (
    check_stack_installed,
    sequence_lengths,
    sft_dataset,
    tiny_tokenizer,
    unsloth_checkpointing,
)
from vramplan.trainer.unsloth_build import load_kwargs, peft_kwargs


def test_every_sft_micro_batch_pads_to_the_sequence_length_the_estimate_is_for():
    lengths = sequence_lengths(512, 4, 40)
    assert lengths[::4] == [512] * 10
    assert all(256 <= n <= 512 for n in lengths) and len(set(lengths)) > 5
    assert sequence_lengths(512, 4, 40) == lengths  # deterministic


def test_batch_size_one_has_no_padding():
    assert sequence_lengths(100, 1, 7) == [100] * 7


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets not installed")
def test_sft_dataset_is_pre_tokenized_above_the_special_tokens():
    data = sft_dataset(vocab_size=50, seq_len=8, batch_size=2, num_samples=4)
    rows = data["input_ids"]
    assert [len(r) for r in rows][::2] == [8, 8]
    assert min(min(r) for r in rows) >= 3 and max(max(r) for r in rows) < 50
    tok = tiny_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed")
def test_liger_without_the_package_is_refused_before_building_anything():
    with pytest.raises(MeasurementError, match="needs liger-kernel"):
        check_stack_installed(TrainingSetup(method="lora", lora=LoraSpec(), liger=True))


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="unsloth is installed")
def test_unsloth_without_the_package_is_refused_before_building_anything():
    with pytest.raises(MeasurementError, match="needs .*unsloth"):
        check_stack_installed(TrainingSetup(method="lora", lora=LoraSpec(dropout=0.0), stack="unsloth"))


def test_unsloth_loads_as_its_notebooks_do_for_each_method():
    qlora = TrainingSetup(method="qlora", quant="nf4", lora=LoraSpec(dropout=0.0), stack="unsloth", grad_ckpt=True)
    assert load_kwargs(qlora) | {"max_seq_length": None} == {
        "max_seq_length": None, "load_in_4bit": True, "full_finetuning": False,
        "use_gradient_checkpointing": "unsloth", "use_exact_model_name": True, "fix_tokenizer": False,
        "local_files_only": True,
    }  # fmt: skip
    lora = qlora.model_copy(update={"method": "lora", "quant": None, "grad_ckpt": False})
    assert load_kwargs(lora)["load_in_4bit"] is False  # Unsloth's own default is True
    assert load_kwargs(lora)["use_gradient_checkpointing"] is False
    full = TrainingSetup(method="full", stack="unsloth", seq_len=512)
    assert load_kwargs(full)["full_finetuning"] is True and load_kwargs(full)["max_seq_length"] == 512


def test_unsloth_adapters_take_the_setups_lora_fields():
    s = TrainingSetup(method="lora", lora=LoraSpec(rank=8, alpha=32, dropout=0.0, targets=("q_proj", "v_proj")),
                      stack="unsloth", grad_ckpt=True)  # fmt: skip
    kw = peft_kwargs(s)
    assert (kw["r"], kw["lora_alpha"], kw["lora_dropout"], kw["target_modules"]) == (8, 32, 0.0, ["q_proj", "v_proj"])
    assert kw["use_gradient_checkpointing"] == "unsloth" and kw["bias"] == "none"
    assert peft_kwargs(s.model_copy(update={"lora": LoraSpec()}))["target_modules"] == "all-linear"


def test_unsloth_config_leaves_checkpointing_to_trl_and_unsloth_or_turns_it_off():
    kw = {"output_dir": "x", "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    assert unsloth_checkpointing(kw, True) == {"output_dir": "x"}
    assert unsloth_checkpointing(kw, False) == {"output_dir": "x", "gradient_checkpointing": False}
    with pytest.raises(MeasurementError, match="one GPU"):
        check_stack_installed(TrainingSetup(method="full", stack="unsloth", num_gpus=2, parallel="ddp"))
