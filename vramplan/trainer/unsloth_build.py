"""The Unsloth stack of the built-in trainer: load and wrap the model as Unsloth's notebooks do.

Unsloth (2026.10.9, read from its source) loads through ``FastLanguageModel.from_pretrained`` from a
checkpoint folder, so every method (not only QLoRA) first gets a random-init bf16 checkpoint
(``build.ensure_checkpoint``), with a tiny tokenizer saved beside it (the loader reads one):

* QLoRA: ``load_in_4bit=True`` (Unsloth's own BitsAndBytesConfig: NF4, double quantization,
  compute dtype = the load dtype; ``unsloth/models/loader.py::FastLanguageModel.from_pretrained``).
* LoRA: ``load_in_4bit=False`` (its default is True), 16-bit weights.
* full: ``full_finetuning=True`` (on a bf16 GPU Unsloth trains the bf16 weights with bf16 Adam states,
  "Using bfloat16 full finetuning"; seen on the H200: bf16 trainable parameters).
* adapters: ``FastLanguageModel.get_peft_model(r, target_modules, lora_alpha, lora_dropout, bias="none",
  use_gradient_checkpointing="unsloth" | False)`` (``unsloth/models/llama.py::get_peft_model``);
  ``lora_dropout=0`` takes Unsloth's fused LoRA kernels, anything else PEFT's forward.
* checkpointing: ``use_gradient_checkpointing="unsloth"`` (checkpoints offloaded to host memory,
  ``unsloth_zoo/gradient_checkpointing.py``) when the setup checkpoints, else False.

``import unsloth`` must come before transformers, TRL and PEFT are imported (it patches them), and after
the CUDA start (its import initializes CUDA); ``run.run_measurement`` calls ``import_unsloth`` there.
The trainer is TRL's ``SFTTrainer`` as Unsloth patches it (``stacks.make_trainer``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vramplan.specs import TrainingSetup

from .errors import MeasurementError

#: Unsloth's statistics ping (a README download from the Hub at import) is skipped with this variable
_NO_STATISTICS = "UNSLOTH_DISABLE_STATISTICS"
_TOKENIZER_FILE = "tokenizer.json"


def import_unsloth() -> str:
    """Import Unsloth (patching transformers, TRL and PEFT) and return its version.

    Raises:
        MeasurementError: transformers was already imported (Unsloth's patches would be partial), or the
            import failed (its message).
    """
    import sys

    if "transformers" in sys.modules and "unsloth" not in sys.modules:
        raise MeasurementError("--stack unsloth must import unsloth before transformers (start a fresh process)")
    os.environ.setdefault(_NO_STATISTICS, "1")
    try:
        import unsloth
    except Exception as exc:  # its import checks the GPU, triton, bitsandbytes and versions
        raise MeasurementError(f"import unsloth failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    return str(getattr(unsloth, "__version__", "unknown"))


def load_kwargs(setup: TrainingSetup) -> dict[str, Any]:
    """The keywords of ``FastLanguageModel.from_pretrained`` for ``setup`` (besides model_name and dtype)."""
    return dict(
        max_seq_length=setup.seq_len,
        load_in_4bit=setup.method == "qlora",
        full_finetuning=setup.method == "full",
        use_gradient_checkpointing="unsloth" if setup.grad_ckpt else False,
        use_exact_model_name=True,
        fix_tokenizer=False,
        local_files_only=True,
    )


def peft_kwargs(setup: TrainingSetup) -> dict[str, Any]:
    """The keywords of ``FastLanguageModel.get_peft_model`` for a LoRA/QLoRA ``setup``."""
    lora = setup.lora
    assert lora is not None  # TrainingSetup guarantees it for lora/qlora
    return dict(
        r=lora.rank,
        target_modules="all-linear" if lora.all_linear else list(lora.targets),
        lora_alpha=lora.effective_alpha,
        lora_dropout=lora.dropout,
        bias="none",
        use_gradient_checkpointing="unsloth" if setup.grad_ckpt else False,
        random_state=0,
    )


def ensure_tokenizer(folder: Path) -> None:
    """Save the tiny tokenizer (stacks.tiny_tokenizer) into a checkpoint folder once."""
    from .stacks import tiny_tokenizer

    if not (folder / _TOKENIZER_FILE).is_file():
        tiny_tokenizer().save_pretrained(str(folder))


def build_unsloth_model(raw_config: dict[str, Any] | None, setup: TrainingSetup, *, model_path: str | Path | None,
                        checkpoint_cache: str | Path | None, name: str):  # fmt: skip
    """Load (4-bit for QLoRA) and wrap (LoRA) the model through Unsloth on cuda:0 -> build.BuiltModel."""
    import torch

    from .build import TORCH_DTYPES, BuiltModel, ensure_checkpoint, param_counts_of
    from .environment import default_checkpoint_cache

    if setup.attn == "eager":
        raise MeasurementError("--stack unsloth uses its own attention; accepted: --attn sdpa|flash")
    if model_path is None:
        if raw_config is None:
            raise MeasurementError("--stack unsloth needs a config dict or a model_path")
        model_path = ensure_checkpoint(raw_config, checkpoint_cache or default_checkpoint_cache(), name=name)
    folder = Path(model_path)
    ensure_tokenizer(folder)
    from unsloth import FastLanguageModel

    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(folder), dtype=TORCH_DTYPES[setup.dtype], **load_kwargs(setup)
    )
    if setup.method in ("lora", "qlora"):
        model = FastLanguageModel.get_peft_model(model, **peft_kwargs(setup))
    total, trainable = param_counts_of(model)
    extra: dict[str, Any] = {
        "checkpoint": str(folder),
        "unsloth_gradient_checkpointing": str(getattr(model, "_unsloth_gradient_checkpointing", None)),
        "trainable_dtype": str(next((p.dtype for p in model.parameters() if p.requires_grad), torch.float32)),
    }
    embedding = model.get_input_embeddings().weight
    extra["embedding_device"] = embedding.device.type  # "cpu" when Unsloth offloaded it (offload_embedding="auto")
    return BuiltModel(model=model, params_total=total, params_trainable=trainable, extra=extra)
