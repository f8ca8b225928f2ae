"""The built-in trainer's stack plumbing (vramplan/trainer/stacks.py), without training."""

import importlib.util

import pytest

from vramplan.specs import LoraSpec, TrainingSetup
from vramplan.trainer import MeasurementError
from vramplan.trainer.stacks import check_stack_installed, sequence_lengths, sft_dataset, tiny_tokenizer


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


def test_unsloth_is_refused_with_the_reason():
    with pytest.raises(MeasurementError, match="unsloth"):
        check_stack_installed(TrainingSetup(method="lora", lora=LoraSpec(dropout=0.0), stack="unsloth"))
