"""A LLaMA-Factory YAML (llamafactory-cli train FILE) -> setup values.

Key names and defaults are LLaMA-Factory's own (llamafactory 0.9.5, hiyouga/LLaMA-Factory
src/llamafactory/):

| LLaMA-Factory key (file) | default | vramplan |
|---|---|---|
| model_name_or_path (hparams/model_args.py) | required | --model |
| finetuning_type (hparams/finetuning_args.py) | lora | --method full / lora (freeze, oft: not modelled) |
| quantization_bit, quantization_method, quantization_type, double_quantization (model_args.py QuantizationArguments) | none, bnb, nf4, true | --method qlora, --quant, --double-quant |
| lora_rank, lora_alpha, lora_dropout, lora_target (finetuning_args.py LoraArguments) | 8, 2 x rank, 0.0, all | --lora-rank, --lora-alpha, --lora-dropout, --lora-targets |
| cutoff_len, packing, neat_packing (hparams/data_args.py) | 2048, false (sft) | --seq-len, --packing |
| per_device_train_batch_size, gradient_accumulation_steps, optim, bf16, fp16, deepspeed (transformers Seq2SeqTrainingArguments) | 8, 1, adamw_torch_fused, false, false, none | --batch-size, --grad-accum, --optimizer, --dtype, --parallel/--offload |
| disable_gradient_checkpointing (model_args.py; model/model_utils/checkpointing.py enables it otherwise, whatever gradient_checkpointing says) | false | --grad-ckpt on unless disabled |
| flash_attn (model_args.py, extras/constants.py AttentionFunction) | auto | --attn (auto: transformers' sdpa) |
| enable_liger_kernel, use_unsloth (model_args.py) | false | --liger, --stack unsloth |
| pure_bf16 (finetuning_args.py) | false | fp32 trainable parameters unless set (model/adapter.py) |

LLaMA-Factory trains with its CustomSeq2SeqTrainer (a transformers Trainer): stack hf.
Its model/adapter.py casts trainable parameters to fp32 unless pure_bf16 (or ZeRO-3 for full
tuning): a full fine-tune with bf16 therefore holds fp32 weights under bf16 autocast (--dtype fp32).
"""

from pathlib import Path
from typing import Any

from .reading import Reading, as_bool, as_float, as_int
from .shared_keys import deepspeed_value, lora_targets_value, optimizer_value

MARKERS = ("model_name_or_path", "finetuning_type", "cutoff_len", "quantization_bit", "lora_target")

#: flash_attn values (extras/constants.py AttentionFunction) -> --attn
FLASH_ATTN = {"auto": "sdpa", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash", "fa3": "flash"}

NOT_MODELLED = {
    "additional_target": "fully trained extra modules (weights, gradients, optimizer states) are not counted",
    "use_dora": "DoRA's magnitude vectors and extra activations are not modelled",
    "use_galore": "GaLore's projected optimizer states are not modelled",
    "use_apollo": "APOLLO's optimizer states are not modelled",
    "use_badam": "BAdam's block-wise training is not modelled",
    "use_adam_mini": "Adam-mini's reduced states are not modelled",
    "use_muon": "the Muon optimizer is not modelled",
    "use_llama_pro": "LLaMA Pro's expanded blocks are not modelled",
    "use_unsloth_gc": "Unsloth's offloaded gradient checkpointing: checkpoints are counted on the GPU (an over-estimate)",
    "upcast_layernorm": "fp32 layer norms are not modelled",
    "upcast_lmhead_output": "the fp32 lm_head output is not modelled",
    "shift_attn": "S^2-Attn shifted attention is not modelled",
    "mixture_of_depths": "mixture-of-depths is not modelled",
}


def read(doc: dict[str, Any], r: Reading, base: Path) -> None:
    """Fill `r` from a LLaMA-Factory config dict. Raises ConfigFileError on a malformed value."""
    model = doc.get("model_name_or_path")
    if not isinstance(model, str) or not model.strip():
        raise r.fail("model_name_or_path: accepted: a catalog name, an HF id or a path to the model")
    r.model = model.strip()
    v = r.values
    stage = doc.get("stage", "sft")
    if stage not in ("sft", "pt"):
        r.note(f"stage {stage}: preference / RL training (pairs, reference or reward models) is not modelled: the estimate is for SFT")
    _method(doc, r)
    v["seq_len"] = as_int(r, "cutoff_len", doc.get("cutoff_len", 2048))
    v["batch_size"] = as_int(r, "per_device_train_batch_size", doc.get("per_device_train_batch_size", 8))
    v["grad_accum"] = as_int(r, "gradient_accumulation_steps", doc.get("gradient_accumulation_steps", 1))
    v["grad_ckpt"] = not as_bool(r, "disable_gradient_checkpointing", doc.get("disable_gradient_checkpointing", False))
    optimizer_value(r, "optim", doc.get("optim") or "adamw_torch_fused")
    if doc.get("deepspeed"):
        deepspeed_value(r, "deepspeed", doc["deepspeed"], base)
    v["dtype"] = _dtype(doc, r)
    flash = str(doc.get("flash_attn", "auto")).strip().lower()
    if flash not in FLASH_ATTN:
        r.problem("attn", f"flash_attn {flash!r}: accepted: {' | '.join(FLASH_ATTN)} (or give --attn)")
    else:
        v["attn"] = FLASH_ATTN[flash]
    packing = doc.get("packing")
    v["packing"] = (stage == "pt") if packing is None else as_bool(r, "packing", packing)
    v["packing"] = v["packing"] or as_bool(r, "neat_packing", doc.get("neat_packing", False))
    unsloth = as_bool(r, "use_unsloth", doc.get("use_unsloth", False))
    liger = as_bool(r, "enable_liger_kernel", doc.get("enable_liger_kernel", False))
    v["stack"] = "unsloth" if unsloth else "hf"
    v["liger"] = liger and not unsloth
    if liger and unsloth:
        r.note("enable_liger_kernel with use_unsloth: Unsloth's own kernels assumed, Liger ignored")
    for key, why in NOT_MODELLED.items():
        if doc.get(key):
            r.note(f"{key}: {why}")


def _method(doc: dict[str, Any], r: Reading) -> None:
    v = r.values
    kind = str(doc.get("finetuning_type", "lora")).strip().lower()
    if kind not in ("lora", "full"):
        r.problem("method", f"finetuning_type {kind} is not modelled; accepted: lora | full (or give --method)")
        return
    bits = doc.get("quantization_bit")
    if bits is not None:
        method = str(doc.get("quantization_method", "bnb")).lower()
        if method != "bnb":
            r.problem("method", f"quantization_method {method} is not modelled; accepted: bnb (or give --method)")
            return
        bits = as_int(r, "quantization_bit", bits)
        if bits not in (4, 8):
            r.problem("quant", f"quantization_bit {bits}: accepted: 4 | 8 (bitsandbytes)")
            return
        if kind == "full":
            raise r.fail("quantization_bit with finetuning_type full: LLaMA-Factory refuses it (quantized models train with LoRA)")
        v["method"] = "qlora"
        v["quant"] = str(doc.get("quantization_type", "nf4")).lower() if bits == 4 else "int8"
        v["double_quant"] = as_bool(r, "double_quantization", doc.get("double_quantization", True))
    else:
        v["method"] = kind
    if kind == "lora":
        v["lora_rank"] = as_int(r, "lora_rank", doc.get("lora_rank", 8))
        if doc.get("lora_alpha") is not None:
            v["lora_alpha"] = as_float(r, "lora_alpha", doc["lora_alpha"])
        v["lora_dropout"] = as_float(r, "lora_dropout", doc.get("lora_dropout", 0.0))
        lora_targets_value(r, "lora_target", doc.get("lora_target", "all"), all_words=("all", "all-linear"))
        if as_bool(r, "pure_bf16", doc.get("pure_bf16", False)):
            r.note("pure_bf16: LoRA weights stay in bf16; fp32 adapters are assumed (an over-estimate of the adapter terms)")


def _dtype(doc: dict[str, Any], r: Reading) -> str:
    """The dtype the trainable weights end up in (hparams/parser.py compute_dtype, model/adapter.py
    cast_trainable_params_to_fp32): a full fine-tune without pure_bf16 (and not under ZeRO-3) trains
    fp32 weights under bf16/fp16 autocast; otherwise the weights load in the compute dtype."""
    pure = as_bool(r, "pure_bf16", doc.get("pure_bf16", False))
    half = "bf16" if pure or as_bool(r, "bf16", doc.get("bf16", False)) else None
    half = half or ("fp16" if as_bool(r, "fp16", doc.get("fp16", False)) else None)
    if half is None:
        r.note("neither bf16 nor fp16: LLaMA-Factory infers the compute dtype from the model (bf16 assumed)")
        half = "bf16"
    if r.values.get("method") == "full" and not pure and r.values.get("parallel") != "zero3":
        r.note("finetuning_type full without pure_bf16: LLaMA-Factory casts the trainable weights to fp32 (--dtype fp32)")
        return "fp32"
    return half

