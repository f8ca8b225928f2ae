"""A live training job (model, TrainingArguments / SFTConfig, trainer class, dataset) -> a Reading.

The same readers as the files: `args.to_dict()` goes through hf_args, the model's PEFT config
(`LoraConfig.to_dict()`) through peft_adapter, `model.config.to_dict()`'s quantization_config
through read_quantization. Duck-typed: nothing here imports torch, transformers or peft.
"""

from pathlib import Path
from typing import Any

from . import hf_args, peft_adapter
from .reading import Reading
from .shared_keys import attn_value

#: torch dtype names -> --dtype
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
#: rows of the training set scanned for the longest input_ids when no length is configured
SCAN_ROWS = 2048


def read_live(model: Any, args: Any, trainer_class: type | None = None, dataset: Any = None,
              *, seq_len: int | None = None) -> tuple[dict[str, Any], Reading]:  # fmt: skip
    """(the base model's config dict, the Reading of the job). `seq_len` overrides every other source
    of the sequence length. Raises ConfigFileError for settings that cannot be read."""
    r = Reading(source="trainer", kind="live")
    base = _base_model(model)
    config = base.config.to_dict()
    classes = [c.__name__ for c in (trainer_class.__mro__ if trainer_class else ())]
    sft = "SFTTrainer" in classes or type(args).__name__ == "SFTConfig"
    hf_args.read(args.to_dict(), r, Path.cwd(), sft=sft)
    if any("unsloth" in (c.__module__ or "") for c in (*(trainer_class.__mro__ if trainer_class else ()), type(base))):
        r.values["stack"], r.values["liger"] = "unsloth", False
    peft = _active_peft_config(model)
    if peft is not None:
        peft_adapter.read(peft, r)
    else:
        r.values["method"] = "full"
    peft_adapter.read_quantization(config, r)
    r.values["dtype"] = _weights_dtype(model, base, config, r.values.get("method"))
    impl = getattr(base.config, "_attn_implementation", None)
    if impl:
        attn_value(r, "attn_implementation", impl)
    ckpt = getattr(type(base), "is_activation_checkpointing", None) and base.is_activation_checkpointing
    if ckpt or (ckpt is None and getattr(base, "is_gradient_checkpointing", False)):
        r.values["grad_ckpt"] = True
    world = getattr(args, "world_size", 1)
    if isinstance(world, int) and world > 1:  # a distributed launch: its GPU count, DDP unless ZeRO/FSDP
        r.values["num_gpus"] = world
        r.values.setdefault("parallel", "ddp")
    if seq_len is not None:
        r.values["seq_len"] = seq_len
    elif "seq_len" not in r.values:
        longest = longest_row(dataset)
        if longest is None:
            r.note("no max_length and no input_ids to measure: the default --seq-len 2048 is estimated (pass seq_len=)")
        else:
            r.values["seq_len"] = longest
            r.note(f"sequence length {longest}: the longest input_ids among the first {SCAN_ROWS} training rows")
    return config, r


def _base_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (PeftModel.get_base_model())."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def _active_peft_config(model: Any) -> dict[str, Any] | None:
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = getattr(model, "active_adapter", None)
    active = active[0] if isinstance(active, (list, tuple)) and active else active
    config = configs.get(active) if isinstance(active, str) and active in configs else next(iter(configs.values()))
    return config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))


def _weights_dtype(model: Any, base: Any, config: dict[str, Any], method: str | None) -> str:
    """The dtype the weights were loaded in: a full fine-tune's trainable parameters; for (Q)LoRA the
    config's dtype (what from_pretrained recorded; QLoRA: bnb_4bit_compute_dtype), else the first
    floating frozen parameter."""
    quant = config.get("quantization_config") or {}
    if method == "full":
        names = [str(p.dtype) for p in model.parameters() if p.requires_grad]
    elif method == "qlora" and isinstance(quant, dict) and quant.get("bnb_4bit_compute_dtype"):
        names = [str(quant["bnb_4bit_compute_dtype"])]  # what bitsandbytes computes and keeps the rest in
    else:
        recorded = config.get("dtype") or config.get("torch_dtype")
        names = [str(recorded)] if recorded else [str(p.dtype) for p in base.parameters() if p.is_floating_point()]
    name = names[0].removeprefix("torch.") if names else "bfloat16"
    return DTYPES.get(name, "bf16")


def longest_row(dataset: Any, limit: int = SCAN_ROWS) -> int | None:
    """The longest `input_ids` among the first `limit` rows of a map-style dataset, else None."""
    try:
        rows = min(len(dataset), limit)
    except TypeError:
        return None
    longest = 0
    for i in range(rows):
        row = dataset[i]
        ids = row.get("input_ids") if isinstance(row, dict) else None
        if ids is None:
            return None
        longest = max(longest, len(ids))
    return longest or None
