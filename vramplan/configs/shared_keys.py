"""Vocabulary every format shares (they all end in transformers' TrainingArguments): optimizer names,
attention implementations, LoRA targets, DeepSpeed JSON and FSDP settings -> vramplan's setup values.
"""

import json
from pathlib import Path
from typing import Any

from ..specs import OPTIMIZERS
from .reading import Reading, as_bool, relative_path

#: transformers `OptimizerNames` (transformers/training_args.py) -> vramplan --optimizer. Axolotl's
#: `optimizer` and LLaMA-Factory's `optim` pass these names to TrainingArguments unchanged.
OPTIMIZER_NAMES: dict[str, str] = {
    "adamw_torch_fused": "adamw_torch_fused",
    "adamw_torch": "adamw_torch",
    "adamw_hf": "adamw_torch",  # transformers < 4.47: its own AdamW, same two fp32 states
    "adamw_8bit": "adamw_8bit",  # bitsandbytes AdamW(optim_bits=8)
    "adamw_bnb_8bit": "adamw_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "paged_adamw": "paged_adamw_32bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}

#: attention implementation names (transformers `attn_implementation`, Axolotl enums.py
#: CANONICAL_ATTN_IMPLS and hub kernels) -> vramplan --attn; None: modelled as flash, with a note
ATTN_IMPLS: dict[str, str | None] = {
    "eager": "eager",
    "sdpa": "sdpa",
    "flash_attention_2": "flash",
    "flash_attention_3": "flash",
    "flash_attention_4": "flash",
    "kernels-community/flash-attn2": "flash",
    "kernels-community/flash-attn3": "flash",
    "flash_attention_torch": None,
    "flex_attention": None,
    "xformers": None,
    "sage": None,
    "fp8": None,
}


def optimizer_value(r: Reading, key: str, name: Any) -> None:
    """Set `optimizer` from a TrainingArguments optimizer name, or record why it cannot be modelled."""
    mapped = OPTIMIZER_NAMES.get(str(name).strip().lower())
    if mapped is None:
        r.problem("optimizer", f"{key} {name!r} is not modelled; accepted: {' | '.join(OPTIMIZER_NAMES)} "
                               f"(or give --optimizer {'|'.join(OPTIMIZERS)})")  # fmt: skip
        return
    r.values["optimizer"] = mapped


def attn_value(r: Reading, key: str, name: str) -> None:
    """Set `attn` from an attention implementation name."""
    impl = str(name).strip()
    if impl not in ATTN_IMPLS:
        r.problem("attn", f"{key} {impl!r} is not modelled; accepted: {' | '.join(ATTN_IMPLS)} (or give --attn)")
        return
    mapped = ATTN_IMPLS[impl]
    if mapped is None:
        r.note(f"{key} {impl}: modelled as flash attention (no s x s score matrix; its own buffers are not modelled)")
        mapped = "flash"
    r.values["attn"] = mapped


def lora_targets_value(r: Reading, key: str, targets: Any, *, all_words: tuple[str, ...] = ("all-linear",)) -> None:
    """Set `lora_targets` from a module list, a comma string, or a word meaning every linear layer.
    A bare string that is neither (PEFT reads it as a regular expression) cannot be modelled."""
    if isinstance(targets, str):
        word = targets.strip()
        if word in all_words:
            r.values["lora_targets"] = "all-linear"
            return
        parts = [p.strip() for p in word.split(",") if p.strip()]
        if all(p.replace("_", "").replace(".", "").isalnum() for p in parts) and parts:
            r.values["lora_targets"] = ",".join(parts)
            return
        r.problem("lora_targets", f"{key} {word!r} is a regular expression, not modelled; give --lora-targets a,b")
        return
    if isinstance(targets, (list, tuple, set)) and targets and all(isinstance(t, str) for t in targets):
        names = sorted(targets) if isinstance(targets, set) else list(targets)
        r.values["lora_targets"] = "all-linear" if names == ["all-linear"] else ",".join(names)
        return
    raise r.fail(f"{key} {targets!r}: accepted: a list of module names or all-linear")


def deepspeed_value(r: Reading, key: str, spec: Any, base: Path) -> None:
    """Set `parallel` and `offload` from a DeepSpeed config (a dict, or a JSON file path) the way
    transformers' HfDeepSpeedConfig reads it: zero_optimization.stage, offload_optimizer.device and
    offload_param.device ("cpu" or "nvme" move that state off the GPU)."""
    if isinstance(spec, str):
        path = relative_path(spec, base)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            r.problem("parallel", f"{key} {path} not found (give --parallel zero2|zero3 and --offload)")
            return
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise r.fail(f"{key} {path}: not a readable DeepSpeed JSON ({err})") from None
    if not isinstance(spec, dict):
        raise r.fail(f"{key}: accepted: a DeepSpeed JSON file path or object")
    zero = spec.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise r.fail(f"{key}: zero_optimization must be an object")
    stage = zero.get("stage", 0)
    if stage in (0, "0"):
        r.values["parallel"] = "ddp"
    elif stage in (1, "1"):
        r.values["parallel"] = "ddp"
        r.note(f"{key}: ZeRO stage 1 (optimizer states sharded) modelled as DDP: an over-estimate of the optimizer states")
    elif stage in (2, "2"):
        r.values["parallel"] = "zero2"
    elif stage in (3, "3"):
        r.values["parallel"] = "zero3"
    else:
        r.problem("parallel", f"{key}: zero_optimization.stage {stage!r}: accepted: 0 | 1 | 2 | 3")
        return
    off_opt = _device(zero.get("offload_optimizer"))
    off_param = _device(zero.get("offload_param"))
    if off_param and r.values["parallel"] == "zero3":
        r.values["offload"] = "all"
    elif off_opt and r.values["parallel"] in ("zero2", "zero3"):
        r.values["offload"] = "optimizer"
    if "nvme" in (off_opt, off_param):
        r.note(f"{key}: NVMe offload modelled as CPU offload (same GPU memory)")
    if zero.get("zero_quantized_weights") or zero.get("zero_quantized_gradients"):
        r.note(f"{key}: ZeRO++ quantized weights/gradients are not modelled")


def _device(section: Any) -> str | None:
    if isinstance(section, dict) and str(section.get("device", "none")).lower() in ("cpu", "nvme"):
        return str(section["device"]).lower()
    return None


def fsdp_value(r: Reading, key: str, fsdp: Any, fsdp_config: Any) -> None:
    """Set `parallel`, `offload` (and `grad_ckpt`) from TrainingArguments' `fsdp` options
    ("full_shard", "shard_grad_op", "hybrid_shard", "offload", "auto_wrap"; a list or a space-separated
    string; True means full_shard) and `fsdp_config` (offload_params / fsdp_offload_params,
    activation_checkpointing, reshard_after_forward;
    Axolotl's utils/schemas/fsdp.py FSDPConfig and transformers' fsdp_config keys)."""
    if isinstance(fsdp, bool):
        fsdp = ["full_shard"] if fsdp else []
    options = fsdp.split() if isinstance(fsdp, str) else list(fsdp or [])
    config = fsdp_config if isinstance(fsdp_config, dict) else {}
    if not options and not config:
        return
    keep_gathered = config.get("reshard_after_forward") is False  # FSDP2: SHARD_GRAD_OP's behaviour
    if "shard_grad_op" in options or "hybrid_shard_zero2" in options or keep_gathered:
        r.values["parallel"] = "zero2"
        r.note(f"{key} shard_grad_op / reshard_after_forward false: modelled as ZeRO-2 (parameters gathered, "
               f"gradients and states sharded)")  # fmt: skip
    else:
        r.values["parallel"] = "fsdp"
        if "hybrid_shard" in options:
            r.note(f"{key} hybrid_shard: modelled as full sharding over all GPUs (an under-estimate across nodes)")
    offload = "offload" in options
    for name in ("offload_params", "fsdp_offload_params", "cpu_offload"):
        if name in config:
            offload = offload or as_bool(r, f"fsdp_config.{name}", config[name])
    if offload and r.values["parallel"] == "fsdp":
        r.values["offload"] = "all"
    for name in ("activation_checkpointing", "fsdp_activation_checkpointing"):
        if as_bool(r, f"fsdp_config.{name}", config.get(name, False)):
            r.values["grad_ckpt"] = True
