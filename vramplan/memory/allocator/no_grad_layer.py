"""A checkpointed full fine-tuning layer's first forward, as torch's no-grad forward runs it: each tensor freed when
the forward drops it.

Under gradient checkpointing the layer's forward runs without autograd (torch.utils.checkpoint): nothing is saved, and
each intermediate goes as soon as its last user is done. Which holes that leaves decides where the optimizer states
and the next loss land (the 2026-12-02 hold-out miss, docs/allocator_simulation.md): holding the layer's saved tensors
and freeing them at its end left more 64 MiB holes than the recorded history did. The pattern is data, read from the
H200 histories of transformers 5.17's eager Llama-family decoder layer (bf16, SDPA, SwiGLU, two RMSNorms): identical,
83 allocations and frees per layer, in s-h200-l1-full-gc (Llama-3.2-1B, s 2048) and d-l3-full-gc-s4096 (Llama-3.2-3B,
s 4096), tests/test_allocator_sequence.py. Each token allocates one tensor of a kind, or (a negative number -n) frees
the tensor allocated n ops earlier:

* F: fp32 [b s, h] (RMSNorm: hidden_states.to(float32), its pow(2), the product by rsqrt), r: fp32 [b s] (mean,
  + eps, rsqrt), X: [b s, h] in the compute dtype (the norm's cast and weight product, o_proj, the residual sums,
  down_proj), Q / K: [b s, q or kv width] (q, k, v projections, apply_rotary_pos_emb's q*cos, rotate_half's cat,
  q*sin, their sum; the attention output and its contiguous transpose), Qh / Kh: rotate_half's negated half,
  L: SDPA's fp32 logsumexp [b, heads, s], t: a few bytes (SDPA's seed and offset), I: [b s, i] (gate, its SiLU, up,
  the product).

The layer's input is held by the checkpoint and not freed here; the one tensor left at the end (the second residual
sum) is the layer's output.
"""

from __future__ import annotations

from ...specs import ModelSpec, TrainingSetup

#: one eager Llama-family decoder layer's no-grad forward (module docstring)
LLAMA_NO_GRAD_LAYER = (
    "F F r -2 r r -2 F -3 -9 X X -2 -6 -12 "  # input_layernorm
    "Q K K "  # q, k, v projections
    "Q Qh Q -2 Q -3 Q -7 -4 K Kh K -2 K -3 K -7 -4 -21 -21 "  # apply_rotary_pos_emb on q and k
    "t t Q L t -1 -3 -7 -7 Q -8 -25 -17 -34 -41 X -7 "  # SDPA, its output made contiguous, o_proj, the residual sum
    "F F r -2 r r -2 F -3 -9 X X -2 -6 -12 "  # post_attention_layernorm
    "I I -2 I I -4 -3 X -4 -13 X -4 -29"  # gate, SiLU, up, product, down_proj, the residual sum
).split()
#: the op of LLAMA_NO_GRAD_LAYER whose tensor is the layer's output (the only one left at its end)
NO_GRAD_OUTPUT = 80
#: Qwen3's layer: q_norm and k_norm (RMSNorm over each head, fp32 inside) right after the q and k projections, the rest
#: as LLAMA_NO_GRAD_LAYER; identical, 115 ops per layer, in every layer of f-q3-4b-full-gc, f-q3-17-full-gc-s4096 and
#: f-q3-06-full-gc-b2-s4096 (QF / KF: fp32 [b s, q or kv width]; rQ / rK: fp32 [b s, heads or kv heads])
QWEN3_NO_GRAD_LAYER = (
    "F F r -2 r r -2 F -3 -9 X X -2 -6 -12 Q QF QF rQ -2 rQ rQ -2 QF -3 -9 Q Q -2 -6 -12 -16 K KF KF rK -2 rK rK -2 "
    "KF -3 -9 K K -2 -6 -12 -16 K Q Qh Q -2 Q -3 Q -7 -4 K Kh K -2 K -3 K -7 -4 -41 -25 t t Q L t -1 -3 -7 -7 X -8 "
    "-25 -17 -34 -73 X -7 F F r -2 r r -2 F -3 -9 X X -2 -6 -12 I I -2 I I -4 -3 X -4 -13 X -4 -29"
).split()
QWEN3_NO_GRAD_OUTPUT = 112
#: SDPA's seed / offset tensors (8 and 256 bytes recorded): block-rounded, so their exact size never matters
TINY_BYTES = 8


def no_grad_pattern(model: ModelSpec, setup: TrainingSetup, liger: bool) -> tuple[list[str], int] | None:
    """The setup's checkpointed forward (the pattern, its output's op) for full fine-tuning in bf16 / fp16 with
    checkpointing, SDPA, the transformers modules (no Liger kernels), and a Llama-family layer (two RMSNorms, separate
    q / k / v and gate / up projections, SwiGLU, no MoE, no soft-capping): LLAMA_NO_GRAD_LAYER, or with Qwen3's per-head
    q/k norms QWEN3_NO_GRAD_LAYER (other q/k norms, OLMo 2's over the whole width: none); else None."""
    if setup.method != "full" or not llama_family_checkpointed(model, setup, liger):
        return None
    return (QWEN3_NO_GRAD_LAYER, QWEN3_NO_GRAD_OUTPUT) if model.qk_norm else (LLAMA_NO_GRAD_LAYER, NO_GRAD_OUTPUT)


def llama_family_checkpointed(model: ModelSpec, setup: TrainingSetup, liger: bool) -> bool:
    """Checkpointing in bf16 / fp16 with SDPA, the transformers modules (no Liger kernels), and a Llama-family layer
    (two RMSNorms, separate q / k / v and gate / up projections, SwiGLU, no MoE, no soft-capping; q/k norms only
    Qwen3's, over each head): the layers the no-grad patterns were read from."""
    return (
        setup.grad_ckpt and setup.dtype in ("bf16", "fp16") and setup.attn == "sdpa"
        and not liger and model.traced is None and model.moe is None and model.mla is None
        and model.norms_per_layer == 2 and not model.post_norm
        and not model.fused_qkv and not model.fused_gate_up and model.hidden_act == "silu"
        and model.attn_logit_softcapping is None and not model.attention_sinks
        and (not model.qk_norm or model.model_type == "qwen3")
    )  # fmt: skip


def no_grad_pattern_applies(model: ModelSpec, setup: TrainingSetup, liger: bool) -> bool:
    return no_grad_pattern(model, setup, liger) is not None


def no_grad_layer_sizes(model: ModelSpec, setup: TrainingSetup) -> dict[str, int]:
    """Bytes of each kind of LLAMA_NO_GRAD_LAYER for one micro-batch."""
    n, e = setup.batch_size * setup.seq_len, 2
    q, kv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    return {
        "F": n * model.hidden_size * 4, "r": n * 4, "X": n * model.hidden_size * e,
        "Q": n * q * e, "Qh": n * q * e // 2, "K": n * kv * e, "Kh": n * kv * e // 2,
        "L": setup.batch_size * model.num_heads * setup.seq_len * 4, "t": TINY_BYTES,
        "I": n * model.intermediate_size * e,
        "QF": n * q * 4, "KF": n * kv * 4, "rQ": n * model.num_heads * 4, "rK": n * model.num_kv_heads * 4,
    }  # fmt: skip
