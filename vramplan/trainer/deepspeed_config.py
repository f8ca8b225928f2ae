"""The DeepSpeed config a ZeRO measurement run hands to the Trainer (``TrainingArguments(deepspeed=dict)``).

The Trainer's DeepSpeed integration (transformers/integrations/deepspeed.py::HfTrainerDeepSpeedConfig)
fills every ``"auto"`` value from the TrainingArguments (micro-batch, accumulation, clipping, bf16, learning
rate, bucket sizes from the model's hidden size), so the config only says what the setup decides: the ZeRO
stage and what is offloaded to CPU memory. With optimizer offload the config names DeepSpeed's AdamW, which
DeepSpeed runs as its CPU Adam (``deepspeed/ops/adam/cpu_adam.py``, a JIT-compiled op) — a torch optimizer
cannot step on offloaded states. This module imports nothing heavy: the parent process reads it too.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vramplan.specs import TrainingSetup

from .errors import MeasurementError

ZERO_STAGES = {"zero2": 2, "zero3": 3}
#: how to get DeepSpeed onto a GPU machine without network (it ships as a source archive)
DEEPSPEED_HINT = (
    "pip wheel --no-deps deepspeed==0.19.8 (ops left to JIT compilation) and carry it with einops, hjson, msgpack, "
    "ninja, py-cpuinfo"
)


def is_deepspeed(setup: TrainingSetup) -> bool:
    return setup.parallel in ZERO_STAGES


def require_deepspeed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise MeasurementError(f"--parallel zero2|zero3 needs DeepSpeed installed: {DEEPSPEED_HINT}")


def deepspeed_config(setup: TrainingSetup) -> dict[str, Any]:
    """ZeRO stage and offload of `setup` as a DeepSpeed config; everything else "auto" (the Trainer fills it).

    Raises:
        MeasurementError: not a ZeRO setup, or an offload ZeRO-2 does not offer (parameters).
    """
    if not is_deepspeed(setup):
        raise MeasurementError(f"--parallel {setup.parallel} is not DeepSpeed ZeRO")
    stage = ZERO_STAGES[setup.parallel]
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=False,
        )
    else:
        zero.update(allgather_partitions=True, allgather_bucket_size=int(5e8), reduce_scatter=True)
    config: dict[str, Any] = {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
    }
    if setup.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    if setup.offload == "all":
        if stage != 3:
            raise MeasurementError("--offload all (parameters) needs --parallel zero3; ZeRO-2 offloads the optimizer only")
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return config


def zero3_load_config(setup: TrainingSetup):
    """For ZeRO-3: the DeepSpeed config object transformers builds the model under, or None for other setups.

    Users create ``TrainingArguments(deepspeed=...)`` before loading the model (the transformers DeepSpeed
    guide, Axolotl, LLaMA-Factory): its ``HfTrainerDeepSpeedConfig`` registers itself
    (``integrations/deepspeed.py::set_hf_deepspeed_config``, a weak reference), ``is_deepspeed_zero3_enabled()``
    turns true, and ``PreTrainedModel._from_config`` / ``from_pretrained`` build every module inside
    ``deepspeed.zero.Init`` (modeling_utils.py ``needs_zero3_init``), which partitions each parameter as it is
    made: the whole bf16 model never sits on the GPU (on the CPU with parameter offload). The measuring run
    holds this object while it builds the model, so it loads as those users do. "auto" values are fine here:
    DeepSpeed's config models drop them (runtime/config_utils.py ``DeepSpeedConfigModel.__init__``) and use
    their defaults; the precision is set explicitly, as ``TrainingArguments(bf16=True)`` fills it, because
    zero.Init casts the parameters it partitions to the config's dtype.
    """
    if ZERO_STAGES.get(setup.parallel) != 3:
        return None
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    if setup.num_gpus > 1:
        # zero.Init reads the world size from deepspeed.comm (runtime/config.py: 1 when it is not set up), and checks
        # train_batch_size against it: set it up first, as users' TrainingArguments(deepspeed=...) does through
        # accelerate before the model is loaded (it keeps a torch process group that is already open). Without it a
        # launch of 2 ranks failed the batch-size check (fake ranks of 2026-12-04; with it they ran)
        import deepspeed

        deepspeed.init_distributed()
    config = deepspeed_config(setup)
    config["bf16"] = {"enabled": setup.dtype == "bf16"}
    config["fp16"] = {"enabled": setup.dtype == "fp16"}
    # zero.Init parses the whole config (runtime/config.py::DeepSpeedConfig): the batch sizes are checked as
    # numbers (_batch_assertion), so they are filled as TrainingArguments fill them; the optimizer and clipping
    # play no part in building the model and are left to the Trainer's own config
    config.pop("optimizer", None)
    config.pop("gradient_clipping", None)
    config.update(
        train_micro_batch_size_per_gpu=setup.batch_size,
        gradient_accumulation_steps=setup.grad_accum,
        train_batch_size=setup.batch_size * setup.grad_accum * setup.num_gpus,
    )
    return HfDeepSpeedConfig(config)
