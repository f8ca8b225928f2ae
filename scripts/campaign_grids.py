"""The run grids of scripts/campaign.py: what each campaign measures, most important first.

Each grid is a function returning RunSpecs (a name, a model, a TrainingSetup, why it is in the grid, an optional
memory cap); ``campaign.GRIDS`` names them. Imports nothing heavy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.specs import LoraSpec, TrainingSetup

DEFAULT_STEPS = 3
QV = ("q_proj", "v_proj")


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


def unsloth_grid() -> list[RunSpec]:
    """Issue 10: Unsloth (FastLanguageModel + its patched SFTTrainer) on the H200, predicted first
    (docs/holdout/unsloth-predictions.json, committed before any of these ran). LoRA dropout 0 (Unsloth's fused
    LoRA kernels, as its notebooks set) except one run that takes PEFT's forward; 10 steps for step times."""
    ul, uq, uf = _stack(lora, "unsloth"), _stack(qlora, "unsloth"), _stack(full, "unsloth")
    fast = {"lora_dropout": 0.0, "steps": 10}
    return [
        uq("u-l8-qlora-gc", L8, "Unsloth's consumer recipe: 8B QLoRA s2048", grad_ckpt=True, **fast),
        ul("u-l8-lora-gc", L8, "8B 16-bit LoRA", grad_ckpt=True, **fast),
        uq("u-l8-qlora-gc-s4096", L8, "8B QLoRA at 4k", grad_ckpt=True, seq_len=4096, **fast),
        ul("u-l8-lora-s1024", L8, "LoRA without checkpointing", grad_ckpt=False, seq_len=1024, **fast),
        uq("u-q7-qlora-gc", Q7, "Qwen2.5 QLoRA (vocab 152k)", grad_ckpt=True, **fast),
        uf("u-l1-full-gc", L1, "full FT: fp32 masters (float32_mixed_precision)", grad_ckpt=True, steps=10),
        ul("u-q3-8-lora-gc", Q3_8, "Qwen3 LoRA", grad_ckpt=True, **fast),
        ul("u-m7-lora-gc", M7, "Mistral LoRA (vocab 32k)", grad_ckpt=True, **fast),
        uq("u-l8-qlora-gc-drop", L8, "lora_dropout 0.05: PEFT's LoRA forward", grad_ckpt=True, steps=10),
        ul("u-l8-lora-gc-b4", L8, "b4 variable lengths: Unsloth's own padding choice", grad_ckpt=True,
           seq_len=1024, batch_size=4, **fast),
        ul("u-g3-4-lora-gc", G3_4, "Gemma 3 (262k vocabulary) through Unsloth", grad_ckpt=True, **fast),
        uf("u-l1-full-s1024", L1, "full FT without checkpointing", grad_ckpt=False, seq_len=1024, steps=10),
    ]


def timing_grid() -> list[RunSpec]:
    """Issues 10 and 11: 10-step reruns on the H200 (3-step runs left the step-time fit noisy) of setups the
    stacks grid measured, plus new ones predicted first (docs/holdout/timing-predictions.json): expandable
    segments on every stack and the setups the simulated reserved rule misses most, each with an allocator
    history (--snapshots) that now carries the segment timeline."""
    ten = {"steps": 10}
    tl, tq, tf = _stack(lora, "trl"), _stack(qlora, "trl"), _stack(full, "trl")
    hl, hq = _stack(lora, "hf", True), _stack(qlora, "hf", True)
    ll = _stack(lora, "trl", True)
    es = {"expandable_segments": True, **ten}
    return [
        # -- new setups: expandable segments, the simulation's worst misses ---------------------------
        lora("t-q05-lora-fp32-s1024", Q05, "simulated rule -8 % (fp32 LoRA)", seq_len=1024, dtype="fp32", **ten),
        qlora("t-l8-qlora-nodq-gc", L8, "simulated rule -6 % (nf4 without double quant)", grad_ckpt=True,
              double_quant=False, **ten),
        qlora("t-l8-qlora-gc-es", L8, "expandable segments QLoRA", grad_ckpt=True, **es),
        lora("t-l8-lora-es", L8, "expandable segments LoRA without GC", **es),
        full("t-l3-full-gc-es", L3B, "expandable segments full FT 3B", grad_ckpt=True, **es),
        tl("t-l8-trl-lora-gc-es", L8, "expandable segments TRL", grad_ckpt=True, **es),
        hq("t-q7-liger-qlora-gc-es", Q7, "expandable segments hf + Liger", grad_ckpt=True, **es),
        # -- 10-step reruns of measured setups (step time) ----------------------------------------------
        qlora("t-l8-qlora-gc", L8, "", grad_ckpt=True, **ten),
        lora("t-l8-lora-gc", L8, "", grad_ckpt=True, **ten),
        lora("t-l8-lora", L8, "", **ten),
        full("t-l1-full-gc", L1, "", grad_ckpt=True, **ten),
        full("t-l8-full-gc", L8, "", grad_ckpt=True, **ten),
        qlora("t-q7-qlora-gc", Q7, "", grad_ckpt=True, **ten),
        lora("t-m7-lora-gc", M7, "", grad_ckpt=True, **ten),
        full("t-l3-full-gc", L3B, "", grad_ckpt=True, **ten),
        full("t-q05-full-b4", Q05, "", seq_len=1024, batch_size=4, **ten),
        tq("t-l8-trl-qlora-gc", L8, "", grad_ckpt=True, **ten),
        tl("t-l8-trl-lora-gc", L8, "", grad_ckpt=True, **ten),
        tf("t-l1-trl-full-gc", L1, "", grad_ckpt=True, **ten),
        ll("t-l8-trlliger-lora-gc", L8, "", grad_ckpt=True, **ten),
        hl("t-l8-liger-lora-gc", L8, "", grad_ckpt=True, **ten),
        tl("t-g3-4-trl-lora-gc", G3_4, "", grad_ckpt=True, **ten),
        hl("t-q3-8-liger-lora-gc", Q3_8, "", grad_ckpt=True, **ten),
    ]


def tail_grid() -> list[RunSpec]:
    """Issue 11: allocator histories (--snapshots) of the hf setups the simulated reserved rule misses most,
    measured on the H100 without a history: 8B QLoRA r64 (+5.4 %) and 8B QLoRA at s = 4096 with and without
    double quantization (-4.0 and -5.1 %). The allocator gives the same reserved bytes on both cards."""
    return [
        qlora("r-l8-qlora-r64-gc", L8, "simulated rule +5.4 % (r64)", grad_ckpt=True, lora_rank=64),
        qlora("r-l8-qlora-gc-s4096", L8, "simulated rule -4.0 % (s4096)", grad_ckpt=True, seq_len=4096),
        qlora("r-l8-qlora-nodq-gc-s4096", L8, "simulated rule -5.1 % (s4096, nf4 without double quant)",
              grad_ckpt=True, seq_len=4096, double_quant=False),
        # the capped run the simulation calls wrong (H100: OOM at max_allocated + 256 MiB, simulated: fits)
        full("r-l1-full", L1, "reference for the caps"),
        full("r-l1-full-cap-between", L1, "cap max_allocated + 256 MiB: OOM on the H100, simulated fits",
             cap_from=CapFrom("r-l1-full", "max_allocated_bytes", 1.0, add_mib=256)),
        full("r-l1-full-cap-under", L1, "cap 3 % under max_allocated", cap_from=CapFrom("r-l1-full", "max_allocated_bytes", 0.97)),
        full("r-l1-full-cap-over", L1, "cap 2 % over max_reserved", cap_from=CapFrom("r-l1-full", "max_reserved_bytes", 1.02)),
    ]


def simulated_holdout_grid() -> list[RunSpec]:
    """Issue 11: setups no shipped run has, predicted with the rules and with the simulated reserved rule before any
    ran (docs/holdout/sim-predictions.json): the hold-out of the sequence fitted to the histories of 2026-12-02."""
    tl, tq = _stack(lora, "trl"), _stack(qlora, "trl")
    hl, ll = _stack(lora, "hf", True), _stack(lora, "trl", True)
    return [
        qlora("h-q7-qlora-r64-gc-s4096", Q7, "QLoRA r64 at 4k, Qwen2.5", grad_ckpt=True, lora_rank=64, seq_len=4096),
        lora("h-l8-lora-r32-gc-s3072", L8, "LoRA r32, s = 3072", grad_ckpt=True, lora_rank=32, seq_len=3072),
        qlora("h-q3-8-qlora-gc", Q3_8, "Qwen3 QLoRA (qk-norm)", grad_ckpt=True),
        tq("h-m7-trl-qlora-gc-s4096", M7, "TRL QLoRA at 4k, Mistral", grad_ckpt=True, seq_len=4096),
        lora("h-l3-lora-s4096", L3, "LoRA without GC at 4k, 3B", seq_len=4096),
        hl("h-l1-liger-lora-b2", L1, "hf + Liger LoRA b2", batch_size=2),
        full("h-q05-full-gc-b2", Q05, "full FT 0.5B b2 with GC", grad_ckpt=True, batch_size=2),
        ll("h-q7-trlliger-lora-gc", Q7, "TRL + Liger LoRA, Qwen2.5", grad_ckpt=True),
        qlora("h-phi3-qlora-gc", PHI3, "Phi-3 QLoRA (fused qkv)", grad_ckpt=True),
        tl("h-l3-trl-lora-gc-s4096", L3, "TRL LoRA 3B at 4k", grad_ckpt=True, seq_len=4096),
    ]


def default_rule_holdout_grid() -> list[RunSpec]:
    """Issue 11, session 8: the simulated reserved peak as the default ("auto"), with Unsloth's sequence, predicted
    before any of these ran (docs/holdout/default-predictions.json): setups no shipped run has, Unsloth first (its
    sequence was read from its own 12 histories), then hf / TRL / Liger ones. Unsloth with LoRA dropout 0 (its
    notebooks' value), 5 steps (each Unsloth run spends ~40 s importing and compiling)."""
    ul, uq = _stack(lora, "unsloth"), _stack(qlora, "unsloth")
    tq, tl = _stack(qlora, "trl"), _stack(lora, "trl")
    hq = _stack(qlora, "hf", True)
    fast = {"lora_dropout": 0.0, "steps": 5}
    return [
        uq("d-u-q3-8-qlora-gc-s4096", Q3_8, "Unsloth Qwen3-8B QLoRA at 4k", grad_ckpt=True, seq_len=4096, **fast),
        uq("d-u-m7-qlora-gc", M7, "Unsloth Mistral QLoRA", grad_ckpt=True, **fast),
        ul("d-u-l3-lora-gc-s4096", L3, "Unsloth 3B LoRA at 4k", grad_ckpt=True, seq_len=4096, **fast),
        uq("d-u-l8-qlora-r64-gc", L8, "Unsloth 8B QLoRA r64", grad_ckpt=True, lora_rank=64, **fast),
        tq("d-l8-trl-qlora-gc-s3072", L8, "TRL 8B QLoRA at 3k", grad_ckpt=True, seq_len=3072),
        lora("d-q3-8-lora-gc-b2", Q3_8, "hf Qwen3-8B LoRA b2", grad_ckpt=True, batch_size=2),
        hq("d-m7-liger-qlora-gc", M7, "hf + Liger Mistral QLoRA", grad_ckpt=True),
        full("d-l3-full-gc-s4096", L3, "hf 3B full FT at 4k", grad_ckpt=True, seq_len=4096),
        tl("d-q7-trl-lora-s1024", Q7, "TRL Qwen2.5-7B LoRA without GC", seq_len=1024),
        qlora("d-g3-4-qlora-gc", G3_4, "hf Gemma 3 4B QLoRA (262k vocabulary)", grad_ckpt=True),
    ]


def no_grad_holdout_grid() -> list[RunSpec]:
    """Issue 11, session 8: checkpointed full fine-tuning, where the sequence now runs each layer's first forward as
    the recorded no-grad pattern (vramplan/memory/allocator/no_grad_layer.py, read from the 1B and 3B histories),
    predicted before any of these ran (docs/holdout/nograd-predictions.json): other Llama-family models, lengths
    and batch sizes, and one family the pattern does not apply to (Gemma 3: four norms, GeGLU)."""
    return [
        full("n-q15-full-gc-s4096", "qwen2.5-1.5b", "Qwen2.5-1.5B at 4k (q/k/v biases, tied)", grad_ckpt=True, seq_len=4096),
        full("n-l1-full-gc-b2-s4096", L1, "1B b2 at 4k", grad_ckpt=True, seq_len=4096, batch_size=2),
        full("n-smol17-full-gc-s4096", "smollm2-1.7b-instruct", "SmolLM2-1.7B at 4k", grad_ckpt=True, seq_len=4096),
        full("n-l3-full-gc-b2", L3, "3B b2 at 2k", grad_ckpt=True, batch_size=2),
        full("n-tiny-full-gc-s4096", "tinyllama-1.1b-chat-v1.0", "TinyLlama at 4k (+2.5 % at 2k)", grad_ckpt=True,
             seq_len=4096),
        full("n-g3-1-full-gc-s4096", G3_1, "Gemma 3 1B at 4k: the pattern does not apply", grad_ckpt=True, seq_len=4096),
    ]


def ckpt_backward_holdout_grid() -> list[RunSpec]:
    """Issue 11, session 9: checkpointed full fine-tuning, where each Llama-family layer's backward now runs as recorded
    (vramplan/memory/allocator/ckpt_backward_layer.py, read from the n-* histories) and the estimator's backward
    phases come from it, predicted before any of these ran (docs/holdout/ckptbwd-predictions.json): Qwen2.5 (biases,
    tied and untied), 3072 tokens (the embedding backward's one-kernel bound), long sequences, b 2, accumulation, TRL."""
    tf = _stack(full, "trl")
    return [
        full("c-q05-full-gc-s4096", Q05, "Qwen2.5-0.5B at 4k (tied, biases)", grad_ckpt=True, seq_len=4096),
        full("c-q3b-full-gc", "qwen2.5-3b", "Qwen2.5-3B (36 layers, tied, biases)", grad_ckpt=True),
        full("c-q7-full-gc", Q7, "Qwen2.5-7B full FT (untied, biases)", grad_ckpt=True),
        full("c-q15-full-gc-b2", "qwen2.5-1.5b", "Qwen2.5-1.5B b2 at 2k", grad_ckpt=True, batch_size=2),
        full("c-l1-full-gc-s3072", L1, "1B at 3072 tokens (the embedding backward's one-kernel bound)", grad_ckpt=True,
             seq_len=3072),
        full("c-tiny-full-gc-s8192", "tinyllama-1.1b-chat-v1.0", "TinyLlama at 8k", grad_ckpt=True, seq_len=8192),
        full("c-l3-full-gc-ga2-s4096", L3, "3B at 4k, two micro-steps", grad_ckpt=True, seq_len=4096, grad_accum=2),
        tf("c-l1-trl-full-gc-s4096", L1, "TRL 1B full FT at 4k", grad_ckpt=True, seq_len=4096),
    ]


def families_holdout_grid() -> list[RunSpec]:
    """Issue 11, session 9: checkpointed full fine-tuning of the families the recorded patterns do not cover (Qwen3's
    q/k norms, Phi-3's fused projections, Gemma 2's soft-capping and Gemma 3's four norms keep the summary sequence)
    and Mistral, which they do, at lengths no shipped run has, predicted before any ran
    (docs/holdout/families-predictions.json); each with a history."""
    return [
        full("f-q3-17-full-gc-s4096", "qwen3-1.7b", "Qwen3-1.7B at 4k (q/k norms, tied)", grad_ckpt=True, seq_len=4096),
        full("f-q3-06-full-gc-b2-s4096", "qwen3-0.6b", "Qwen3-0.6B b2 at 4k", grad_ckpt=True, seq_len=4096, batch_size=2),
        full("f-q3-4b-full-gc", "qwen3-4b", "Qwen3-4B (36 layers)", grad_ckpt=True),
        full("f-phi3-full-gc", PHI3, "Phi-3-mini (fused qkv and gate_up)", grad_ckpt=True),
        full("f-g3-1-full-gc-s8192", G3_1, "Gemma 3 1B at 8k (262k vocabulary)", grad_ckpt=True, seq_len=8192),
        full("f-m7-full-gc", M7, "Mistral-7B full FT (the Llama pattern)", grad_ckpt=True),
        full("f-g2-full-gc-s2048", G2, "Gemma 2 2B at 2k (soft-capping, eager)", grad_ckpt=True, seq_len=2048,
             attn="eager"),
    ]


def qwen3_holdout_grid() -> list[RunSpec]:
    """Issue 11, session 9: Qwen3 checkpointed full fine-tuning with its recorded patterns (no_grad_layer.py,
    ckpt_backward_layer.py, read from the families hold-out's three Qwen3 histories), predicted before any of these ran
    (docs/holdout/qwen3-predictions.json): other sizes, lengths, batches, accumulation and TRL."""
    tf = _stack(full, "trl")
    return [
        full("q-q3-8b-full-gc", Q3_8, "Qwen3-8B full FT (untied)", grad_ckpt=True),
        full("q-q3-06-full-gc-s8192", "qwen3-0.6b", "Qwen3-0.6B at 8k", grad_ckpt=True, seq_len=8192),
        full("q-q3-4b-full-gc-s4096", "qwen3-4b", "Qwen3-4B at 4k", grad_ckpt=True, seq_len=4096),
        full("q-q3-17-full-gc-b2-ga2", "qwen3-1.7b", "Qwen3-1.7B b2, two micro-steps", grad_ckpt=True, batch_size=2,
             grad_accum=2),
        tf("q-q3-17-trl-full-gc-s4096", "qwen3-1.7b", "TRL Qwen3-1.7B full FT at 4k", grad_ckpt=True, seq_len=4096),
    ]


def unsloth_gemma_grid() -> list[RunSpec]:
    """Issue 11, session 9: Unsloth on Gemma 3, whose one shipped run holds 1017.6 MiB outside the allocator where
    Unsloth's other checkpointed runs hold 833.6 (device -3.3 %), predicted before any ran
    (docs/holdout/unsloth-gemma-predictions.json): is the extra a constant of Unsloth's compiled Gemma 3 modules?"""
    ul, uq = _stack(lora, "unsloth"), _stack(qlora, "unsloth")
    fast = {"lora_dropout": 0.0, "steps": 5}
    return [
        ul("ug-g3-1-lora-gc", G3_1, "Unsloth Gemma 3 1B LoRA", grad_ckpt=True, **fast),
        uq("ug-g3-4-qlora-gc", G3_4, "Unsloth Gemma 3 4B QLoRA", grad_ckpt=True, **fast),
        ul("ug-g3-4-lora-gc-s4096", G3_4, "Unsloth Gemma 3 4B LoRA at 4k", grad_ckpt=True, seq_len=4096, **fast),
    ]


def unsloth_gemma_holdout_grid() -> list[RunSpec]:
    """The hold-out of kernels.UNSLOTH_GEMMA3_OUTSIDE_ALLOCATOR_BYTES (184 MiB, read from unsloth-gemma's runs), predicted
    with it before these ran (docs/holdout/unsloth-gemma2-predictions.json): Gemma 3 1B, whose checkpoint the trainer
    could not save before (build._savable_generation_config)."""
    ul, uq = _stack(lora, "unsloth"), _stack(qlora, "unsloth")
    fast = {"lora_dropout": 0.0, "steps": 5}
    return [
        ul("ug2-g3-1-lora-gc", G3_1, "Unsloth Gemma 3 1B LoRA", grad_ckpt=True, **fast),
        uq("ug2-g3-1-qlora-gc-s4096", G3_1, "Unsloth Gemma 3 1B QLoRA at 4k", grad_ckpt=True, seq_len=4096, **fast),
    ]


def unsloth_gemma3_pattern_holdout_grid() -> list[RunSpec]:
    """A hold-out for Unsloth's Gemma 3 layer-backward patterns (allocator/unsloth_gemma3_layer.py, one read from each
    of the five shipped Gemma 3 histories): the four setups between them that no history has (1B LoRA at 4k, 1B QLoRA
    at 2k, 4B QLoRA at 4k, 4B LoRA rank 64), which take the nearest recorded pattern; predicted and committed before
    they run (docs/holdout/unsloth-gemma3-predictions.json)."""
    ul, uq = _stack(lora, "unsloth"), _stack(qlora, "unsloth")
    fast = {"lora_dropout": 0.0, "steps": 5}
    return [
        ul("ug3-g3-1-lora-gc-s4096", G3_1, "Unsloth Gemma 3 1B LoRA at 4k", grad_ckpt=True, seq_len=4096, **fast),
        uq("ug3-g3-1-qlora-gc", G3_1, "Unsloth Gemma 3 1B QLoRA at 2k", grad_ckpt=True, **fast),
        uq("ug3-g3-4-qlora-gc-s4096", G3_4, "Unsloth Gemma 3 4B QLoRA at 4k", grad_ckpt=True, seq_len=4096, **fast),
        ul("ug3-g3-4-lora-r64-gc", G3_4, "Unsloth Gemma 3 4B LoRA rank 64", grad_ckpt=True, lora_rank=64, **fast),
    ]

