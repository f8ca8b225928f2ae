"""A PEFT adapter_config.json (LoraConfig.save_pretrained) and a model config.json's
`quantization_config` -> setup values.

| key (file) | default | vramplan |
|---|---|---|
| peft_type (peft/config.py) | LORA | LoRA only |
| r, lora_alpha, lora_dropout, target_modules (peft/tuners/lora/config.py LoraConfig) | 8, 8, 0.0, none | --lora-rank, --lora-alpha, --lora-dropout, --lora-targets |
| base_model_name_or_path (peft/config.py) | none | --model |
| quantization_config.quant_method, load_in_4bit, load_in_8bit, bnb_4bit_quant_type, bnb_4bit_use_double_quant (transformers/utils/quantization_config.py BitsAndBytesConfig) | bitsandbytes, false, false, fp4, false | --method qlora, --quant, --double-quant |

An adapter means LoRA (--method lora); a bitsandbytes-quantized model makes it QLoRA.
"""

from typing import Any

from .reading import Reading, as_bool, as_float, as_int
from .shared_keys import lora_targets_value

MARKERS = ("peft_type", "target_modules", "lora_alpha")

NOT_MODELLED = {
    "use_dora": "DoRA's magnitude vectors and extra activations are not modelled",
    "modules_to_save": "fully trained copies of these modules (weights, gradients, optimizer states) are not counted",
    "layers_to_transform": "LoRA on only some layers: every layer is counted (an over-estimate)",
    "rank_pattern": "per-module ranks: r is counted for every target",
    "target_parameters": "LoRA on expert parameters is not counted",
    "trainable_token_indices": "trainable token rows are not counted",
}


def read(doc: dict[str, Any], r: Reading) -> None:
    """Fill `r` from a PEFT config dict (adapter_config.json or LoraConfig.to_dict())."""
    peft_type = str(doc.get("peft_type", "LORA")).upper().removeprefix("PEFTTYPE.")
    if peft_type != "LORA":
        r.problem("method", f"peft_type {peft_type} is not modelled; accepted: LORA (or give --method)")
        return
    v = r.values
    v["method"] = "lora"
    base = doc.get("base_model_name_or_path")
    if isinstance(base, str) and base.strip():
        r.model = base.strip()
    v["lora_rank"] = as_int(r, "r", doc.get("r", 8))
    if doc.get("lora_alpha") is not None:
        v["lora_alpha"] = as_float(r, "lora_alpha", doc["lora_alpha"])
    v["lora_dropout"] = as_float(r, "lora_dropout", doc.get("lora_dropout", 0.0))
    targets = doc.get("target_modules")
    if targets is None:
        r.problem("lora_targets", "target_modules null: PEFT picks per-architecture defaults; give --lora-targets")
    else:
        lora_targets_value(r, "target_modules", targets, all_words=("all-linear",))
    if str(doc.get("bias", "none")) != "none":
        r.note(f"bias {doc['bias']}: trained biases are not counted")
    for key, why in NOT_MODELLED.items():
        if doc.get(key):
            r.note(f"{key}: {why}")


def read_quantization(config: dict[str, Any], r: Reading) -> None:
    """A model config's `quantization_config` (as save_pretrained writes it) -> QLoRA settings; nothing
    when the model is not quantized. Other quantization methods (GPTQ, AWQ, FP8 ...) are problems."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return
    method = str(quant.get("quant_method", "")).lower().removeprefix("quantizationmethod.")
    if method != "bitsandbytes":
        r.problem("method", f"quantization_config quant_method {method or '?'} is not modelled; accepted: bitsandbytes")
        return
    if as_bool(r, "load_in_4bit", quant.get("load_in_4bit", False)):
        r.values.update(method="qlora", quant=str(quant.get("bnb_4bit_quant_type", "fp4")).lower())
        r.values["double_quant"] = as_bool(r, "bnb_4bit_use_double_quant", quant.get("bnb_4bit_use_double_quant", False))
        dq = "with" if r.values["double_quant"] else "without"
        r.note(f"quantization_config: bitsandbytes 4-bit {r.values['quant']} {dq} double quantization -> QLoRA")
    elif as_bool(r, "load_in_8bit", quant.get("load_in_8bit", False)):
        r.values.update(method="qlora", quant="int8")
        r.note("quantization_config: bitsandbytes 8-bit -> QLoRA int8")
    if quant.get("llm_int8_skip_modules"):
        r.note("llm_int8_skip_modules: modules kept unquantized beyond vramplan's defaults are not modelled")
