#!/usr/bin/env python3
"""Multi-GPU measurement campaign: DDP and FSDP runs of the built-in trainer, one torchrun each.

Usage (from the repository root, on a machine with >= 2 NVIDIA GPUs):

    python scripts/campaign_multi.py --list
    python scripts/campaign_multi.py --out out/campaign-multi --budget-s 500
    python scripts/campaign_multi.py --only l1-ddp-lora-gc,l1-fsdp-full-gc --budget-s 220

Each run is ``vramplan.trainer.measure_in_subprocess`` with ``setup.num_gpus = N``: a fresh
``torchrun --standalone --nproc_per_node N`` launch of the worker (one process per GPU; the
Trainer's DDP or accelerate's FSDP2 does all communication), a per-run timeout, and one merged
record (per-GPU peaks = max over ranks, per-rank values in ``extra``) saved as
``<out>/<gpu-id>/<run_id>.json``. Progress goes to ``<out>/campaign-progress.jsonl`` (a second
call with the same ``--out`` resumes) and the summary to ``<out>/campaign-summary.txt``.
The driver never imports torch. ``--grid zero`` is DeepSpeed ZeRO-2/3 through the Trainer's ``deepspeed=``
config (also at ``--num-gpus 1``: DeepSpeed at world size 1) and QLoRA with FSDP; ``--snapshots`` records the
allocator history of world-size-1 runs (one process) as ``<out>/snapshots/<name>.pickle``.

On the device tool: ``bash scripts/device_campaign_multi.sh --budget-s 500`` (packs the output
into ``$OUT/campaign-multi.tgz``).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import campaign as single  # (scripts/campaign.py: helpers shared with the 1-GPU campaign)

from vramplan.trainer.errors import MeasurementError
from vramplan.trainer.worker import default_checkpoint_cache, measure_in_subprocess

RunSpec = single.RunSpec
GIB = 2**30
L1, L3, L8, Q7 = single.L1, single.L3, single.L8, single.Q7


def _multi(spec: RunSpec, parallel: str, num_gpus: int) -> RunSpec:
    return replace(spec, setup=spec.setup.model_copy(update={"parallel": parallel, "num_gpus": num_gpus}))


def _multi_on(spec: RunSpec, num_gpus: int, parallel: str) -> RunSpec:
    """`spec` as a `parallel` run on `num_gpus` GPUs, its name ending in -x<num_gpus>."""
    return replace(_multi(spec, parallel, num_gpus), name=f"{spec.name}-x{num_gpus}")


def _zero(spec: RunSpec, stage: str, offload: str = "none", *, num_gpus: int) -> RunSpec:
    """`spec` as a DeepSpeed run (ZeRO `stage`, CPU `offload`) on `num_gpus` GPUs, its name ending in -x<num_gpus>."""
    update = {"parallel": stage, "num_gpus": num_gpus, "offload": offload}
    return replace(spec, name=f"{spec.name}-x{num_gpus}", setup=spec.setup.model_copy(update=update))


def multi_grid(num_gpus: int = 2) -> list[RunSpec]:
    """Issue 5 item 6 (M9.1): DDP LoRA and FSDP full fine-tuning, most important first.
    Defaults as the 1-GPU grid: seq 2048, batch 1 per GPU, rank 16 all-linear, adamw_torch_fused,
    bf16 weights, sdpa; every run with gradient checkpointing."""
    ddp = lambda s: _multi(s, "ddp", num_gpus)
    fsdp = lambda s: _multi(s, "fsdp", num_gpus)
    return [
        ddp(single.lora("l1-ddp-lora-gc", L1, "DDP LoRA 1B", grad_ckpt=True)),
        fsdp(single.full("l1-fsdp-full-gc", L1, "FSDP2 full FT 1B (fp32 sharded masters)", grad_ckpt=True)),
        ddp(single.lora("l8-ddp-lora-gc", L8, "DDP LoRA 8B", grad_ckpt=True)),
        fsdp(single.full("l8-fsdp-full-gc", L8, "FSDP2 full FT 8B", grad_ckpt=True)),
        fsdp(single.full("l3-fsdp-full-gc", L3, "FSDP2 full FT 3B", grad_ckpt=True)),
        ddp(single.qlora("q7-ddp-qlora-gc", Q7, "DDP QLoRA 7B (vocab 152k)", grad_ckpt=True)),
    ]


def scale_grid(num_gpus: int = 4) -> list[RunSpec]:
    """Issue 16: FSDP full fine-tuning of an 8B and a 14B model and DDP LoRA of an 8B model on `num_gpus`
    (4 or 8) GPUs, and a 70B LoRA with FSDP (8 GPUs), for per-GPU memory and step time at scale."""
    fsdp = partial(_multi_on, parallel="fsdp", num_gpus=num_gpus)
    ddp = partial(_multi_on, parallel="ddp", num_gpus=num_gpus)
    grid = [
        fsdp(single.full("l8-fsdp-full-gc", L8, "FSDP2 full FT 8B", grad_ckpt=True)),
        fsdp(single.full("q14-fsdp-full-gc", "qwen2.5-14b", "FSDP2 full FT 14B", grad_ckpt=True)),
        ddp(single.lora("l8-ddp-lora-gc", L8, "DDP LoRA 8B", grad_ckpt=True)),
    ]
    if num_gpus >= 8:
        grid.append(fsdp(single.lora("l70-fsdp-lora-gc", "llama-3.1-70b", "FSDP2 LoRA 70B", grad_ckpt=True)))
    return grid


def zero_grid(num_gpus: int = 2) -> list[RunSpec]:
    """Issue 15: DeepSpeed ZeRO-2/3 with and without CPU offload (LoRA and full fine-tuning) and QLoRA with
    FSDP (bf16 quant storage) on `num_gpus` GPUs; at num_gpus 1, ZeRO-3 with offload at world size 1."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.full("l1-zero2-full-gc", L1, "ZeRO-2 full FT 1B", grad_ckpt=True), "zero2"),
        zero(single.full("l1-zero3-full-gc", L1, "ZeRO-3 full FT 1B", grad_ckpt=True), "zero3"),
        zero(single.full("l1-zero2-full-gc-offopt", L1, "ZeRO-2 optimizer offload", grad_ckpt=True), "zero2", "optimizer"),
        zero(single.full("l3-zero3-full-gc-offall", L3, "ZeRO-3 params+optimizer offload", grad_ckpt=True), "zero3", "all"),
        zero(single.lora("l8-zero2-lora-gc", L8, "ZeRO-2 LoRA 8B", grad_ckpt=True), "zero2"),
        zero(single.lora("l8-zero3-lora-gc", L8, "ZeRO-3 LoRA 8B", grad_ckpt=True), "zero3"),
        zero(single.lora("l8-zero3-lora-gc-offopt", L8, "ZeRO-3 LoRA optimizer offload", grad_ckpt=True), "zero3", "optimizer"),
        zero(single.full("l8-zero3-full-gc-offall", L8, "ZeRO-3 full FT 8B, everything offloaded", grad_ckpt=True), "zero3", "all"),
        _multi(single.qlora("l8-fsdp-qlora-gc", L8, "QLoRA + FSDP, bf16 quant storage", grad_ckpt=True), "fsdp", num_gpus),
    ]


def zero_holdout_grid(num_gpus: int = 1) -> list[RunSpec]:
    """Issue 15 at world size 1, a hold-out for the DeepSpeed buffers read from the source (2026-12-02): setups
    none of the zero-grid runs has (another vocabulary-to-parameter ratio, a larger largest gradient, ZeRO-3's
    sub-groups at another size), predicted and committed before they run."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.full("h-q05-zero2-full-gc", "qwen2.5-0.5b", "ZeRO-2 full FT, vocab 152k on 0.5B", grad_ckpt=True), "zero2"),
        zero(single.full("h-q15-zero3-full-gc", "qwen2.5-1.5b", "ZeRO-3 full FT 1.5B", grad_ckpt=True), "zero3"),
        zero(single.full("h-l3-zero2-full-gc-offopt", L3, "ZeRO-2 optimizer offload 3B", grad_ckpt=True), "zero2", "optimizer"),
        zero(single.full("h-l1-zero3-full-gc-offall", L1, "ZeRO-3 full offload 1B", grad_ckpt=True), "zero3", "all"),
    ]


def zero_holdout2_grid(num_gpus: int = 1) -> list[RunSpec]:
    """A second world-size-1 hold-out, for what the first one led to (ZeRO-2's init phase and its cached segments
    with offload, ZeRO-3's reuse distance): other models, predicted and committed before they run."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.full("h2-q15-zero2-full-gc-offopt", "qwen2.5-1.5b", "ZeRO-2 optimizer offload 1.5B", grad_ckpt=True), "zero2", "optimizer"),
        zero(single.full("h2-q05-zero3-full-gc-offall", "qwen2.5-0.5b", "ZeRO-3 full offload 0.5B", grad_ckpt=True), "zero3", "all"),
    ]


def zero2_sequence_grid(num_gpus: int = 1) -> list[RunSpec]:
    """A hold-out for ZeRO-2's simulated sequence (allocator/zero_steps.py, read from the four ZeRO-2 histories of
    2026-12-02, all tied-embedding models at 2048 tokens): an untied lm_head (TinyLlama, with and without offload),
    4096 tokens, Qwen2's biases at 3B and Qwen3's q/k norms; predicted and committed before they run."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.full("z-tiny-zero2-full-gc-offopt", "tinyllama-1.1b-chat-v1.0", "ZeRO-2 offload, untied lm_head", grad_ckpt=True), "zero2", "optimizer"),
        zero(single.full("z-tiny-zero2-full-gc-s4096", "tinyllama-1.1b-chat-v1.0", "ZeRO-2, untied lm_head, 4k", grad_ckpt=True, seq_len=4096), "zero2"),
        zero(single.full("z-q3b-zero2-full-gc", "qwen2.5-3b", "ZeRO-2 full FT 3B, q/k/v biases", grad_ckpt=True), "zero2"),
        zero(single.full("z-q3-17-zero2-full-gc", "qwen3-1.7b", "ZeRO-2 full FT Qwen3 1.7B", grad_ckpt=True), "zero2"),
        zero(single.full("z-l1-zero2-full-gc-s4096", L1, "ZeRO-2 full FT 1B at 4k", grad_ckpt=True, seq_len=4096), "zero2"),
    ]


def zero3_sequence_grid(num_gpus: int = 1) -> list[RunSpec]:
    """A hold-out for ZeRO-3's simulated sequence without offload (allocator/zero3_steps.py, read from the Qwen2.5-1.5B
    and Llama-3.2-1B histories at 2048 tokens): an untied lm_head (TinyLlama), 4096 tokens, Qwen2.5-3B's three
    sub-groups and biases, Qwen3's q/k norms, a model under one sub-group (Qwen2.5-0.5B); predicted and committed
    before they run."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.full("z3-tiny-zero3-full-gc", "tinyllama-1.1b-chat-v1.0", "ZeRO-3, untied lm_head", grad_ckpt=True), "zero3"),
        zero(single.full("z3-q3b-zero3-full-gc", "qwen2.5-3b", "ZeRO-3 full FT 3B, three sub-groups", grad_ckpt=True), "zero3"),
        zero(single.full("z3-q3-17-zero3-full-gc", "qwen3-1.7b", "ZeRO-3 full FT Qwen3 1.7B", grad_ckpt=True), "zero3"),
        zero(single.full("z3-l1-zero3-full-gc-s4096", L1, "ZeRO-3 full FT 1B at 4k", grad_ckpt=True, seq_len=4096), "zero3"),
        zero(single.full("z3-q05-zero3-full-gc", "qwen2.5-0.5b", "ZeRO-3 full FT 0.5B, one sub-group", grad_ckpt=True), "zero3"),
    ]


def zero3_large_grid(num_gpus: int = 1) -> list[RunSpec]:
    """A second hold-out for ZeRO-3's simulated sequence, at the size one H200 just holds (129 GiB reserved predicted
    for Llama-3.1-8B): eight decay sub-groups, an untied 128k lm_head (Llama-3.1-8B), Qwen2.5-7B's untied 152k head
    and biases; predicted and committed before they run."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.full("z3b-l8-zero3-full-gc", L8, "ZeRO-3 full FT 8B on one H200", grad_ckpt=True), "zero3"),
        zero(single.full("z3b-q7-zero3-full-gc", Q7, "ZeRO-3 full FT Qwen2.5-7B on one H200", grad_ckpt=True), "zero3"),
    ]


def zero3_offload_history_grid(num_gpus: int = 1) -> list[RunSpec]:
    """Allocator histories with frames (``--snapshots``) for reading ZeRO-3's offload paths and ZeRO's LoRA engine
    (2026-12-03): the two offload-all runs again (is the offload sequence deterministic?), Llama-3.2-3B's with its
    streams, ZeRO-3 with the optimizer offloaded only, and LoRA under ZeRO-2 and ZeRO-3, with and without the optimizer offloaded.
    Not a hold-out: read from."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.full("o-l1-zero3-full-gc-offall", L1, "ZeRO-3 full offload 1B, again", grad_ckpt=True), "zero3", "all"),
        zero(single.full("o-l1-zero3-full-gc-offopt", L1, "ZeRO-3 optimizer offload 1B", grad_ckpt=True), "zero3", "optimizer"),
        zero(single.full("o-q05-zero3-full-gc-offall", "qwen2.5-0.5b", "ZeRO-3 full offload 0.5B, again", grad_ckpt=True), "zero3", "all"),
        zero(single.lora("o-l1-zero3-lora-gc", L1, "ZeRO-3 LoRA 1B", grad_ckpt=True), "zero3"),
        zero(single.lora("o-l1-zero2-lora-gc", L1, "ZeRO-2 LoRA 1B", grad_ckpt=True), "zero2"),
        zero(single.lora("o-l1-zero3-lora-gc-offopt", L1, "ZeRO-3 LoRA 1B, optimizer offload", grad_ckpt=True), "zero3", "optimizer"),
        zero(single.lora("o-l1-zero2-lora-gc-offopt", L1, "ZeRO-2 LoRA 1B, optimizer offload", grad_ckpt=True), "zero2", "optimizer"),
        zero(single.full("o-l3-zero3-full-gc-offall", L3, "ZeRO-3 full offload 3B, with streams", grad_ckpt=True), "zero3", "all"),
    ]


def zero3_offload_grid(num_gpus: int = 1) -> list[RunSpec]:
    """A hold-out for ZeRO-3 with parameters and optimizer offloaded, simulated (allocator/zero3_offload.py and
    zero3_fetch.py, read from the Llama-3.2-1B and Qwen2.5-0.5B histories at 2048 tokens): an untied lm_head
    (TinyLlama), Qwen2.5-1.5B's biases and tied 152k vocabulary, Qwen3's q/k norms, 4096 tokens, Qwen2.5-3B's 36
    layers; and the 1B run again (is it the same to the byte?). Predicted and committed before they run."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.full("z3o-tiny-zero3-full-gc-offall", "tinyllama-1.1b-chat-v1.0", "ZeRO-3 offload, untied lm_head", grad_ckpt=True), "zero3", "all"),
        zero(single.full("z3o-q15-zero3-full-gc-offall", "qwen2.5-1.5b", "ZeRO-3 offload, biases, tied 152k", grad_ckpt=True), "zero3", "all"),
        zero(single.full("z3o-q3-17-zero3-full-gc-offall", "qwen3-1.7b", "ZeRO-3 offload, Qwen3 q/k norms", grad_ckpt=True), "zero3", "all"),
        zero(single.full("z3o-l1-zero3-full-gc-offall-s4096", L1, "ZeRO-3 offload 1B at 4k", grad_ckpt=True, seq_len=4096), "zero3", "all"),
        zero(single.full("z3o-l1-zero3-full-gc-offall", L1, "ZeRO-3 offload 1B, again", grad_ckpt=True), "zero3", "all"),
        zero(single.full("z3o-q3b-zero3-full-gc-offall", "qwen2.5-3b", "ZeRO-3 offload 3B, 36 layers", grad_ckpt=True), "zero3", "all"),
    ]


def zero_lora_holdout_grid(num_gpus: int = 1) -> list[RunSpec]:
    """A hold-out for ZeRO-2 under LoRA (zero_steps.py: the adapters cast to bf16 and flattened, read from the two
    Llama-3.2-1B LoRA histories of 2026-12-04) and ZeRO-3 with the optimizer alone offloaded (zero3_steps.py, read from
    the one Llama-3.2-1B run): Qwen2.5's biases and tied 152k vocabulary, TinyLlama's untied lm_head, Qwen3's q/k
    norms, 4096 tokens on Llama-3.2-3B; predicted and committed before they run."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.lora("hz-q15-zero2-lora-gc", "qwen2.5-1.5b", "ZeRO-2 LoRA, biases, tied 152k", grad_ckpt=True), "zero2"),
        zero(single.lora("hz-tiny-zero2-lora-gc-offopt", "tinyllama-1.1b-chat-v1.0", "ZeRO-2 LoRA offopt, untied", grad_ckpt=True), "zero2", "optimizer"),
        zero(single.lora("hz-q3-17-zero2-lora-gc", "qwen3-1.7b", "ZeRO-2 LoRA Qwen3 1.7B", grad_ckpt=True), "zero2"),
        zero(single.lora("hz-l3-zero2-lora-gc-s4096", L3, "ZeRO-2 LoRA 3B at 4k", grad_ckpt=True, seq_len=4096), "zero2"),
        zero(single.full("hz-q05-zero3-full-gc-offopt", "qwen2.5-0.5b", "ZeRO-3 offopt 0.5B, tied", grad_ckpt=True), "zero3", "optimizer"),
        zero(single.full("hz-tiny-zero3-full-gc-offopt", "tinyllama-1.1b-chat-v1.0", "ZeRO-3 offopt, untied", grad_ckpt=True), "zero3", "optimizer"),
        zero(single.full("hz-q15-zero3-full-gc-offopt", "qwen2.5-1.5b", "ZeRO-3 offopt 1.5B, biases", grad_ckpt=True), "zero3", "optimizer"),
    ]


def zero_lora_holdout2_grid(num_gpus: int = 1) -> list[RunSpec]:
    """A hold-out for DeepSpeed under LoRA after the engine's LoRA sequence and its no-grad layer were read (2026-12-04:
    zero_steps.py, zero3_steps.py, lora_no_grad_layer.py): ZeRO-3 on Qwen2.5's biases and tied vocabulary, TinyLlama
    with the optimizer offloaded, Qwen3's q/k norms, Llama-3.2-3B at 4096 tokens; ZeRO-2 on Qwen2.5-0.5B with the
    optimizer offloaded and Qwen2.5-3B; predicted and committed before they run."""
    zero = partial(_zero, num_gpus=num_gpus)

    return [
        zero(single.lora("hl-q15-zero3-lora-gc", "qwen2.5-1.5b", "ZeRO-3 LoRA, biases, tied 152k", grad_ckpt=True), "zero3"),
        zero(single.lora("hl-tiny-zero3-lora-gc-offopt", "tinyllama-1.1b-chat-v1.0", "ZeRO-3 LoRA offopt, untied", grad_ckpt=True), "zero3", "optimizer"),
        zero(single.lora("hl-q3-17-zero3-lora-gc", "qwen3-1.7b", "ZeRO-3 LoRA Qwen3 1.7B", grad_ckpt=True), "zero3"),
        zero(single.lora("hl-l3-zero3-lora-gc-s4096", L3, "ZeRO-3 LoRA 3B at 4k", grad_ckpt=True, seq_len=4096), "zero3"),
        zero(single.lora("hl-q05-zero2-lora-gc-offopt", "qwen2.5-0.5b", "ZeRO-2 LoRA offopt 0.5B", grad_ckpt=True), "zero2", "optimizer"),
        zero(single.lora("hl-q3b-zero2-lora-gc", "qwen2.5-3b", "ZeRO-2 LoRA Qwen2.5-3B", grad_ckpt=True), "zero2"),
    ]


def ddp_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for DDP's construction broadcast (vramplan/memory/allocator/ddp_broadcast.py, read from torch's
    source and checked on the three DDP runs of the multi grid, 2026-12-03): full fine-tuning (bf16 buckets only, the
    Reducer's 16 GB of buckets after it), a tied 152k vocabulary (the embedding a bucket of its own, a view) and two
    more LoRA models; predicted and committed before they run."""
    ddp = lambda s: _multi(s, "ddp", num_gpus)
    return [
        ddp(single.full("hd-l8-ddp-full-gc", L8, "DDP full FT 8B", grad_ckpt=True)),
        ddp(single.lora("hd-q15-ddp-lora-gc", "qwen2.5-1.5b", "DDP LoRA 1.5B, tied 152k vocabulary", grad_ckpt=True)),
        ddp(single.lora("hd-l3-ddp-lora-gc", L3, "DDP LoRA 3B, tied", grad_ckpt=True)),
        ddp(single.lora("hd-q7-ddp-lora-gc", Q7, "DDP LoRA 7B, untied 152k lm_head", grad_ckpt=True)),
    ]


def fsdp_ranks_grid(num_gpus: int = 2) -> list[RunSpec]:
    """FSDP2 full fine-tuning on 2, 4 and 8 ranks (each run's own count; `num_gpus` unused), measured as fake ranks
    (vramplan/trainer/fake_rank.py: rank 0 alone over torch's fake process group on one GPU): the 1B run the closed
    forms miss most (2 GPUs: -5.3 % reserved) on more ranks, the 3B on four, and a tied 152k vocabulary on two;
    predicted and committed before they run."""
    fsdp = partial(_multi_on, parallel="fsdp")
    return [
        fsdp(single.full("fr-l1-fsdp-full-gc", L1, "FSDP2 full FT 1B on 4", grad_ckpt=True), 4),
        fsdp(single.full("fr-l1-fsdp-full-gc", L1, "FSDP2 full FT 1B on 8", grad_ckpt=True), 8),
        fsdp(single.full("fr-l3-fsdp-full-gc", L3, "FSDP2 full FT 3B on 4", grad_ckpt=True), 4),
        fsdp(single.full("fr-q15-fsdp-full-gc", "qwen2.5-1.5b", "FSDP2 full FT 1.5B, tied 152k vocabulary", grad_ckpt=True), 2),
    ]


def fsdp_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for the simulated FSDP2 sequence (vramplan/memory/allocator/fsdp_steps.py, read from the fake-rank
    histories of 2026-12-04): untied embeddings with a 32k vocabulary, Qwen3's q/k norms, a 36-layer tied model, a longer
    sequence, batch 2, 8 ranks of a 7B; each run its own GPU count (`num_gpus` unused), as fake ranks; predicted and
    committed before they run."""
    fsdp = partial(_multi_on, parallel="fsdp")
    return [
        fsdp(single.full("fh-tiny-fsdp-full-gc", "tinyllama-1.1b-chat-v1.0", "untied, 32k vocabulary", grad_ckpt=True), 4),
        fsdp(single.full("fh-q3-17-fsdp-full-gc", "qwen3-1.7b", "Qwen3 q/k norms, tied", grad_ckpt=True), 2),
        fsdp(single.full("fh-q3b-fsdp-full-gc", "qwen2.5-3b", "36 layers, tied 152k", grad_ckpt=True), 4),
        fsdp(single.full("fh-l1-fsdp-full-gc-s4096", L1, "4096 tokens", grad_ckpt=True, seq_len=4096), 2),
        fsdp(single.full("fh-m7-fsdp-full-gc", single.M7, "Mistral 7B on 8", grad_ckpt=True), 8),
        fsdp(single.full("fh-q7-fsdp-full-gc", Q7, "untied 152k lm_head", grad_ckpt=True), 4),
        fsdp(single.full("fh-l3-fsdp-full-gc-b2", L3, "batch 2", grad_ckpt=True, batch_size=2), 2),
    ]


def fsdp_lora_grid(num_gpus: int = 2) -> list[RunSpec]:
    """Allocator histories to read FSDP2 beyond full fine-tuning from (session 15, as fake ranks): LoRA (frozen bf16
    weights in the units, fp32 adapters), QLoRA with bf16 quant storage (issue 15 item 2), and two micro-steps of full
    fine-tuning; tied and untied, 1B to 8B. Each run its own GPU count (`num_gpus` unused)."""
    fsdp = partial(_multi_on, parallel="fsdp")
    return [
        fsdp(single.lora("fl-l1-fsdp-lora-gc", L1, "FSDP2 LoRA 1B, tied", grad_ckpt=True), 2),
        fsdp(single.qlora("fl-l1-fsdp-qlora-gc", L1, "QLoRA + FSDP 1B, bf16 quant storage", grad_ckpt=True), 2),
        fsdp(single.full("fl-l1-fsdp-full-gc-ga2", L1, "FSDP2 full FT 1B, two micro-steps", grad_ckpt=True, grad_accum=2), 2),
        fsdp(single.lora("fl-tiny-fsdp-lora-gc", "tinyllama-1.1b-chat-v1.0", "FSDP2 LoRA, untied 32k", grad_ckpt=True), 2),
        fsdp(single.lora("fl-l8-fsdp-lora-gc", L8, "FSDP2 LoRA 8B, untied 128k", grad_ckpt=True), 2),
        fsdp(single.qlora("fl-l8-fsdp-qlora-gc", L8, "QLoRA + FSDP 8B, bf16 quant storage (issue 15)", grad_ckpt=True), 2),
        fsdp(single.lora("fl-l3-fsdp-lora-gc", L3, "FSDP2 LoRA 3B on 4", grad_ckpt=True), 4),
    ]


def fsdp_cpu_grid(num_gpus: int = 2) -> list[RunSpec]:
    """FSDP2 with the model built on the CPU, as users' from_pretrained loads it (the trainer's way since session 15,
    run.builds_on_cpu): full fine-tuning and LoRA, 1B to 8B on 2, 4 and 8 ranks, as fake ranks; the closed forms'
    predictions (a CPU-loaded model) committed before they run. Each run its own GPU count (`num_gpus` unused)."""
    fsdp = partial(_multi_on, parallel="fsdp")
    return [
        fsdp(single.full("fc-l1-fsdp-full-gc", L1, "CPU-loaded FSDP2 full FT 1B", grad_ckpt=True), 2),
        fsdp(single.lora("fc-l1-fsdp-lora-gc", L1, "CPU-loaded FSDP2 LoRA 1B, tied", grad_ckpt=True), 2),
        fsdp(single.lora("fc-l8-fsdp-lora-gc", L8, "CPU-loaded FSDP2 LoRA 8B", grad_ckpt=True), 2),
        fsdp(single.full("fc-l8-fsdp-full-gc", L8, "CPU-loaded FSDP2 full FT 8B on 8 (GPU-built: 33.65 GiB at prepare)", grad_ckpt=True), 8),
        fsdp(single.lora("fc-l3-fsdp-lora-gc", L3, "CPU-loaded FSDP2 LoRA 3B on 4", grad_ckpt=True), 4),
        fsdp(single.lora("fc-tiny-fsdp-lora-gc", "tinyllama-1.1b-chat-v1.0", "CPU-loaded FSDP2 LoRA, untied 32k", grad_ckpt=True), 2),
        fsdp(single.full("fc-q7-fsdp-full-gc", Q7, "CPU-loaded FSDP2 full FT 7B on 4, untied 152k", grad_ckpt=True), 4),
        fsdp(single.full("fc-l1-fsdp-full-gc-ga2", L1, "CPU-loaded FSDP2 full FT 1B, two micro-steps", grad_ckpt=True, grad_accum=2), 2),
        fsdp(single.full("fc-l8-fsdp-full-gc", L8, "CPU-loaded FSDP2 full FT 8B", grad_ckpt=True), 2),
    ]


def fsdp_cpu_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for the CPU-loaded FSDP2 prepare (fsdp_steps._fsdp_prepare_from_cpu, read from the fsdp-cpu histories of
    2026-12-04): the fsdp-holdout setups but Qwen2.5-7B (measured before with the model built on the GPU) loaded on the
    CPU, and a 14B on 8; as fake ranks, predicted and committed before they run."""
    again = [replace(r, name="ch-" + r.name.removeprefix("fh-")) for r in fsdp_holdout_grid() if r.model != Q7]
    return [*again, _multi_on(single.full("ch-q14-fsdp-full-gc", "qwen2.5-14b", "14B on 8", grad_ckpt=True), 8, "fsdp")]


def fsdp_qlora_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for FSDP QLoRA's closed forms as read from the two fsdp-lora QLoRA fake ranks (session 15: the whole
    loaded 4-bit model held while accelerate shards it, no autocast copy of the fp32 lm_head under FSDP's bf16
    all-gathers): a tied 152k vocabulary, predicted and committed before it runs."""
    return [_multi_on(single.qlora("qh-q15-fsdp-qlora-gc", "qwen2.5-1.5b", "QLoRA + FSDP, tied 152k", grad_ckpt=True), 2, "fsdp")]


def fsdp_lora_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for the simulated FSDP2 LoRA sequence (fsdp_steps.fsdp_lora_plan, read from fc-l1- and
    fc-l8-fsdp-lora-gc-x2 on 2026-12-04): Qwen2's biases and an untied 152k vocabulary on 4, Qwen3's q/k norms, Mistral
    on 8, a longer sequence, a tied 152k vocabulary, batch 2; CPU-loaded fake ranks, predicted and committed before they
    run. Each run its own GPU count (`num_gpus` unused)."""
    fsdp = partial(_multi_on, parallel="fsdp")
    return [
        fsdp(single.lora("lh-q7-fsdp-lora-gc", Q7, "Qwen2 biases, untied 152k, on 4", grad_ckpt=True), 4),
        fsdp(single.lora("lh-q3-8-fsdp-lora-gc", single.Q3_8, "Qwen3 q/k norms", grad_ckpt=True), 2),
        fsdp(single.lora("lh-m7-fsdp-lora-gc", single.M7, "Mistral 7B on 8", grad_ckpt=True), 8),
        fsdp(single.lora("lh-l1-fsdp-lora-gc-s4096", L1, "4096 tokens", grad_ckpt=True, seq_len=4096), 2),
        fsdp(single.lora("lh-q15-fsdp-lora-gc", "qwen2.5-1.5b", "tied 152k vocabulary", grad_ckpt=True), 2),
        fsdp(single.lora("lh-l8-fsdp-lora-gc-b2", L8, "batch 2 on 4", grad_ckpt=True, batch_size=2), 4),
    ]


def zero2_ranks_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for ZeRO-2 over more ranks in the simulated sequence (zero_steps.py: rank 0's partition, read from
    the three zero-x2 ZeRO-2 fake ranks on 2026-12-04): a tied 152k vocabulary with biases on 4, 28 layers on 2, an untied
    lm_head with the optimizer offloaded on 4, Qwen3 on 8, an 8B on 8, a 7B LoRA on 4, 4096 tokens offloaded, Mistral
    LoRA offloaded; fake ranks, predicted and committed before they run. Each run its own GPU count."""
    return [
        _zero(single.full("zr-q15-zero2-full-gc", "qwen2.5-1.5b", "tied 152k, biases, on 4", grad_ckpt=True), "zero2", num_gpus=4),
        _zero(single.full("zr-l3-zero2-full-gc", L3, "28 layers on 2", grad_ckpt=True), "zero2", num_gpus=2),
        _zero(single.full("zr-tiny-zero2-full-gc-offopt", "tinyllama-1.1b-chat-v1.0", "untied lm_head, offload, on 4",
                          grad_ckpt=True), "zero2", "optimizer", num_gpus=4),
        _zero(single.full("zr-q3-17-zero2-full-gc", "qwen3-1.7b", "Qwen3 on 8", grad_ckpt=True), "zero2", num_gpus=8),
        _zero(single.full("zr-l8-zero2-full-gc", L8, "8B full FT on 8", grad_ckpt=True), "zero2", num_gpus=8),
        _zero(single.lora("zr-q7-zero2-lora-gc", Q7, "7B LoRA on 4", grad_ckpt=True), "zero2", num_gpus=4),
        _zero(single.full("zr-l1-zero2-full-gc-offopt-s4096", L1, "4096 tokens, offload, on 2", grad_ckpt=True,
                          seq_len=4096), "zero2", "optimizer", num_gpus=2),
        _zero(single.lora("zr-m7-zero2-lora-gc-offopt", single.M7, "Mistral LoRA, offload, on 2", grad_ckpt=True),
              "zero2", "optimizer", num_gpus=2),
    ]  # fmt: skip


def zero3_ranks_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for ZeRO-3 full fine-tuning over more ranks in the simulated sequence (the all-gathers of
    zero3_fetch.py, rank 0's partitions; read from l1-zero3-full-gc-x2 alone on 2026-12-04): a tied 152k vocabulary with
    biases, 28 layers on 4, an untied lm_head, Qwen3 on 4, an 8B on 8, a 7B on 4, 4096 tokens, 36 layers on 8; fake
    ranks, predicted and committed before they run. Each run its own GPU count."""
    z3 = lambda name, model, why, n, **kw: _zero(single.full(name, model, why, grad_ckpt=True, **kw), "zero3", num_gpus=n)
    return [
        z3("zq-q15-zero3-full-gc", "qwen2.5-1.5b", "tied 152k, biases", 2),
        z3("zq-l3-zero3-full-gc", L3, "28 layers on 4", 4),
        z3("zq-tiny-zero3-full-gc", "tinyllama-1.1b-chat-v1.0", "untied lm_head", 2),
        z3("zq-q3-17-zero3-full-gc", "qwen3-1.7b", "Qwen3 q/k norms on 4", 4),
        z3("zq-l8-zero3-full-gc", L8, "8B on 8", 8),
        z3("zq-q7-zero3-full-gc", Q7, "7B on 4", 4),
        z3("zq-l1-zero3-full-gc-s4096", L1, "4096 tokens", 2, seq_len=4096),
        z3("zq-q3b-zero3-full-gc", "qwen2.5-3b", "36 layers on 8", 8),
    ]


def zero3_lora_ranks_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for ZeRO-3 LoRA over more ranks in the simulated sequence (PEFT's modules in zero3_modules.py, lora_A's
    external parameter and the recomputation's frozen weights in zero3_fetch.py; read from the two 8B histories of
    zero-x2 on 2026-12-04): 1B, Qwen2.5-7B on 4, Qwen3-8B, a tied 152k vocabulary, an 8B on 8, 4096 tokens, and the
    optimizer offloaded on Mistral and Qwen2.5-3B x4; fake ranks, predicted and committed before they run."""
    z3 = lambda name, model, why, n, offload="none", **kw: _zero(
        single.lora(name, model, why, grad_ckpt=True, **kw), "zero3", offload, num_gpus=n)
    return [
        z3("zl-l1-zero3-lora-gc", L1, "1B on 2", 2),
        z3("zl-q7-zero3-lora-gc", Q7, "Qwen2 biases, untied 152k, on 4", 4),
        z3("zl-q3-8-zero3-lora-gc", single.Q3_8, "Qwen3 q/k norms", 2),
        z3("zl-q15-zero3-lora-gc", "qwen2.5-1.5b", "tied 152k vocabulary", 2),
        z3("zl-l8-zero3-lora-gc", L8, "8B on 8", 8),
        z3("zl-l3-zero3-lora-gc-s4096", L3, "4096 tokens", 2, seq_len=4096),
        z3("zl-m7-zero3-lora-gc-offopt", single.M7, "Mistral, optimizer offloaded", 2, "optimizer"),
        z3("zl-q3b-zero3-lora-gc-offopt", "qwen2.5-3b", "36 layers, optimizer offloaded, on 4", 4, "optimizer"),
    ]


def zero3_offload_ranks_holdout_grid(num_gpus: int = 2) -> list[RunSpec]:
    """A hold-out for ZeRO-3 with CPU offload over more ranks in the simulated sequence (2026-12-06): the optimizer
    offloaded under full fine-tuning on 2, 4 and 8 ranks (zero3_steps.py read from the one-GPU runs alone: no
    multi-rank history had it), parameters and optimizer offloaded on 2, 4 and 8 ranks (zero3_offload.py, read from
    the two 2-rank histories l3- and l8-zero3-full-gc-offall-x2), and one LoRA with everything offloaded, which the
    closed forms still estimate; fake ranks, predicted and committed before they run."""
    z3 = lambda name, model, why, n, offload, **kw: _zero(
        single.full(name, model, why, grad_ckpt=True, **kw), "zero3", offload, num_gpus=n)
    lora = _zero(single.lora("zo-l8-zero3-lora-gc-offall", L8, "LoRA, everything offloaded (closed forms)",
                             grad_ckpt=True), "zero3", "all", num_gpus=2)
    return [
        z3("zo-l8-zero3-full-gc-offopt", L8, "8B, optimizer offloaded, on 2", 2, "optimizer"),
        z3("zo-l3-zero3-full-gc-offopt", L3, "3B, optimizer offloaded, on 4", 4, "optimizer"),
        z3("zo-q15-zero3-full-gc-offopt", "qwen2.5-1.5b", "tied 152k, optimizer offloaded, on 8", 8, "optimizer"),
        z3("zo-q7-zero3-full-gc-offall", Q7, "7B, everything offloaded, on 4", 4, "all"),
        z3("zo-l1-zero3-full-gc-offall", L1, "1B, everything offloaded, on 8", 8, "all"),
        z3("zo-q3-17-zero3-full-gc-offall", "qwen3-1.7b", "Qwen3 q/k norms, everything offloaded", 2, "all"),
        z3("zo-tiny-zero3-full-gc-offall-s4096", "tinyllama-1.1b-chat-v1.0", "untied, 4096 tokens, offloaded, on 4", 4,
           "all", seq_len=4096),
        lora,
    ]


GRIDS = {"multi": multi_grid, "fsdp-ranks": fsdp_ranks_grid, "fsdp-holdout": fsdp_holdout_grid, "zero": zero_grid, "scale": scale_grid, "zero-holdout": zero_holdout_grid,
         "zero-holdout2": zero_holdout2_grid, "zero2-seq": zero2_sequence_grid, "zero3-seq": zero3_sequence_grid,
         "zero3-large": zero3_large_grid, "ddp-holdout": ddp_holdout_grid,
         "zero3-offload-hist": zero3_offload_history_grid, "zero3-offload": zero3_offload_grid,
         "zero-lora-holdout": zero_lora_holdout_grid, "zero-lora-holdout2": zero_lora_holdout2_grid,
         "fsdp-lora": fsdp_lora_grid, "fsdp-cpu": fsdp_cpu_grid,
         "fsdp-cpu-holdout": fsdp_cpu_holdout_grid,
         "fsdp-qlora-holdout": fsdp_qlora_holdout_grid,
         "fsdp-lora-holdout": fsdp_lora_holdout_grid, "zero2-ranks-holdout": zero2_ranks_holdout_grid,
         "zero3-ranks-holdout": zero3_ranks_holdout_grid, "zero3-lora-ranks-holdout": zero3_lora_ranks_holdout_grid,
         "zero3-offload-ranks-holdout": zero3_offload_ranks_holdout_grid}


def settings(spec: RunSpec) -> str:
    return single.settings(spec)  # specs.setup_label: names "2xddp"/"2xfsdp"


def gpu_count() -> int | None:
    """CUDA devices visible to this process, through NVML (no CUDA context); None if unknown."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        return None
    count = 0
    while count < n and single.nvml_device_index(count) is not None:
        count += 1
    return count


def estimate_seconds(spec: RunSpec, params: int | None, *, first_qlora_of_model: bool) -> float:
    """Rough wall time of one torchrun launch, for the budget guard: every rank is a new
    interpreter (~17 s of imports on the H100 machine, in parallel), NCCL set-up ~5 s, then what
    a 1-GPU run of the same model costs (``campaign.estimate_seconds`` as a new interpreter)."""
    one = single.estimate_seconds(spec, params, first_qlora_of_model=first_qlora_of_model, forked=False)
    return one + 5.0


def summary_lines(grid: list[RunSpec], progress: dict[str, dict[str, Any]]) -> list[str]:
    lines = single.summary_lines(grid, progress)
    for name, e in progress.items():
        ranks = e.get("per_rank")
        if ranks:
            lines.append(f"    {name}: " + "; ".join(ranks))
    return lines


def entry_from_run(spec: RunSpec, run, record: Path, wall_s: float) -> dict[str, Any]:
    entry = single.entry_from_run(spec, run, record, wall_s, None)
    entry["settings"] = settings(spec)
    x = run.extra
    fake = x.get("process_group") == "fake"  # one record of rank 0 alone (fake_rank.py): no per-rank values
    entry["per_rank"] = [] if fake else [
        f"rank{r} alloc {single._gib(x.get(f'rank{r}_max_allocated_bytes'))} "
        f"resv {single._gib(x.get(f'rank{r}_max_reserved_bytes'))} "
        f"device {single._gib(x.get(f'rank{r}_device_peak_bytes'))} GiB"
        for r in range(run.environment.num_gpus)
    ]
    entry["engine"] = x.get("trainer_wrapped_model")
    return entry


def frames_off_for_zero3() -> None:
    """Record ZeRO-3 histories without Python stacks: with them (VRAMPLAN_MEMORY_HISTORY_FRAMES=1, the trainer's
    default) every ZeRO-3 run fails in step 0's backward, in DeepSpeed's LinearFunctionForZeroStage3 under the
    checkpoint recomputation ("SystemError: <built-in method apply of FunctionMeta object> returned NULL without
    setting an exception", torch 2.11, DeepSpeed 0.19.8: 2026-12-03 and again on 16 fake-rank runs of 2026-12-06).
    An explicit VRAMPLAN_MEMORY_HISTORY_FRAMES=1 is kept, with a warning."""
    if os.environ.get("VRAMPLAN_MEMORY_HISTORY_FRAMES", "0") != "0":
        print("warning: ZeRO-3 runs with the allocator history's Python stacks fail in backward (SystemError in "
              "LinearFunctionForZeroStage3 under checkpointing); unset VRAMPLAN_MEMORY_HISTORY_FRAMES to record "
              "them without", file=sys.stderr, flush=True)  # fmt: skip
        return
    os.environ["VRAMPLAN_MEMORY_HISTORY_FRAMES"] = "0"
    print("ZeRO-3 runs: allocator histories recorded without Python stacks (VRAMPLAN_MEMORY_HISTORY_FRAMES=0)", flush=True)


def select(grid: list[RunSpec], only: str | None) -> list[RunSpec]:
    if not only:
        return grid
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(r.name, p) for r in grid)]
    if unknown:
        raise SystemExit(f"--only: no run named {', '.join(unknown)} (see --list)")
    return [r for r in grid if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "campaign-multi")
    parser.add_argument("--num-gpus", type=int, default=2)
    parser.add_argument("--only", help="comma list of run names or globs")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting runs after this many seconds")
    parser.add_argument("--timeout-s", type=float, default=240.0, help="per run (the whole torchrun launch)")
    parser.add_argument("--steps", type=int, default=None, help="override the optimizer steps of every run")
    parser.add_argument("--checkpoint-cache", type=Path, default=None, help="QLoRA random checkpoints")
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs that failed or timed out")
    parser.add_argument("--list", action="store_true", help="print the selected grid and exit")
    parser.add_argument("--snapshots", action="store_true",
                        help="record each run's allocator history to <out>/snapshots/<name>.pickle (--num-gpus 1)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="multi",
                        help="multi: DDP/FSDP (issue 5); zero: DeepSpeed ZeRO and QLoRA+FSDP (issue 15); "
                             "scale: 4 and 8 GPUs (issue 16)")  # fmt: skip
    parser.add_argument("--fake-rank", action="store_true",
                        help="run rank 0 alone on one GPU over torch's fake process group (allocator histories of "
                             "--num-gpus N runs, no NCCL memory; vramplan/trainer/fake_rank.py)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.snapshots and args.num_gpus != 1 and not args.fake_rank:
        parser.error("--snapshots records one process: use it with --num-gpus 1 or --fake-rank")
    if args.fake_rank and args.num_gpus < 2:
        parser.error("--fake-rank stands in for a launch of 2 or more ranks: give --num-gpus 2 or more")

    grid = GRIDS[args.grid](args.num_gpus)
    if args.num_gpus == 1:  # FSDP needs two ranks; ZeRO runs at world size 1
        grid = [r for r in grid if r.setup.parallel in ("zero2", "zero3")]
    chosen = select(grid, args.only)
    if args.list:
        for r in chosen:
            print(f"{grid.index(r):>3} {r.name:<20} {r.model:<16} {settings(r):<64} {r.why}")
        return 0

    if args.snapshots and any(r.setup.parallel == "zero3" for r in chosen):
        frames_off_for_zero3()

    t0 = time.monotonic()
    gpu, count = single.gpu_info(), gpu_count()
    print(f"gpu: {gpu or 'none'} x {count}; out: {args.out}", flush=True)
    if count is not None and count < (1 if args.fake_rank else args.num_gpus):
        print(f"error: {args.num_gpus} GPUs needed, {count} visible", file=sys.stderr)
        return 2
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    progress_path = out / "campaign-progress.jsonl"
    progress = single.load_progress(progress_path)
    cache = args.checkpoint_cache or default_checkpoint_cache()
    done_status = {"ok", "oom", "skipped"} | (set() if args.retry_failed else {"failed", "timeout"})
    todo = [r for r in chosen if progress.get(r.name, {}).get("status") not in done_status]
    params = single.cached_param_counts(out / "params.json", sorted({r.model for r in todo})) if todo else {}
    last_qlora_use = {r.model: i for i, r in enumerate(todo) if r.setup.method == "qlora"}
    print(f"{len(todo)} runs to do ({len(chosen) - len(todo)} already done)", flush=True)

    stopped = None
    qlora_seen: set[str] = set()
    try:
        for i, spec in enumerate(todo):
            first_qlora = spec.setup.method == "qlora" and spec.model not in qlora_seen
            if spec.setup.method == "qlora":
                qlora_seen.add(spec.model)
            expected = estimate_seconds(spec, params.get(spec.model), first_qlora_of_model=first_qlora)
            left = None if args.budget_s is None else args.budget_s - (time.monotonic() - t0)
            if left is not None and left < max(20.0, 1.2 * expected):
                stopped = f"budget of {args.budget_s:.0f} s reached; {len(todo) - i} runs left"
                break
            base = {"name": spec.name, "model": spec.model, "settings": settings(spec)}
            timeout, budget_bound = args.timeout_s, False
            if left is not None and left < timeout:
                timeout, budget_bound = max(left, 1.0), True
            print(f"[{i + 1}/{len(todo)}] {spec.name}: {spec.model} {settings(spec)}", flush=True)
            started = time.monotonic()
            try:
                run = measure_in_subprocess(
                    spec.model,
                    spec.setup,
                    args.steps or spec.steps,
                    checkpoint_cache=cache,
                    runs_dir=out,
                    timeout_s=timeout,
                    notes=f"campaign issue5 multi-GPU: {spec.name}",
                    progress=lambda msg: print(f"    {msg}", flush=True),
                    log_path=out / "logs" / f"{spec.name}.log",
                    memory_snapshot=out / "snapshots" / f"{spec.name}.pickle" if args.snapshots else None,
                    fake_rank=args.fake_rank,
                )
                entry = entry_from_run(spec, run, single._record_path(out, run), time.monotonic() - started)
            except MeasurementError as exc:
                entry = single.failure_entry(base, exc, started, budget_bound)
            single.append_progress(progress_path, entry)
            progress[spec.name] = entry
            print(f"    -> {entry['status']}" + (f": {entry['error']}" if entry.get("error") else ""), flush=True)
            for line in entry.get("per_rank") or ():
                print(f"       {line}", flush=True)
            if spec.setup.method == "qlora" and last_qlora_use.get(spec.model) == i:
                single._drop_checkpoints(cache, spec.model)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        single.write_summary(out, summary_lines(grid, progress), stopped, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
