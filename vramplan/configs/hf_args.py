"""A TrainingArguments or TRL SFTConfig JSON (as `args.to_json_string()` writes it) -> setup values.

| key (file) | default | vramplan |
|---|---|---|
| per_device_train_batch_size, gradient_accumulation_steps (transformers/training_args.py) | 8, 1 | --batch-size, --grad-accum |
| activation_checkpointing, its alias gradient_checkpointing (training_args.py, transformers 5.24; trl/trainer/sft_config.py) | false; SFTConfig true | --grad-ckpt |
| optim (training_args.py OptimizerNames) | adamw_torch_fused | --optimizer |
| bf16, fp16 (training_args.py; SFTConfig bf16 true unless fp16) | false | --dtype (the weights' dtype is not in the file: assumed to match) |
| use_liger_kernel (training_args.py) | false | --liger |
| deepspeed, fsdp, fsdp_config (training_args.py) | none | --parallel, --offload |
| max_length, packing, padding_free (trl/trainer/sft_config.py) | 1024, false, false | --seq-len, --packing |
| model_init_kwargs.dtype / torch_dtype (sft_config.py) | the checkpoint's | --dtype |

The trainer class decides the stack: the file does not name it, so SFTConfig-only keys
(SFT_KEYS) mean TRL's SFTTrainer (--stack trl); otherwise the transformers Trainer (--stack hf).
TrainingArguments carry no model and, without TRL, no sequence length: give --model and --seq-len.
"""

from pathlib import Path
from typing import Any

from .reading import Reading, as_bool, as_int
from .shared_keys import deepspeed_value, fsdp_value, optimizer_value

#: keys only TRL's SFTConfig has (trl/trainer/sft_config.py), not transformers' TrainingArguments
SFT_KEYS = ("dataset_text_field", "max_length", "packing", "padding_free", "completion_only_loss",
            "assistant_only_loss", "packing_strategy", "eval_packing")  # fmt: skip
#: keys every TrainingArguments JSON has
MARKERS = ("per_device_train_batch_size", "gradient_accumulation_steps", "output_dir", "optim")

#: torch dtype names in model_init_kwargs -> --dtype
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}

NOT_MODELLED = {
    "torch_compile": "torch.compile changes activation memory; not modelled",
    "activation_offloading": "TRL activation offloading: activations are counted on the GPU (an over-estimate)",
    "auto_find_batch_size": "the batch size may be halved at run time on OOM; the given batch is estimated",
    "group_by_length": "length-grouped batches change padding; fixed-length rows are assumed",
}


def is_sft(doc: dict[str, Any]) -> bool:
    return any(k in doc for k in SFT_KEYS)


def read(doc: dict[str, Any], r: Reading, base: Path, *, sft: bool | None = None) -> None:
    """Fill `r` from a TrainingArguments / SFTConfig dict; `sft` None decides from SFT_KEYS (a live
    trainer passes what its class says). Raises ConfigFileError on a malformed value."""
    sft = is_sft(doc) if sft is None else sft
    v = r.values
    v["stack"] = "trl" if sft else "hf"
    v["batch_size"] = as_int(r, "per_device_train_batch_size", doc.get("per_device_train_batch_size", 8))
    v["grad_accum"] = as_int(r, "gradient_accumulation_steps", doc.get("gradient_accumulation_steps", 1))
    key = "activation_checkpointing" if doc.get("activation_checkpointing") is not None else "gradient_checkpointing"
    v["grad_ckpt"] = as_bool(r, key, doc.get(key, sft) if doc.get(key) is not None else sft)
    ckpt_kwargs = doc.get("activation_checkpointing_kwargs") or doc.get("gradient_checkpointing_kwargs") or {}
    if isinstance(ckpt_kwargs, dict) and ckpt_kwargs.get("every_n_layers", 1) not in (1, None):
        r.note(f"checkpointing every_n_layers {ckpt_kwargs['every_n_layers']}: every layer's checkpoint is assumed")
    optimizer_value(r, "optim", doc.get("optim") or "adamw_torch_fused")
    v["liger"] = as_bool(r, "use_liger_kernel", doc.get("use_liger_kernel", False))
    v["dtype"] = _dtype(doc, r, sft)
    if sft:
        length = doc.get("max_length", 1024)
        if length is None:
            r.note("max_length null: SFTTrainer does not truncate; the --seq-len given (default 2048) is estimated")
        else:
            v["seq_len"] = as_int(r, "max_length", length)
        v["packing"] = as_bool(r, "packing", doc.get("packing", False)) or as_bool(
            r, "padding_free", doc.get("padding_free", False)
        )
    elif r.kind != "live":
        r.note("TrainingArguments carry no sequence length: the --seq-len given (default 2048) is estimated")
    if doc.get("deepspeed"):
        deepspeed_value(r, "deepspeed", doc["deepspeed"], base)
    fsdp_value(r, "fsdp", doc.get("fsdp"), doc.get("fsdp_config"))
    for key, why in NOT_MODELLED.items():
        if doc.get(key):
            r.note(f"{key}: {why}")


def _dtype(doc: dict[str, Any], r: Reading, sft: bool) -> str:
    """The weights' dtype: SFTConfig's model_init_kwargs when they say it, else the autocast dtype
    (bf16 / fp16) on the assumption that the model was loaded in it."""
    init = doc.get("model_init_kwargs") or {}
    named = init.get("dtype") or init.get("torch_dtype") if isinstance(init, dict) else None
    if isinstance(named, str) and named.removeprefix("torch.") in DTYPES:
        return DTYPES[named.removeprefix("torch.")]
    half = "fp16" if as_bool(r, "fp16", doc.get("fp16", False)) else None
    half = half or ("bf16" if as_bool(r, "bf16", doc.get("bf16", sft)) else None)
    if half is not None:
        if r.kind != "live":
            r.note(f"weights assumed loaded in {half}, the autocast dtype (the file does not say; give --dtype)")
        return half
    if r.kind == "live":
        r.note("neither bf16 nor fp16: no autocast; activations are modelled under bf16 autocast (an under-estimate "
               "when the weights are fp32)")  # fmt: skip
    else:
        r.note("neither bf16 nor fp16: the Trainer computes in the weights' dtype; bf16 weights assumed")
    return "bf16"
