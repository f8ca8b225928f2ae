"""The trainer each stack profile runs (vramplan/memory/stacks): transformers Trainer, TRL SFTTrainer, Liger.

* hf: ``Trainer`` on the PEFT-wrapped model (``build_model`` wraps it), ``use_liger_kernel=setup.liger``.
* trl: ``SFTTrainer`` as its docs use it: the (4-bit) model unwrapped, ``peft_config=LoraConfig``, an
  ``SFTConfig`` with ``max_length=seq_len``, ``packing``, ``use_liger_kernel``; SFTTrainer itself wraps the
  model (and casts QLoRA adapters to bf16), prepares the pre-tokenized dataset and pads batches with its
  ``DataCollatorForLanguageModeling``. Data: pre-tokenized sequences of varying length (the first of every
  micro-batch ``seq_len`` long, the others between half and all of it), so batches are really padded.
* unsloth: the model loaded and wrapped by Unsloth (``unsloth_build.py``), then TRL's ``SFTTrainer`` as
  Unsloth patches it, with the model already wrapped (no ``peft_config``), the same SFTConfig and data as trl.
  With checkpointing the config leaves ``gradient_checkpointing`` at TRL's default (True), as Unsloth's
  notebooks do, and Unsloth keeps its own offloaded checkpointing; without, it says False explicitly
  (``unsloth/models/_gc_config_default.py::honour_gradient_checkpointing_off``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vramplan.specs import TrainingSetup

from .errors import MeasurementError

#: token ids of the tiny tokenizer TRL's SFTTrainer gets as processing_class (it needs a pad/eos token)
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def check_stack_installed(setup: TrainingSetup) -> None:
    """Refuse at once, before any model is built, when the stack's packages are missing."""
    if setup.stack == "unsloth" and (setup.num_gpus > 1 or setup.parallel is not None):
        raise MeasurementError("--stack unsloth is measured on one GPU; accepted: --num-gpus 1 without --parallel")
    needs = []
    if setup.stack in ("trl", "unsloth"):
        needs += [("trl", "trl"), ("datasets", "datasets")]
    if setup.stack == "unsloth":
        needs.append(("unsloth", "unsloth"))
    if setup.liger:
        needs.append(("liger_kernel", "liger-kernel"))
    missing = [pip for module, pip in needs if importlib.util.find_spec(module) is None]
    if missing:
        raise MeasurementError(f"--stack {setup.stack}{' --liger' if setup.liger else ''} needs {', '.join(missing)} "
                               f"(pip install {' '.join(missing)})")  # fmt: skip


def wraps_peft_itself(setup: TrainingSetup) -> bool:
    """SFTTrainer takes the LoRA config and wraps the model itself (no prepare_model_for_kbit_training)."""
    return setup.stack == "trl"


def unsloth_checkpointing(args_kwargs: dict[str, Any], grad_ckpt: bool) -> dict[str, Any]:
    """The run's TrainingArguments keywords as an Unsloth user writes them (module docstring): no
    checkpointing keywords with checkpointing on (TRL's default True and Unsloth's own kind), an explicit
    ``gradient_checkpointing=False`` without."""
    out = {k: v for k, v in args_kwargs.items() if "checkpointing" not in k}
    if not grad_ckpt:
        out["gradient_checkpointing"] = False
    return out


def tiny_tokenizer():
    """A word-level tokenizer with only <pad>, <eos>, <unk>: what SFTTrainer needs from a processing class
    for pre-tokenized data (its pad token id for the collator, its eos token)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<eos>": EOS_ID, "<unk>": UNK_ID}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def sequence_lengths(seq_len: int, batch_size: int, num_samples: int, seed: int = 0) -> list[int]:
    """Lengths of the synthetic SFT samples: the first of every micro-batch is `seq_len` (so every batch pads
    to `seq_len`, the length the estimate is for), the others uniform in [seq_len/2, seq_len]."""
    import random

    rng = random.Random(seed)
    low = max(1, seq_len // 2)
    return [seq_len if i % batch_size == 0 else rng.randint(low, seq_len) for i in range(num_samples)]


def sft_dataset(vocab_size: int, seq_len: int, batch_size: int, num_samples: int, seed: int = 0):
    """A ``datasets.Dataset`` of pre-tokenized ``input_ids`` (ids above the tokenizer's special tokens)."""
    import random

    from datasets import Dataset

    rng = random.Random(seed + 1)
    first = UNK_ID + 1
    if vocab_size <= first:
        raise MeasurementError(f"synthetic SFT data needs a vocabulary above {first} tokens, got {vocab_size}")
    rows = [[rng.randrange(first, vocab_size) for _ in range(n)] for n in sequence_lengths(seq_len, batch_size, num_samples, seed)]
    return Dataset.from_dict({"input_ids": rows})


def make_trainer(setup: TrainingSetup, model, args_kwargs: dict[str, Any], dataset, probe, *, peft_config=None,
                 vocab_size: int, samples: int):  # fmt: skip
    """The trainer of `setup.stack` with the measurement run's arguments (run.training_arguments' keywords)."""
    if setup.stack in ("trl", "unsloth"):
        import datasets
        from trl import SFTConfig, SFTTrainer

        datasets.disable_progress_bars()
        if setup.stack == "unsloth":
            args_kwargs = unsloth_checkpointing(args_kwargs, setup.grad_ckpt)
        args = SFTConfig(**args_kwargs, max_length=setup.seq_len, packing=setup.packing,
                         use_liger_kernel=setup.liger, dataset_num_proc=None)  # fmt: skip
        data = sft_dataset(vocab_size, setup.seq_len, setup.batch_size, samples)
        return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tiny_tokenizer(),
                          peft_config=peft_config, callbacks=[probe])  # fmt: skip
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(**args_kwargs, use_liger_kernel=setup.liger)
    return Trainer(model=model, args=args, train_dataset=dataset, callbacks=[probe])
