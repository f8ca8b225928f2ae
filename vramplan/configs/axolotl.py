"""An Axolotl YAML -> setup values.

Key names and defaults are Axolotl's own (axolotl 0.19, axolotl-ai-cloud/axolotl src/axolotl/):

| Axolotl key (file) | default | vramplan |
|---|---|---|
| base_model, base_model_config (utils/schemas/model.py) | required | --model (base_model_config wins) |
| adapter, load_in_4bit, load_in_8bit (utils/schemas/peft.py) | none, false, false | --method full / lora / qlora, --quant |
| bnb_config_kwargs.bnb_4bit_quant_type / _use_double_quant (loaders/model.py) | nf4, true | --quant, --double-quant |
| lora_r, lora_alpha, lora_dropout (peft.py) | none, none, 0.0 | --lora-rank (PEFT's 8 when absent), --lora-alpha, --lora-dropout |
| lora_target_modules, lora_target_linear (peft.py) | none | --lora-targets |
| sequence_len (utils/schemas/config.py) | 512 | --seq-len |
| micro_batch_size, gradient_accumulation_steps, batch_size (utils/schemas/training.py) | 1, 1, none | --batch-size, --grad-accum (batch_size // micro_batch_size as normalize_config does) |
| gradient_checkpointing (config.py) | false | --grad-ckpt ("offload": on, offload noted) |
| optimizer (training.py) | adamw_torch_fused | --optimizer |
| bf16, fp16, bfloat16, float16, load_in_8bit (utils/config/__init__.py: cfg.torch_dtype) | bf16 "auto" | --dtype |
| attn_implementation, flash_attention, sdp_attention, eager_attention, ... (config.py, enums.py LEGACY_ATTN_FLAG_TO_IMPL) | transformers' sdpa | --attn |
| sample_packing (config.py) | false | --packing |
| plugins + liger_fused_linear_cross_entropy, liger_rms_norm, ... (integrations/liger/args.py) | off | --liger |
| deepspeed (config.py), fsdp / fsdp_config / fsdp_version (utils/schemas/fsdp.py) | none | --parallel, --offload |

Axolotl runs its own AxolotlTrainer (a transformers Trainer) with the model's own loss: stack hf.
Keys that change memory but are not modelled are listed in NOT_MODELLED and noted when set.
"""

from pathlib import Path
from typing import Any

from .reading import Reading, as_bool, as_float, as_int
from .shared_keys import attn_value, deepspeed_value, fsdp_value, lora_targets_value, optimizer_value

#: keys whose presence tells an Axolotl file from other YAMLs
MARKERS = ("base_model", "micro_batch_size", "sequence_len", "lora_target_linear", "sample_packing")

#: Axolotl's legacy attention switches, most specific first (utils/schemas/enums.py LEGACY_ATTN_FLAG_TO_IMPL)
LEGACY_ATTN = (
    ("xformers_attention", "xformers"),
    ("sage_attention", "sage"),
    ("flex_attention", "flex_attention"),
    ("flash_attention", "flash_attention_2"),
    ("sdp_attention", "sdpa"),
    ("eager_attention", "eager"),
)

#: Liger plugin switches (integrations/liger/args.py LigerArgs); the fused linear cross-entropy is the one
#: that removes the (b, s, V) logits, the others are the kernels `--liger` also assumes
LIGER_KEYS = ("liger_fused_linear_cross_entropy", "liger_cross_entropy", "liger_rms_norm", "liger_swiglu",
              "liger_glu_activation", "liger_rope", "liger_layer_norm")  # fmt: skip
LIGER_PLUGIN = "axolotl.integrations.liger"

#: key -> what a truthy value changes that vramplan does not model
NOT_MODELLED = {
    "cut_cross_entropy": "Cut Cross-Entropy never materializes the (b, s, V) logits; the loss term assumes the model's own loss (an over-estimate)",
    "chunked_cross_entropy": "chunked cross-entropy lowers the loss term; the model's own loss is assumed (an over-estimate)",
    "activation_offloading": "activations offloaded to CPU are counted on the GPU (an over-estimate)",
    "layer_offloading": "layer parameters offloaded to CPU are counted on the GPU (an over-estimate)",
    "tiled_mlp": "tiled MLP activations are not modelled (an over-estimate of the MLP activations)",
    "lora_mlp_kernel": "Axolotl's LoRA MLP kernel changes saved activations; not modelled",
    "lora_qkv_kernel": "Axolotl's LoRA QKV kernel changes saved activations; not modelled",
    "lora_o_kernel": "Axolotl's LoRA O kernel changes saved activations; not modelled",
    "lora_modules_to_save": "fully trained copies of these modules (weights, gradients, optimizer states) are not counted",
    "lora_target_parameters": "LoRA on expert parameters is not counted",
    "peft_use_dora": "DoRA's magnitude vectors and extra activations are not modelled",
    "unfrozen_parameters": "partial unfreezing is not modelled (full fine-tuning of every parameter is assumed)",
    "relora": "ReLoRA restarts are not modelled",
    "rl": "preference / RL training (pairs, a reference model, generations) is not modelled: the estimate is for SFT",
    "torch_compile": "torch.compile changes activation memory; not modelled",
    "sequence_parallel_degree": "sequence parallelism splits activations across GPUs; not modelled",
    "context_parallel_size": "context parallelism splits activations across GPUs; not modelled",
    "fp8": "FP8 training is not modelled (bf16 assumed)",
    "gptq": "GPTQ-quantized weights are not modelled",
    "tensor_parallel_size": "tensor parallelism is not modelled",
}
#: degree keys: only a value above 1 changes anything
DEGREES = ("sequence_parallel_degree", "context_parallel_size", "tensor_parallel_size")


def read(doc: dict[str, Any], r: Reading, base: Path) -> None:
    """Fill `r` from an Axolotl config dict. Raises ConfigFileError on a malformed value."""
    model = doc.get("base_model_config") or doc.get("base_model")
    if not isinstance(model, str) or not model.strip():
        raise r.fail("base_model: accepted: a catalog name, an HF id or a path to the model")
    r.model = model.strip()
    v = r.values
    _method(doc, r)
    v["seq_len"] = as_int(r, "sequence_len", doc.get("sequence_len", 512))
    micro_given = doc.get("micro_batch_size")
    v["batch_size"] = micro = as_int(r, "micro_batch_size", 1 if micro_given is None else micro_given)
    if doc.get("gradient_accumulation_steps") is not None:
        v["grad_accum"] = as_int(r, "gradient_accumulation_steps", doc["gradient_accumulation_steps"])
    elif doc.get("batch_size") and micro > 0:
        v["grad_accum"] = max(1, as_int(r, "batch_size", doc["batch_size"]) // micro)
    else:
        v["grad_accum"] = 1
    ckpt = doc.get("gradient_checkpointing", False)
    if isinstance(ckpt, str) and ckpt in ("offload", "offload_disk"):
        v["grad_ckpt"] = True
        r.note(f"gradient_checkpointing {ckpt}: checkpoints offloaded off the GPU are counted on it (an over-estimate)")
    else:
        v["grad_ckpt"] = as_bool(r, "gradient_checkpointing", ckpt)
    optimizer_value(r, "optimizer", doc.get("optimizer") or "adamw_torch_fused")
    v["dtype"] = _dtype(doc, r)
    _attention(doc, r)
    v["packing"] = as_bool(r, "sample_packing", doc.get("sample_packing", False))
    v["stack"] = "hf"
    _liger(doc, r)
    if doc.get("deepspeed"):
        deepspeed_value(r, "deepspeed", doc["deepspeed"], base)
    fsdp_value(r, "fsdp", doc.get("fsdp"), doc.get("fsdp_config"))
    for key, why in NOT_MODELLED.items():
        value = doc.get(key)
        if (_above_one(value) if key in DEGREES else bool(value)):
            r.note(f"{key}: {why}")
    for key in doc:
        if key.startswith("unsloth_") and doc[key]:
            r.note(f"{key}: Unsloth's patched kernels are not modelled on the hf stack")


def _above_one(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 1


def _method(doc: dict[str, Any], r: Reading) -> None:
    """adapter + load_in_4bit / load_in_8bit -> method, quant (loaders/model.py builds the
    BitsAndBytesConfig: nf4 with double quantization unless bnb_config_kwargs says otherwise)."""
    v = r.values
    adapter = str(doc.get("adapter") or "").strip().lower()
    four = as_bool(r, "load_in_4bit", doc.get("load_in_4bit", False))
    eight = as_bool(r, "load_in_8bit", doc.get("load_in_8bit", False))
    if not adapter:
        v["method"] = "full"
        if four or eight:
            r.note("load_in_4bit/load_in_8bit without an adapter: full fine-tuning of quantized weights is not possible; modelled as full")
        return
    if adapter not in ("lora", "qlora"):
        r.problem("method", f"adapter {adapter!r} is not modelled; accepted: lora | qlora (or give --method)")
        return
    kwargs = doc.get("bnb_config_kwargs") or {}
    if adapter == "qlora" or four:
        v["method"], v["quant"] = "qlora", str(kwargs.get("bnb_4bit_quant_type", "nf4"))
        v["double_quant"] = as_bool(r, "bnb_4bit_use_double_quant", kwargs.get("bnb_4bit_use_double_quant", True))
    elif eight:
        v["method"], v["quant"] = "qlora", "int8"
    else:
        v["method"] = "lora"
    if doc.get("lora_r") is None:
        r.note("lora_r not set: PEFT's default rank 8")
    v["lora_rank"] = as_int(r, "lora_r", 8 if doc.get("lora_r") is None else doc["lora_r"])
    if doc.get("lora_alpha") is not None:
        v["lora_alpha"] = as_float(r, "lora_alpha", doc["lora_alpha"])
    v["lora_dropout"] = as_float(r, "lora_dropout", doc.get("lora_dropout") or 0.0)
    if as_bool(r, "lora_target_linear", doc.get("lora_target_linear", False)):
        v["lora_targets"] = "all-linear"
    elif doc.get("lora_target_modules"):
        lora_targets_value(r, "lora_target_modules", doc["lora_target_modules"], all_words=("all-linear", "all_linear"))
    else:
        r.problem("lora_targets", "neither lora_target_linear nor lora_target_modules is set (give --lora-targets)")


def _dtype(doc: dict[str, Any], r: Reading) -> str:
    """cfg.torch_dtype as utils/config/__init__.py sets it: bf16 when bf16/bfloat16 (bf16 "auto"
    is the default: bf16 on Ampere and newer), fp16 when fp16/float16 or load_in_8bit, else fp32."""
    bf16 = doc.get("bf16", "auto")
    if bf16 == "auto":
        if not doc.get("fp16") and not doc.get("float16"):
            r.note("bf16 auto: bf16 assumed (Axolotl picks it on GPUs that support it, fp32 elsewhere)")
            return "bf16"
        bf16 = False
    if as_bool(r, "bf16", bf16) or as_bool(r, "bfloat16", doc.get("bfloat16", False)):
        return "bf16"
    if doc.get("fp16") or doc.get("float16") or doc.get("load_in_8bit"):
        return "fp16"
    return "fp32"


def _attention(doc: dict[str, Any], r: Reading) -> None:
    if doc.get("attn_implementation"):
        attn_value(r, "attn_implementation", doc["attn_implementation"])
        return
    for key, impl in LEGACY_ATTN:
        if as_bool(r, key, doc.get(key, False)):
            attn_value(r, key, impl)
            return
    r.values["attn"] = "sdpa"  # none set: transformers' default implementation


def _liger(doc: dict[str, Any], r: Reading) -> None:
    """--liger when the Liger plugin is listed and its fused linear cross-entropy is on; Axolotl reads
    the liger_* keys only through the plugin (integrations/liger/args.py)."""
    plugins = [str(p) for p in doc.get("plugins") or []]
    listed = any(p.startswith(LIGER_PLUGIN) for p in plugins)
    on = [k for k in LIGER_KEYS if doc.get(k)]
    if on and not listed:
        r.values["liger"] = False
        r.note(f"{', '.join(on)} set without the {LIGER_PLUGIN}.LigerPlugin plugin: Axolotl ignores them, so does vramplan")
        return
    r.values["liger"] = listed and bool(doc.get("liger_fused_linear_cross_entropy"))
    if listed and on and not r.values["liger"]:
        r.note(f"{', '.join(on)} without liger_fused_linear_cross_entropy: partial Liger kernels are not modelled")
