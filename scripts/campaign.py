#!/usr/bin/env python3
"""Measurement campaign: run a grid of short training runs, one fresh process each, on this GPU.

Usage (from the repository root; runs on any single NVIDIA GPU):

    python scripts/campaign.py --list                       # the grid with indices, nothing run
    python scripts/campaign.py --out out/campaign-h100 --budget-s 540
    python scripts/campaign.py --only l8-lora-gc,l1-full    # names (comma list, fnmatch globs ok)
    python scripts/campaign.py --start 10 --limit 5

Each run is ``vramplan.trainer.measure_in_subprocess``: a fresh process with
PYTORCH_CUDA_ALLOC_CONF set for the run (so allocator options and memory statistics start clean),
a per-run timeout, and the record saved as ``<out>/<gpu-id>/<run_id>.json``. "Fresh process" is a
fork of a warm server that has imported torch/transformers but never touched CUDA
(``vramplan/trainer/forkserver.py``; ~7 s instead of ~22 s for a 1B run, same numbers), or a new
interpreter for expandable_segments runs (``--no-fork-server``: always). The grid is ordered
by priority, so a campaign cut short by ``--budget-s`` still has the core runs. Progress goes to
``<out>/campaign-progress.jsonl``; running again with the same ``--out`` resumes (runs already
done are not repeated) and the summary (``<out>/campaign-summary.txt``, also printed) covers
every run of that directory. Runs whose parameters alone cannot fit the GPU are skipped.
QLoRA runs first build a random bf16 checkpoint of the model (once, cached in
``--checkpoint-cache``) and the cache entry is deleted after the model's last QLoRA run.

The driver never imports torch, so it holds no GPU memory while a run measures.

On the device tool (10 minutes a call) run it in slices: ``bash scripts/device_campaign.sh
--budget-s 540`` per call; each call packs ``out/campaign`` into ``$OUT/campaign.tgz``. On a warm
machine the next call resumes from ``out/campaign``; on a fresh one, unpack the last tgz into
``out/campaign`` here and name it in ``carry`` so the progress file travels.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vramplan.runs import read_run
from vramplan.specs import LoraSpec, TrainingSetup, setup_label
from vramplan.trainer.errors import MeasurementError
from vramplan.trainer.forkserver import ForkServer, ForkServerError
from vramplan.trainer.gpu_memory import nvml_device_index
from vramplan.trainer.worker import default_checkpoint_cache, measure_in_subprocess

GIB = 2**30
DEFAULT_STEPS = 3
QV = ("q_proj", "v_proj")


# ============================================================================ the grid
@dataclass(frozen=True)
class CapFrom:
    """A memory cap derived from an earlier run of the same campaign:
    ``cap = factor * <ref run's measurement field> + add_mib``."""

    ref: str
    measurement: str  # "max_allocated_bytes" or "max_reserved_bytes"
    factor: float
    add_mib: float = 0.0


@dataclass(frozen=True)
class RunSpec:
    name: str
    model: str
    setup: TrainingSetup
    why: str = ""
    cap_gib: float | None = None
    cap_from: CapFrom | None = None
    steps: int = DEFAULT_STEPS


def _spec(name: str, model: str, method: str, why: str = "", *, cap_from=None, steps=DEFAULT_STEPS, **kw) -> RunSpec:
    lora_kw = {k[5:]: kw.pop(k) for k in list(kw) if k.startswith("lora_")}
    if method in ("lora", "qlora"):
        lora_kw.setdefault("rank", 16)
        kw["lora"] = LoraSpec(**lora_kw)
    if method == "qlora":
        kw.setdefault("quant", "nf4")
    kw.setdefault("seq_len", 2048)
    return RunSpec(name, model, TrainingSetup(method=method, **kw), why, cap_from=cap_from, steps=steps)


def full(name, model, why="", **kw):
    return _spec(name, model, "full", why, **kw)


def lora(name, model, why="", **kw):
    return _spec(name, model, "lora", why, **kw)


def qlora(name, model, why="", **kw):
    return _spec(name, model, "qlora", why, **kw)


L8, L1, L3 = "llama-3.1-8b", "llama-3.2-1b", "llama-3.2-3b"
Q05, Q7, Q3_8 = "qwen2.5-0.5b", "qwen2.5-7b", "qwen3-8b"
M7, G2, PHI3 = "mistral-7b-v0.3", "gemma-2-2b", "phi-3-mini-4k-instruct"
OLMOE, Q3_MOE = "olmoe-1b-7b-0924", "qwen3-30b-a3b"


def issue3_grid() -> list[RunSpec]:
    """The issue-3 calibration grid, most important first. Defaults: seq 2048, batch 1, rank 16,
    all-linear, nf4 + double quant, adamw_torch_fused, bf16 weights, sdpa, no GC, default allocator."""
    return [
        # -- core: one run per family and method (M1.1, M5.1, M8.1) --------------------------------
        qlora("l8-qlora-gc", L8, "canonical QLoRA 8B", grad_ckpt=True),
        lora("l8-lora-gc", L8, "canonical LoRA 8B", grad_ckpt=True),
        full("l1-full", L1, "full FT 1B, no GC (phase peaks)"),
        lora("l8-lora", L8, "LoRA 8B without GC"),
        qlora("l8-qlora", L8, "QLoRA 8B without GC"),
        full("l1-full-gc", L1, "full FT 1B with GC", grad_ckpt=True),
        qlora("q7-qlora-gc", Q7, "Qwen2.5 QLoRA (vocab 152k)", grad_ckpt=True),
        lora("m7-lora-gc", M7, "Mistral LoRA", grad_ckpt=True),
        lora("q3-8-lora-gc", Q3_8, "Qwen3 LoRA (qk-norm)", grad_ckpt=True),
        lora(
            "g2-lora-eager",
            G2,
            "Gemma-2 LoRA (vocab 256k, softcapping; transformers has no SDPA for it)",
            seq_len=1024,
            attn="eager",
        ),
        lora("phi3-lora-gc", PHI3, "Phi-3 LoRA (fused qkv / gate_up)", grad_ckpt=True),
        full("q05-full-b4", Q05, "full FT 0.5B, batch 4", seq_len=1024, batch_size=4),
        full("l3-full-gc", L3, "full FT 3B with GC", grad_ckpt=True),
        lora(
            "olmoe-lora-gc",
            OLMOE,
            "MoE LoRA (64 experts; PEFT >= 0.18 puts LoRA on the fused experts, which needs dropout 0)",
            grad_ckpt=True,
            lora_dropout=0.0,
        ),
        lora("l8-lora-gc-es", L8, "expandable_segments vs l8-lora-gc", grad_ckpt=True, expandable_segments=True),
        full("l1-full-es", L1, "expandable_segments vs l1-full", expandable_segments=True),
        # -- sequence sweep (M5.1 / M6) ---------------------------------------------------------
        lora("l8-lora-gc-s512", L8, "seq sweep", grad_ckpt=True, seq_len=512),
        lora("l8-lora-gc-s4096", L8, "seq sweep", grad_ckpt=True, seq_len=4096),
        lora("l8-lora-gc-s8192", L8, "seq sweep (loss term 12*N*V)", grad_ckpt=True, seq_len=8192),
        qlora("l8-qlora-gc-s4096", L8, "seq sweep", grad_ckpt=True, seq_len=4096),
        qlora("l8-qlora-gc-s8192", L8, "seq sweep", grad_ckpt=True, seq_len=8192),
        lora("l8-lora-s4096", L8, "activations without GC", seq_len=4096),
        # -- memory caps bracketing the smallest memory l1-full runs in ---------------------------
        full(
            "l1-full-cap-under",
            L1,
            "cap 3% under max_allocated: expect OOM",
            cap_from=CapFrom("l1-full", "max_allocated_bytes", 0.97),
        ),
        full(
            "l1-full-cap-between",
            L1,
            "cap between allocated and reserved",
            cap_from=CapFrom("l1-full", "max_allocated_bytes", 1.0, add_mib=256),
        ),
        full(
            "l1-full-cap-over",
            L1,
            "cap 2% over max_reserved: expect fit",
            cap_from=CapFrom("l1-full", "max_reserved_bytes", 1.02),
        ),
        # -- batch sweep ------------------------------------------------------------------------
        lora("l1-lora-b1", L1, "batch sweep", seq_len=1024, batch_size=1),
        lora("l1-lora-b2", L1, "batch sweep", seq_len=1024, batch_size=2),
        lora("l1-lora-b4", L1, "batch sweep", seq_len=1024, batch_size=4),
        lora("l1-lora-b8", L1, "batch sweep", seq_len=1024, batch_size=8),
        # -- rank and targets -------------------------------------------------------------------
        lora("l8-lora-gc-r8", L8, "rank sweep", grad_ckpt=True, lora_rank=8),
        lora("l8-lora-gc-r64", L8, "rank sweep", grad_ckpt=True, lora_rank=64),
        lora("l8-lora-gc-qv", L8, "q_proj,v_proj targets", grad_ckpt=True, lora_targets=QV),
        qlora("l8-qlora-gc-r64", L8, "rank sweep", grad_ckpt=True, lora_rank=64),
        qlora("l8-qlora-gc-qv", L8, "q_proj,v_proj targets", grad_ckpt=True, lora_targets=QV),
        # -- optimizers (full FT, where states matter) --------------------------------------------
        full("l1-full-gc-s1024", L1, "optimizer baseline (fused)", grad_ckpt=True, seq_len=1024),
        full(
            "l1-full-gc-s1024-foreach",
            L1,
            "foreach AdamW sqrt transient",
            grad_ckpt=True,
            seq_len=1024,
            optimizer="adamw_torch",
        ),
        full(
            "l1-full-gc-s1024-8bit",
            L1,
            "bnb 8-bit (embeddings 32-bit)",
            grad_ckpt=True,
            seq_len=1024,
            optimizer="adamw_8bit",
        ),
        full(
            "l1-full-gc-s1024-paged8bit",
            L1,
            "paged states outside torch",
            grad_ckpt=True,
            seq_len=1024,
            optimizer="paged_adamw_8bit",
        ),
        full("l3-full-gc-8bit", L3, "8-bit Adam at 3B", grad_ckpt=True, optimizer="adamw_8bit"),
        # -- gradient accumulation -----------------------------------------------------------------
        full("l1-full-gc-s1024-ga4", L1, "GA keeps grads during fwd/bwd", grad_ckpt=True, seq_len=1024, grad_accum=4),
        lora("l8-lora-gc-ga4", L8, "GA with LoRA", grad_ckpt=True, grad_accum=4),
        # -- fp32 weights (small models only) -------------------------------------------------------
        full("l1-full-fp32-gc", L1, "fp32 weights + bf16 autocast", grad_ckpt=True, seq_len=1024, dtype="fp32"),
        full("q05-full-fp32", Q05, "fp32 weights, no GC", seq_len=1024, dtype="fp32"),
        lora("q05-lora-fp32", Q05, "fp32 base + LoRA", seq_len=1024, dtype="fp32"),
        # -- eager attention (short sequences only) -------------------------------------------------
        lora("l1-lora-s512", L1, "sdpa reference for eager", seq_len=512),
        lora("l1-lora-s512-eager", L1, "eager attention scores", seq_len=512, attn="eager"),
        full("q05-full-s512-eager", Q05, "eager, full FT", seq_len=512, batch_size=2, attn="eager"),
        # -- quantization variants ----------------------------------------------------------------
        qlora("l8-qlora-gc-fp4", L8, "fp4", grad_ckpt=True, quant="fp4"),
        qlora("l8-qlora-gc-nodq", L8, "nf4 without double quant", grad_ckpt=True, double_quant=False),
        qlora("l8-qlora-gc-int8", L8, "LLM.int8 weights", grad_ckpt=True, quant="int8"),
        qlora("l1-qlora", L1, "QLoRA small model, no GC"),
        # -- more allocator / dropout / bigger models ---------------------------------------------
        qlora("l8-qlora-gc-es", L8, "expandable_segments with QLoRA", grad_ckpt=True, expandable_segments=True),
        full(
            "q05-full-b4-es",
            Q05,
            "expandable_segments vs q05-full-b4",
            seq_len=1024,
            batch_size=4,
            expandable_segments=True,
        ),
        lora("l8-lora-gc-drop0", L8, "dropout 0 vs 0.05", grad_ckpt=True, lora_dropout=0.0),
        lora("q7-lora-b2", Q7, "Qwen2.5 LoRA batch 2, no GC", batch_size=2),
        full("l8-full-gc-8bit", L8, "8B full FT with 8-bit Adam (fits 80 GB?)", grad_ckpt=True, optimizer="adamw_8bit"),
        full("l8-full-gc", L8, "8B full FT fused AdamW (OOM on 80 GB expected)", grad_ckpt=True),
        lora(
            "q3moe-lora-gc-s1024-qv",
            Q3_MOE,
            "30B MoE, attention-only LoRA (weights 61 GB)",
            grad_ckpt=True,
            seq_len=1024,
            lora_targets=QV,
        ),
    ]


def holdout_grid() -> list[RunSpec]:
    """Issue 4 hold-out: setups none of the calibration runs has, predicted (and the predictions committed,
    docs/holdout/predictions.json) before they were measured. They test the steady-step loss-segment rule
    (full FT: other sequence lengths, batch, vocabularies, tied embeddings, softcapping) and the
    fragmentation fit (LoRA/QLoRA at other sizes)."""
    return [
        full("h-l1-full-gc-s4096", L1, "steady-loss rule, 4NV 1.96 GiB", grad_ckpt=True, seq_len=4096),
        full("h-l3-full-gc-s1024", L3, "steady-loss rule at 3B, s1024", grad_ckpt=True, seq_len=1024),
        full("h-l1-full-gc-b2", L1, "batch 2 x s1024 (same N as s2048)", grad_ckpt=True, seq_len=1024, batch_size=2),
        full("h-q15-full-gc", "qwen2.5-1.5b", "vocab 152k, tied embeddings", grad_ckpt=True),
        full("h-q3-17-full-gc", "qwen3-1.7b", "Qwen3, tied embeddings", grad_ckpt=True),
        full("h-smol17-full-gc", "smollm2-1.7b-instruct", "vocab 49k: fragmentation rule should bind", grad_ckpt=True),
        full("h-tiny-full-gc", "tinyllama-1.1b-chat-v1.0", "vocab 32k, untied", grad_ckpt=True),
        full("h-g2-full-gc-eager", G2, "softcapping, vocab 256k", grad_ckpt=True, seq_len=1024, attn="eager"),
        lora("h-l1-lora-gc-s4096", L1, "LoRA, long sequence", grad_ckpt=True, seq_len=4096),
        lora("h-q3-4b-lora-gc", "qwen3-4b", "LoRA on an unmeasured family size", grad_ckpt=True),
        lora("h-q05-lora-fp32-s2048", Q05, "fp32 base + LoRA (largest LOO miss), s2048", seq_len=2048, dtype="fp32"),
        qlora("h-l8-qlora-nodq-s4096", L8, "nf4 without double quant, s4096", grad_ckpt=True, seq_len=4096,
              double_quant=False),
        qlora("h-q15-qlora-gc", "qwen2.5-1.5b", "QLoRA small model with GC", grad_ckpt=True),
    ]


G3_4, G3_1, L3B = "gemma-3-4b-it", "gemma-3-1b-it", L3


def _stack(make, stack: str, liger: bool = False):
    """A grid entry maker that runs `make`'s setup with `stack` (and --liger)."""

    def entry(name, model, why="", **kw):
        return make(name, model, why, stack=stack, liger=liger, **kw)

    return entry


def stacks_grid() -> list[RunSpec]:
    """Issue 10: the stacks people run (TRL SFTTrainer, Liger kernels) on the H200, predicted first
    (docs/holdout/stacks-predictions.json, committed before any of these ran), plus hf setups of the H100 grid
    rerun on the H200 so context, NVML baseline and throughput are calibrated per GPU family. Gradient
    checkpointing is spelled out (SFTConfig turns it on by default; the grid says what it measures)."""
    tl, tq, tf = _stack(lora, "trl"), _stack(qlora, "trl"), _stack(full, "trl")
    ll, lq, lf = _stack(lora, "trl", True), _stack(qlora, "trl", True), _stack(full, "trl", True)
    hl, hq, hf = _stack(lora, "hf", True), _stack(qlora, "hf", True), _stack(full, "hf", True)
    no_drop = {"lora_dropout": 0.0}  # PEFT refuses dropout on fused experts
    return [
        # -- TRL SFTTrainer ----------------------------------------------------------------------------
        tq("s-l8-trl-qlora-gc", L8, "consumer recipe: 8B QLoRA, TRL, s2048", grad_ckpt=True),
        tq("s-l8-trl-qlora-gc-s4096", L8, "8B QLoRA TRL at 4k", grad_ckpt=True, seq_len=4096),
        tl("s-l8-trl-lora-gc", L8, "8B LoRA TRL", grad_ckpt=True),
        tl("s-l8-trl-lora", L8, "8B LoRA TRL without GC", grad_ckpt=False),
        tq("s-q7-trl-qlora-gc-s4096", Q7, "Qwen2.5 QLoRA TRL 4k (vocab 152k)", grad_ckpt=True, seq_len=4096),
        tf("s-l1-trl-full-gc", L1, "full FT TRL: fp32 lm_head grad in the head", grad_ckpt=True),
        tf("s-l1-trl-full-s1024", L1, "full FT TRL without GC", grad_ckpt=False, seq_len=1024),
        tl("s-g3-4-trl-lora-gc", G3_4, "Gemma 3 (262k vocabulary) LoRA TRL", grad_ckpt=True),
        tf("s-g3-1-trl-full-gc", G3_1, "Gemma 3 1B full FT TRL", grad_ckpt=True),
        tl("s-q3-8-trl-lora-gc", Q3_8, "Qwen3 LoRA TRL", grad_ckpt=True),
        tl("s-m7-trl-lora-gc", M7, "Mistral (vocab 32k) LoRA TRL", grad_ckpt=True),
        tl("s-olmoe-trl-lora-gc", OLMOE, "MoE LoRA TRL", grad_ckpt=True, **no_drop),
        tl("s-q3moe-trl-lora-qv-gc", Q3_MOE, "Qwen3-MoE 30B LoRA q,v TRL", grad_ckpt=True, seq_len=1024,
           lora_targets=QV),
        tl("s-l8-trl-lora-gc-b4", L8, "padded batches (variable lengths, b4)", grad_ckpt=True, seq_len=1024,
           batch_size=4),
        tf("s-l3-trl-full-gc", L3B, "3B full FT TRL", grad_ckpt=True),
        tl("s-phi3-trl-lora-gc", PHI3, "fused qkv LoRA TRL", grad_ckpt=True),
        # -- TRL SFTTrainer + Liger layer kernels ------------------------------------------------------
        ll("s-l8-trlliger-lora-gc", L8, "", grad_ckpt=True),
        lq("s-l8-trlliger-qlora-gc-s4096", L8, "", grad_ckpt=True, seq_len=4096),
        lf("s-l1-trlliger-full-gc", L1, "", grad_ckpt=True),
        ll("s-g3-4-trlliger-lora-gc", G3_4, "", grad_ckpt=True),
        lq("s-q7-trlliger-qlora-gc", Q7, "", grad_ckpt=True),
        ll("s-q3-8-trlliger-lora-s1024", Q3_8, "RMSNorm/SwiGLU saved bytes without GC", grad_ckpt=False,
           seq_len=1024),
        ll("s-m7-trlliger-lora-gc", M7, "", grad_ckpt=True),
        ll("s-l1-trlliger-lora", L1, "Liger layer kernels without GC", grad_ckpt=False),
        ll("s-phi3-trlliger-lora-gc", PHI3, "", grad_ckpt=True),
        ll("s-q3moe-trlliger-lora-qv-gc", Q3_MOE, "", grad_ckpt=True, seq_len=1024, lora_targets=QV),
        # -- transformers Trainer + Liger (fused linear cross-entropy) ---------------------------------
        hl("s-l8-liger-lora-gc", L8, "", grad_ckpt=True),
        hl("s-l8-liger-lora", L8, "", grad_ckpt=False),
        hq("s-l8-liger-qlora-gc-s4096", L8, "FLCE with an fp32 lm_head (weight cast per chunk)", grad_ckpt=True,
           seq_len=4096),
        hf("s-l1-liger-full-gc", L1, "FLCE computes the lm_head grad in the forward", grad_ckpt=True),
        hf("s-l1-liger-full-s1024", L1, "", grad_ckpt=False, seq_len=1024),
        hl("s-g3-4-liger-lora-gc", G3_4, "", grad_ckpt=True),
        hq("s-q7-liger-qlora-gc", Q7, "", grad_ckpt=True),
        hl("s-q3-8-liger-lora-gc", Q3_8, "", grad_ckpt=True),
        hl("s-m7-liger-lora-gc", M7, "", grad_ckpt=True),
        hf("s-l3-liger-full-gc", L3B, "", grad_ckpt=True),
        hl("s-olmoe-liger-lora-gc", OLMOE, "Liger does not patch OLMoE: hf terms", grad_ckpt=True, **no_drop),
        hl("s-g2-liger-lora-eager", G2, "Gemma-2 GeGLU, softcapping", seq_len=1024, attn="eager"),
        # -- hf setups of the H100 grid, rerun on the H200 ---------------------------------------------
        qlora("s-h200-l8-qlora-gc", L8, "H100 rerun", grad_ckpt=True),
        lora("s-h200-l8-lora-gc", L8, "H100 rerun", grad_ckpt=True),
        lora("s-h200-l8-lora", L8, "H100 rerun"),
        full("s-h200-l1-full-gc", L1, "H100 rerun", grad_ckpt=True),
        full("s-h200-l1-full-gc-s1024", L1, "H100 rerun", grad_ckpt=True, seq_len=1024),
        full("s-h200-l8-full-gc", L8, "H100 rerun", grad_ckpt=True),
        qlora("s-h200-q7-qlora-gc", Q7, "H100 rerun", grad_ckpt=True),
        lora("s-h200-m7-lora-gc", M7, "H100 rerun", grad_ckpt=True),
        full("s-h200-l3-full-gc", L3B, "H100 rerun", grad_ckpt=True),
        full("s-h200-q05-full-b4", Q05, "H100 rerun", seq_len=1024, batch_size=4),
    ]


#: grid name -> the function (looked up by name at run time, so tests can replace a grid)
GRIDS = {"issue3": "issue3_grid", "holdout": "holdout_grid", "stacks": "stacks_grid"}


# ============================================================================ GPU and size checks
def gpu_info() -> dict[str, Any] | None:
    """Name and total bytes of CUDA device 0 through NVML (creates no CUDA context); None if unknown."""
    try:
        import pynvml
    except ImportError:
        print("warning: nvidia-ml-py not installed: no size check, records under 'cpu' if no GPU", file=sys.stderr)
        return None
    try:
        pynvml.nvmlInit()
        index = nvml_device_index(0)
        if index is None:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        return {"name": name, "total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)}
    except pynvml.NVMLError as exc:
        print(f"warning: no GPU through NVML ({exc})", file=sys.stderr)
        return None


def param_counts(models: list[str]) -> dict[str, int]:
    """Exact parameter counts (meta-device build) from one worker process without a GPU."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "vramplan.trainer.worker", "params", *models],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        print(f"warning: parameter counts unavailable ({proc.stderr.strip()[-300:]})", file=sys.stderr)
        return {}
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, value in raw.items():
        if not isinstance(value, int):
            print(f"warning: {name}: {value}", file=sys.stderr)
    return {k: v for k, v in raw.items() if isinstance(v, int)}


def cached_param_counts(path: Path, models: list[str]) -> dict[str, int]:
    """param_counts, remembered in ``path`` so a resumed campaign does not count again."""
    known: dict[str, int] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [m for m in models if m not in known]
    if missing:
        known |= param_counts(missing)
        path.write_text(json.dumps(known, indent=1))
    return known


def lower_bound_bytes(params: int, setup: TrainingSetup) -> int:
    """Bytes that must be on the GPU whatever the activations: a skip filter, not an estimate.

    Weights at their stored width (nf4 0.5 B, int8 1 B); for full FT also gradients (same dtype)
    and resident optimizer states (AdamW 2x param dtype, bnb 8-bit 2 B; paged states can leave
    the GPU so count 0; SGD momentum 1x).
    """
    width = {"bf16": 2, "fp16": 2, "fp32": 4}[setup.dtype]
    if setup.method == "qlora":
        return int(params * (1.0 if setup.quant == "int8" else 0.5))
    if setup.method == "lora":
        return params * width
    states = {
        "adamw_torch_fused": 2 * width,
        "adamw_torch": 2 * width,
        "adamw_8bit": 2,
        "paged_adamw_8bit": 0,
        "paged_adamw_32bit": 0,
        "adafactor": 0,
        "sgd": width,
    }[setup.optimizer]
    return params * (2 * width + states)


def estimate_seconds(spec: RunSpec, params: int | None, *, first_qlora_of_model: bool, forked: bool) -> float:
    """Rough wall time of one run on an H100, for planning only. From the smoke runs of
    2026-11-23 (H100, torch 2.11; l1-full 7.3 s forked vs 22-24 s as a new interpreter): a new
    interpreter spends ~17 s importing the stack (a fork of the warm server ~4 s: Trainer, peft,
    bitsandbytes are imported by the child), CUDA init + step-0 warm-up ~3 s, build from config
    ~0.25 s/B params, QLoRA load+quantize ~1 s/B, the random checkpoint (once per model)
    ~10 s + 2.5 s/B, and training ~(steps x tokens x 6 x params) / 200 TFLOP/s (x1.33 with GC)."""
    b = (params or 1e9) / 1e9
    s = spec.setup
    new_process = not forked or s.expandable_segments
    t = (17.0 if new_process else 4.0) + 3.0 + (1.0 * b if s.method == "qlora" else 0.25 * b)
    if s.method == "qlora" and first_qlora_of_model:
        t += 10.0 + 2.5 * b + (0.0 if forked else 17.0)
    tokens = s.seq_len * s.batch_size * s.grad_accum * spec.steps
    t += tokens * 6 * (params or 1e9) * (1.33 if s.grad_ckpt else 1.0) / 200e12
    return t


def estimate_total_seconds(runs: list[RunSpec], params: dict[str, int], *, forked: bool) -> float:
    seen: set[str] = set()
    total = 0.0
    for r in runs:
        first = r.setup.method == "qlora" and r.model not in seen
        if r.setup.method == "qlora":
            seen.add(r.model)
        total += estimate_seconds(r, params.get(r.model), first_qlora_of_model=first, forked=forked)
    return total


# ============================================================================ driver
def select(grid: list[RunSpec], only: str | None, start: int, limit: int | None) -> list[RunSpec]:
    chosen = grid
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]
        chosen = [r for r in grid if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
        unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(r.name, p) for r in grid)]
        if unknown:
            raise SystemExit(f"--only: no run named {', '.join(unknown)} (see --list)")
    chosen = chosen[start:]
    return chosen[:limit] if limit is not None else chosen


def settings(spec: RunSpec) -> str:
    return setup_label(spec.setup)


def failure_entry(base: dict[str, Any], exc: Exception, started: float, budget_bound: bool) -> dict[str, Any]:
    """Progress entry of a run that did not finish: timed out (within the budget or not) or failed."""
    timed_out = "timed out" in str(exc)
    status = "budget" if timed_out and budget_bound else "timeout" if timed_out else "failed"
    return {
        **base,
        "status": status,
        "error": str(exc).splitlines()[0][:300],
        "wall_s": round(time.monotonic() - started, 1),
    }


def load_progress(path: Path) -> dict[str, dict[str, Any]]:
    """name -> last progress entry (later lines win)."""
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that run is simply redone
            entries[entry["name"]] = entry
    return entries


def append_progress(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def resolve_cap(spec: RunSpec, progress: dict[str, dict[str, Any]]) -> tuple[float | None, str | None]:
    """(cap in GiB, reason when it cannot be resolved)."""
    if spec.cap_from is None:
        return spec.cap_gib, None
    ref = progress.get(spec.cap_from.ref)
    if not ref or ref.get("status") != "ok" or not ref.get("record"):
        return None, f"reference run {spec.cap_from.ref} has no successful record"
    value = getattr(read_run(ref["record"]).measurements, spec.cap_from.measurement)
    if value is None:
        return None, f"reference run {spec.cap_from.ref} has no {spec.cap_from.measurement}"
    return (value * spec.cap_from.factor + spec.cap_from.add_mib * 2**20) / GIB, None


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def entry_from_run(spec: RunSpec, run, record: Path, wall_s: float, cap_gib: float | None) -> dict[str, Any]:
    m = run.measurements
    return {
        "name": spec.name,
        "status": "oom" if m.oom else "ok",
        "model": spec.model,
        "settings": settings(spec),
        "cap_gib": cap_gib,
        "run_id": run.run_id,
        "record": str(record),
        "max_allocated_bytes": m.max_allocated_bytes,
        "max_reserved_bytes": m.max_reserved_bytes,
        "device_peak_bytes": m.device_peak_bytes,
        "tokens_per_s": m.tokens_per_s,
        "oom": m.oom,
        "oom_phase": m.oom_phase,
        "wall_s": round(wall_s, 1),
    }


def summary_lines(grid: list[RunSpec], progress: dict[str, dict[str, Any]]) -> list[str]:
    order = {r.name: i for i, r in enumerate(grid)}
    header = (
        f"{'#':>3} {'run':<28} {'model':<24} {'settings':<58} {'alloc':>7} {'resv':>7} {'device':>7} "
        f"{'tok/s':>8} {'oom':<10} {'wall':>6} status"
    )
    lines = [header + "   (GiB)", "-" * len(header)]
    for name, e in sorted(progress.items(), key=lambda kv: order.get(kv[0], 10**6)):
        tps = e.get("tokens_per_s")
        oom = (
            ("yes:" + (e.get("oom_phase") or "?"))
            if e.get("oom")
            else "no"
            if e.get("status") in ("ok", "oom")
            else "-"
        )
        settings_text = e.get("settings", "") + (f" cap{e['cap_gib']:.2f}g" if e.get("cap_gib") else "")
        status = e.get("status", "?") + (f" ({e['error'][:80]})" if e.get("error") else "")
        lines.append(
            f"{order.get(name, -1):>3} {name:<28} {e.get('model', ''):<24} {settings_text:<58} "
            f"{_gib(e.get('max_allocated_bytes')):>7} {_gib(e.get('max_reserved_bytes')):>7} "
            f"{_gib(e.get('device_peak_bytes')):>7} {('-' if tps is None else f'{tps:.0f}'):>8} {oom:<10} "
            f"{e.get('wall_s', 0):>6} {status}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output dir (default out/campaign-<gpu>)")
    parser.add_argument("--only", help="comma list of run names or globs")
    parser.add_argument("--start", type=int, default=0, help="skip the first N selected runs")
    parser.add_argument("--limit", type=int, default=None, help="run at most N selected runs")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting runs after this many seconds")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per run (each child process)")
    parser.add_argument("--steps", type=int, default=None, help="override the optimizer steps of every run")
    parser.add_argument("--checkpoint-cache", type=Path, default=None, help="QLoRA random checkpoints")
    parser.add_argument("--keep-checkpoints", action="store_true", help="do not delete cached QLoRA checkpoints")
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs that failed or timed out")
    parser.add_argument("--no-size-check", action="store_true", help="do not skip runs too big for the GPU")
    parser.add_argument("--no-fork-server", action="store_true", help="start every run as a new interpreter")
    parser.add_argument(
        "--snapshots", action="store_true", help="record each run's allocator history to <out>/snapshots/<name>.pickle"
    )
    parser.add_argument("--grid", choices=sorted(GRIDS), default="issue3", help="which run grid (default issue3)")
    parser.add_argument("--list", action="store_true", help="print the selected grid and exit")
    args = parser.parse_args(argv)

    grid = globals()[GRIDS[args.grid]]()
    chosen = select(grid, args.only, args.start, args.limit)
    if args.list:
        for r in chosen:
            print(f"{grid.index(r):>3} {r.name:<28} {r.model:<24} {settings(r):<58} {r.why}")
        print(f"{len(chosen)} runs, {len({r.model for r in chosen})} models")
        return 0

    t0 = time.monotonic()
    gpu = gpu_info()
    slug = "cpu" if gpu is None else "".join(c if c.isalnum() else "-" for c in gpu["name"].lower()).strip("-")
    out: Path = args.out or ROOT / "out" / f"campaign-{slug}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    progress_path = out / "campaign-progress.jsonl"
    progress = load_progress(progress_path)
    cache = args.checkpoint_cache or default_checkpoint_cache()
    print(f"gpu: {gpu or 'none (CPU run)'}; out: {out}; checkpoint cache: {cache}", flush=True)

    done_status = {"ok", "oom", "skipped"} | (set() if args.retry_failed else {"failed", "timeout"})
    todo = [r for r in chosen if progress.get(r.name, {}).get("status") not in done_status]
    params = cached_param_counts(out / "params.json", sorted({r.model for r in todo})) if todo else {}
    last_qlora_use = {r.model: i for i, r in enumerate(todo) if r.setup.method == "qlora"}
    server = None
    if todo and not args.no_fork_server:
        try:
            server = ForkServer()
            print("fork server ready (runs fork from it; expandable_segments runs start a new interpreter)", flush=True)
        except MeasurementError as exc:
            print(f"warning: no fork server, every run starts a new interpreter: {exc}", file=sys.stderr)
    estimate = estimate_total_seconds(todo, params, forked=server is not None)
    print(
        f"{len(todo)} runs to do ({len(chosen) - len(todo)} already done); rough estimate {estimate / 60:.1f} min",
        flush=True,
    )

    stopped = None
    qlora_seen: set[str] = set()
    try:
        for i, spec in enumerate(todo):
            first_qlora = spec.setup.method == "qlora" and spec.model not in qlora_seen
            if spec.setup.method == "qlora":
                qlora_seen.add(spec.model)
            expected = estimate_seconds(
                spec, params.get(spec.model), first_qlora_of_model=first_qlora, forked=server is not None
            )
            left = None if args.budget_s is None else args.budget_s - (time.monotonic() - t0)
            if left is not None and left < max(15.0, 1.3 * expected):
                stopped = f"budget of {args.budget_s:.0f} s reached; {len(todo) - i} runs left"
                break
            base = {"name": spec.name, "model": spec.model, "settings": settings(spec)}
            cap_gib, cap_problem = resolve_cap(spec, progress)
            n_params = params.get(spec.model)
            if cap_problem:
                entry = {**base, "status": "skipped", "error": cap_problem}
            elif (
                gpu
                and n_params
                and not args.no_size_check
                and (lower_bound_bytes(n_params, spec.setup) > 0.97 * gpu["total_bytes"])
            ):
                need = lower_bound_bytes(n_params, spec.setup) / GIB
                entry = {**base, "status": "skipped", "error": f"needs >= {need:.0f} GiB before activations"}
            else:
                steps = args.steps or spec.steps
                timeout = args.timeout_s
                budget_bound = False
                if args.budget_s is not None:
                    left = args.budget_s - (time.monotonic() - t0)
                    if left < timeout:
                        timeout, budget_bound = max(left, 1.0), True
                print(
                    f"[{i + 1}/{len(todo)}] {spec.name}: {spec.model} {settings(spec)}"
                    + (f" cap {cap_gib:.2f} GiB" if cap_gib else ""),
                    flush=True,
                )
                started = time.monotonic()

                def measure(srv: ForkServer | None, spec=spec, steps=steps, cap_gib=cap_gib, timeout=timeout):
                    return measure_in_subprocess(
                        spec.model,
                        spec.setup,
                        steps,
                        memory_cap_gib=cap_gib,
                        checkpoint_cache=cache,
                        runs_dir=out,
                        timeout_s=timeout,
                        notes=f"campaign {args.grid}: {spec.name}",
                        progress=lambda msg: print(f"    {msg}", flush=True),
                        log_path=out / "logs" / f"{spec.name}.log",
                        server=srv,
                        memory_snapshot=out / "snapshots" / f"{spec.name}.pickle" if args.snapshots else None,
                    )

                try:
                    try:
                        run = measure(server)
                    except ForkServerError as exc:
                        print(f"    fork server lost ({exc}); new interpreters from now on", flush=True)
                        server.close()
                        server = None
                        run = measure(None)
                    record = _record_path(out, run)
                    entry = entry_from_run(spec, run, record, time.monotonic() - started, cap_gib)
                except MeasurementError as exc:
                    entry = failure_entry(base, exc, started, budget_bound)
            append_progress(progress_path, entry)
            progress[spec.name] = entry
            print(f"    -> {entry['status']}" + (f": {entry['error']}" if entry.get("error") else ""), flush=True)
            if spec.setup.method == "qlora" and last_qlora_use.get(spec.model) == i and not args.keep_checkpoints:
                _drop_checkpoints(cache, spec.model)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        if server is not None:
            server.close()
        write_summary(out, summary_lines(grid, progress), stopped, t0)
    return 0


def write_summary(out: Path, lines: list[str], stopped: str | None, t0: float) -> None:
    """Print the summary and write it to <out>/campaign-summary.txt (what comes back from the device)."""
    lines = [*lines, *([f"stopped: {stopped}"] if stopped else []), f"wall time this call: {time.monotonic() - t0:.0f} s"]
    text = "\n".join(lines) + "\n"
    (out / "campaign-summary.txt").write_text(text, encoding="utf-8")
    print(text, flush=True)


def _record_path(out: Path, run) -> Path:
    """The file save_run wrote for ``run`` (a suffix is possible, so look it up by run_id)."""
    from vramplan.runs import run_path

    path = run_path(run, out)
    candidates = sorted(path.parent.glob(f"{path.stem}*.json"))
    return candidates[-1] if candidates else path


def _drop_checkpoints(cache: Path, model: str) -> None:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in model)
    for folder in Path(cache).glob(f"{safe}-*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            print(f"    removed cached checkpoint {folder}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
