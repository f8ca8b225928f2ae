"""Build the model a measurement trains: random weights from a config, or a local checkpoint.

* full / LoRA: ``AutoModelForCausalLM.from_config(config, dtype=..., attn_implementation=...)``
  created directly on the target device (``with torch.device(...)``), random init in the
  requested dtype. Full fine-tuning trains every parameter in that dtype; LoRA wraps the model
  with PEFT (adapters in fp32: ``get_peft_model(..., autocast_adapter_dtype=True)``, PEFT's default).
* QLoRA: bitsandbytes quantizes while loading a checkpoint, so a random-init bf16 model is saved
  once (safetensors, cached per config, see ``ensure_checkpoint``) and loaded back with a
  ``BitsAndBytesConfig`` on device 0, then ``peft.prepare_model_for_kbit_training`` and LoRA,
  as QLoRA recipes do.

Remote code is never run: configs are built from transformers' own classes
(``CONFIG_MAPPING[model_type]``), ``auto_map`` is dropped and ``trust_remote_code`` stays False.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vramplan.specs import TrainingSetup

from .environment import default_checkpoint_cache
from .errors import MeasurementError
from .stacks import wraps_peft_itself

#: CLI attention name -> transformers ``attn_implementation``
ATTN_IMPLEMENTATIONS = {"sdpa": "sdpa", "eager": "eager", "flash": "flash_attention_2"}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: config keys that are not the architecture and must not steer loading (see design.md,
#: "Practicalities": shipped configs may carry MLX quantization keys, _attn_implementation,
#: auto_map, a dtype)
_NON_ARCH_KEYS = (
    "auto_map",
    "quantization_config",
    "quantization",
    "_attn_implementation",
    "attn_implementation",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "transformers_version",
)
#: GC mode used everywhere (Trainer and prepare_model_for_kbit_training): non-reentrant
GC_KWARGS = {"use_reentrant": False}
#: marker written last into a cached checkpoint folder; its presence means "complete"
_CHECKPOINT_MARKER = "vramplan-checkpoint.json"
#: the dtype QLoRA checkpoints are saved in (quantization reads them; other modules are then cast)
CHECKPOINT_DTYPE = torch.bfloat16


@dataclass
class BuiltModel:
    model: Any
    params_total: int
    params_trainable: int
    extra: dict[str, Any] = field(default_factory=dict)
    #: the LoraConfig a trainer that wraps the model itself (TRL's SFTTrainer) is given; None when wrapped here
    peft_config: Any = None


#: elements of the random block a fast CPU init repeats (16 MiB of fp32)
_FILL_BLOCK = 1 << 22


@contextlib.contextmanager
def fast_cpu_random_init(seed: int = 0):
    """CPU tensors' ``normal_`` and ``uniform_`` (what transformers' ``_init_weights`` and torch's ``reset_parameters``
    call) fill each tensor with one random block of the same mean and spread, repeated, instead of drawing every
    element: CPU random draws run on one thread (an FSDP model built on the CPU spent 67 of its 96 s there for
    Llama-3.2-1B, and an 8B one ran past 200 s, 2026-12-04). Memory depends on the shapes only; the weights stay
    finite and varied. GPU tensors keep torch's own draws."""
    block = torch.randn(_FILL_BLOCK, generator=torch.Generator().manual_seed(seed))
    normal, uniform = torch.Tensor.normal_, torch.Tensor.uniform_

    def fill(t, scale: float, shift: float):
        flat = t.view(-1)
        src = (block * scale + shift).to(t.dtype)
        whole, rest = divmod(flat.numel(), _FILL_BLOCK)
        if whole:
            flat[: whole * _FILL_BLOCK].view(whole, _FILL_BLOCK).copy_(src.expand(whole, _FILL_BLOCK))
        flat[whole * _FILL_BLOCK :].copy_(src[:rest])
        return t

    def normal_(t, mean=0.0, std=1.0, *, generator=None):
        if t.device.type != "cpu" or not t.is_contiguous():
            return normal(t, mean, std, generator=generator)
        return fill(t, std, mean)

    def uniform_(t, a=0.0, b=1.0, *, generator=None):
        if t.device.type != "cpu" or not t.is_contiguous():
            return uniform(t, a, b, generator=generator)
        return fill(t, (b - a) / 12**0.5, (a + b) / 2)  # the uniform's mean and standard deviation

    torch.Tensor.normal_, torch.Tensor.uniform_ = normal_, uniform_
    try:
        yield
    finally:
        torch.Tensor.normal_, torch.Tensor.uniform_ = normal, uniform


def clean_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The architecture part of an HF config dict (non-architecture keys dropped).

    A multimodal Gemma-3 config (``text_config`` inside) becomes its ``gemma3_text`` part.
    """
    cfg = {k: v for k, v in raw.items() if k not in _NON_ARCH_KEYS}
    if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), dict):
        text = {k: v for k, v in cfg["text_config"].items() if k not in _NON_ARCH_KEYS}
        text["model_type"] = "gemma3_text"
        cfg = text
    return cfg


def hf_config(raw: dict[str, Any]):
    """A transformers ``PretrainedConfig`` from a raw config dict, with ``use_cache=False``.

    Raises:
        MeasurementError: no ``model_type`` or one this transformers does not know.
    """
    from transformers import CONFIG_MAPPING

    cfg = clean_config(raw)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise MeasurementError("model config has no 'model_type'")
    if model_type not in CONFIG_MAPPING:
        raise MeasurementError(f"model_type {model_type!r} is not known to the installed transformers")
    config = CONFIG_MAPPING[model_type].from_dict(cfg)
    # training never uses the KV cache; recipes set this off (a cache would keep K/V referenced)
    config.use_cache = False
    return config


def attn_implementation(attn: str) -> str:
    """transformers' name for ``attn``.

    Raises:
        MeasurementError: unknown name, or "flash" without the flash_attn package.
    """
    if attn not in ATTN_IMPLEMENTATIONS:
        raise MeasurementError(f"unknown attention {attn!r}; accepted: {', '.join(ATTN_IMPLEMENTATIONS)}")
    if attn == "flash" and importlib.util.find_spec("flash_attn") is None:
        raise MeasurementError("--attn flash needs the flash-attn package (pip install flash-attn); use --attn sdpa")
    return ATTN_IMPLEMENTATIONS[attn]


def config_key(raw: dict[str, Any]) -> str:
    """A short stable hash of the architecture part of a config (names cached checkpoints)."""
    text = json.dumps(clean_config(raw), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def count_params(raw: dict[str, Any]) -> int:
    """Exact parameter count of the architecture (built on the meta device, tied weights once)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(raw))
    return sum(p.numel() for p in model.parameters())


def _savable_generation_config(model) -> None:
    """save_pretrained validates the generation config and refuses one that names a cache_implementation with use_cache
    off (Gemma 3 1B's config.json: "hybrid", use_cache false); training never generates, so the name is dropped."""
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "cache_implementation", None) and not getattr(gen, "use_cache", True):
        gen.cache_implementation = None


def ensure_checkpoint(raw: dict[str, Any], cache_dir: str | Path, *, name: str = "model", device: str = "cpu") -> Path:
    """A folder holding a random-init bf16 checkpoint (safetensors) of ``raw``; built once.

    The checkpoint is written to a temporary folder beside the final one and renamed into place
    with a marker file last, so a crash never leaves a folder that looks complete. ``device``
    is where the random init runs ("cuda" is much faster for 7B+ models; use it only in a
    process that does not measure memory).

    Raises:
        MeasurementError: not enough free disk space for the checkpoint.
    """
    from transformers import AutoModelForCausalLM

    cache_dir = Path(cache_dir)
    safe_name = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
    final = cache_dir / f"{safe_name}-{config_key(raw)}"
    if (final / _CHECKPOINT_MARKER).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    need = count_params(raw) * 2  # bf16
    free = shutil.disk_usage(cache_dir).free
    if free < need * 1.05 + (1 << 30):
        raise MeasurementError(
            f"QLoRA checkpoint for {name} needs ~{need / 2**30:.1f} GiB in {cache_dir}, "
            f"only {free / 2**30:.1f} GiB free; free space or set another checkpoint cache"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{safe_name}.", dir=cache_dir))
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(hf_config(raw), dtype=CHECKPOINT_DTYPE)
        _savable_generation_config(model)
        model.save_pretrained(tmp)
        del model
        (tmp / _CHECKPOINT_MARKER).write_text(json.dumps({"name": name, "config_key": config_key(raw)}))
        if final.exists():  # an incomplete leftover from a crashed build: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def bnb_config(setup: TrainingSetup):
    """The ``BitsAndBytesConfig`` for a QLoRA setup (compute dtype bf16; fp16 for fp16 weights)."""
    from transformers import BitsAndBytesConfig

    if setup.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = {}
    if setup.parallel in ("fsdp", "zero3"):
        # FSDP/ZeRO-3 flatten the packed 4-bit data with the bf16 parameters: store it in bf16 elements
        # (same bytes; memory_model.md section 9, PEFT's QLoRA-FSDP guide)
        storage["bnb_4bit_quant_storage"] = torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=setup.quant,
        bnb_4bit_use_double_quant=setup.double_quant,
        bnb_4bit_compute_dtype=torch.float16 if setup.dtype == "fp16" else torch.bfloat16,
        **storage,
    )


def lora_config(setup: TrainingSetup):
    from peft import LoraConfig

    lora = setup.lora
    assert lora is not None  # TrainingSetup guarantees it for lora/qlora
    targets: str | list[str] = "all-linear" if lora.all_linear else list(lora.targets)
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.effective_alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def param_counts_of(model) -> tuple[int, int]:
    """(base parameters, trainable parameters); 4-bit packed weights counted as their logical size
    (the rule of ``peft.PeftModel.get_nb_trainable_parameters``); adapters excluded from the base."""
    total = trainable = adapters = 0
    for name, p in model.named_parameters():
        n = getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 partitioned: the full count is ds_numel
        if p.__class__.__name__ == "Params4bit":
            n = n * 2 * p.element_size()
        if "lora_" in name:
            adapters += n
        else:
            total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


@contextlib.contextmanager
def _attn_support(attn: str):
    """Turn transformers' "X does not support an attention implementation through ..." into a
    clear MeasurementError (e.g. Gemma-2 has no SDPA path in transformers 5.x: use eager)."""
    try:
        yield
    except ValueError as exc:
        if "does not support" in str(exc) and "attention" in str(exc):
            model = str(exc).split(" does not support")[0]
            raise MeasurementError(
                f"{model} cannot run --attn {attn} with the installed transformers; use --attn eager (or flash)"
            ) from exc
        raise


def _require_bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MeasurementError("--method qlora and 8-bit/paged optimizers need bitsandbytes (pip install bitsandbytes)")


def build_model(
    raw_config: dict[str, Any] | None,
    setup: TrainingSetup,
    *,
    model_path: str | Path | None = None,
    checkpoint_cache: str | Path | None = None,
    name: str = "model",
    device: str = "cpu",
    fast_init: bool = False,
) -> BuiltModel:
    """Build, quantize (QLoRA) and wrap (LoRA) the model for ``setup`` on ``device``.

    ``raw_config`` is the HF config dict (random weights); ``model_path`` a local checkpoint
    folder used instead. QLoRA without ``model_path`` saves/reuses a random checkpoint under
    ``checkpoint_cache`` (built on the CPU in this process). ``fast_init`` (a CPU build): random weights by
    ``fast_cpu_random_init``.

    Raises:
        MeasurementError: missing package (flash-attn, bitsandbytes), bad config, no disk space.
    """
    from transformers import AutoModelForCausalLM

    if raw_config is None and model_path is None:
        raise MeasurementError("build_model needs a config dict or a model_path")
    dtype = TORCH_DTYPES[setup.dtype]
    attn = attn_implementation(setup.attn)
    extra: dict[str, Any] = {"attn_implementation": attn}
    on_cuda = device.startswith("cuda")
    device_map = {"": torch.device(device).index or 0} if on_cuda else None

    if setup.method == "qlora":
        _require_bitsandbytes()
        from peft import prepare_model_for_kbit_training

        if model_path is None:
            cache = checkpoint_cache if checkpoint_cache is not None else default_checkpoint_cache()
            model_path = ensure_checkpoint(raw_config, cache, name=name)
        extra["checkpoint"] = str(model_path)
        with _attn_support(setup.attn):
            model = AutoModelForCausalLM.from_pretrained(
                str(model_path),
                quantization_config=bnb_config(setup),
                dtype=dtype,
                attn_implementation=attn,
                device_map=device_map,
                local_files_only=True,
            )
        model.config.use_cache = False
        if not wraps_peft_itself(setup):  # TRL's SFTTrainer does not call it (trl/trainer/sft_trainer.py)
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=setup.grad_ckpt, gradient_checkpointing_kwargs=dict(GC_KWARGS)
            )
    elif model_path is not None:
        with _attn_support(setup.attn):
            model = AutoModelForCausalLM.from_pretrained(
                str(model_path), dtype=dtype, attn_implementation=attn, device_map=device_map, local_files_only=True
            )
        model.config.use_cache = False
    else:
        init = fast_cpu_random_init() if fast_init and not on_cuda else contextlib.nullcontext()
        with torch.device(device), _attn_support(setup.attn), init:
            model = AutoModelForCausalLM.from_config(hf_config(raw_config), dtype=dtype, attn_implementation=attn)

    peft_config = None
    if setup.method in ("lora", "qlora") and wraps_peft_itself(setup):
        peft_config = lora_config(setup)  # SFTTrainer(peft_config=...) wraps the model
    elif setup.method in ("lora", "qlora"):
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(setup))
    else:
        for p in model.parameters():
            p.requires_grad_(True)

    total, trainable = param_counts_of(model)
    return BuiltModel(model=model, params_total=total, params_trainable=trainable, extra=extra, peft_config=peft_config)
