"""A checkpointed full fine-tuning layer's backward, as torch runs it: the recompute, then each op's tensors made and
freed in order, the layer's gradients made where autograd reaches each weight.

The summary this replaces (the recompute's saved tensors, the estimator's backward transients and the layer's
gradients made at once, a new carry per layer) carved the free blocks the step-0 backward leaves differently from the
real run: in the Qwen2.5-1.5B s 4096 hold-out (tied embeddings) the optimizer's states then found a 1365 MiB block
the recorded history does not have, and step 1's logits landed in it (-5.9 %, docs/allocator_simulation.md). The
pattern is data, read from the H200 histories of transformers 5.17's eager Llama-family decoder layer (bf16, SDPA,
SwiGLU, two RMSNorms, torch's non-reentrant checkpoint stopping its recompute at the last saved tensor):

* LLAMA_CKPT_BACKWARD_LAYER: identical, 210 ops per layer, in every layer of n-tiny-full-gc-s4096 (TinyLlama, GQA
  8:1), d-l3-full-gc-s4096 (Llama-3.2-3B), n-smol17-full-gc-s4096 (SmolLM2-1.7B, MHA) and n-l1-full-gc-b2-s4096
  (Llama-3.2-1B, b 2), tests/test_allocator_ckpt_backward.py;
* LLAMA_CKPT_BACKWARD_LAYER_QKV_BIAS: Qwen2's q / k / v biases (n-q15-full-gc-s4096, 225 ops): each biased
  projection's backward (AddmmBackward) makes its input's gradient first, then the weight's and the bias's, the bias's
  reduction through an n x out x 8-byte buffer (recorded). The first biased backward also makes the autograd thread's
  1 MiB cuBLASLt workspace (small pool, not modelled);
* QWEN3_CKPT_BACKWARD_LAYER: Qwen3's per-head q/k norms (308 ops, the three Qwen3 histories f-q3-*);
* LLAMA_FINAL_NORM_BACKWARD: the final norm's backward after lm_head's, whose output is the gradient carried
  through every layer: autograd's InputBuffer adds each layer's residual branch into it in place, so no layer makes
  a new one (every history above).

Each token allocates one tensor of a kind, frees the tensor allocated n ops earlier (-n), or frees the layer's
inputs (x: its checkpointed input; at layer 0 first the rotary cos and sin). The final norm's pattern frees its saved
tensors by name (~g: lm_head's gradient of the hidden state, ~n: the normalised bf16 copy, ~r: the rsqrt, ~h: the
fp32 input).
Kinds, for n = b s tokens: F fp32 [n, h]; r fp32 [n] (RMSNorm's mean, + eps, rsqrt, and their gradients); X [n, h],
Q [n, q width], K [n, kv width] in the compute dtype; Qh / Kh: rotate_half's negated half; L: SDPA's fp32 logsumexp
[b, heads, s]; t: a few bytes (SDPA's seed and offset, reductions' partial sums); I [n, intermediate]; A: SDPA's
backward buffer (fp32 dq accumulator, with GQA the expanded dk and dv, the fp32 softmax row sums, 256 bytes: 64.5 MiB
recorded for TinyLlama s 4096); Rh / Rk / Rq: a sum over the tokens' buffer, n x width x 8 bytes (the norm weight's
gradient, the biases'); G... / B...: a weight's / a bias's gradient (GRAD_GROUPS: the trainable group it belongs
to), kept when the micro-step makes gradients, else added into the existing one (made and freed at once).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ...specs import ModelSpec, TrainingSetup
from .no_grad_layer import no_grad_pattern_applies
from .tensors import grad_tensor

#: one eager Llama-family decoder layer's checkpointed backward (module docstring)
LLAMA_CKPT_BACKWARD_LAYER = (
    # recompute: input_layernorm, q / k / v, rotary on q and k, SDPA, o_proj, the residual sum, the second norm,
    # gate, SiLU, up and their product (the recompute stops at the last tensor the backward needs)
    "F F r -2 r r -2 F X X -3 -9 Q K K Q Qh Q -2 Q -3 Q -7 -4 K Kh K -2 K -3 K -7 -4 -21 -21 t t Q L t "
    "-1 X X -2 F F r -2 r r -2 F X X -3 -9 I I I I -18 "
    # MLP backward: down, the product, up, SiLU, gate; the two branches' gradients summed
    "Gdown I -4 I I -9 -9 -6 Gup X -7 I -17 -9 Ggate X -24 -6 X -10 -5 "
    # post_attention_layernorm backward (its result added into the carried gradient)
    "X X -32 Gnorm Rh t -1 -3 -7 -12 F -11 F F r -3 -6 r r r -2 -4 -55 -9 F -6 F F F -2 -4 -69 -8 -5 X -22 -2 "
    # o_proj, SDPA, rotary on k and q backward
    "Go Q Q K K A -1 -91 -91 -91 -91 -116 -110 -102 -13 K Kh K -2 K -5 -2 K -20 -2 Q Qh Q -2 Q -5 -2 Q -31 -2 "
    # v, k, q projections' backward
    "Gv X -33 K -22 Gk X -4 X -8 -4 Q -20 Gq X -160 -5 -3 "
    # input_layernorm backward; the layer's input freed; its result added into the carried gradient
    "X X -166 Gnorm Rh t -1 -3 -7 -19 F -11 F F r -3 -6 r r r -2 -4 -189 -9 F -6 F F F -2 -4 -203 -8 x -6 X -23 -2"
).split()

#: the same with biases on q, k and v (Qwen2): ops 0-153 as LLAMA_CKPT_BACKWARD_LAYER, then the biased projections
LLAMA_CKPT_BACKWARD_LAYER_QKV_BIAS = LLAMA_CKPT_BACKWARD_LAYER[:154] + (
    "X Gv Bv Rk t -1 -3 -38 K -27 X Gk Bk Rk t -1 -3 -9 X -19 -10 Q -30 X Gq -170 Bq Rq t -1 -3 -10 -9 "
    "X X -181 Gnorm Rh t -1 -3 -7 -24 F -11 F F r -3 -6 r r r -2 -4 -204 -9 F -6 F F F -2 -4 -218 -8 x -6 X -23 -2"
).split()

#: Qwen3's layer (q/k norms over each head; no_grad_layer.QWEN3_NO_GRAD_LAYER's kinds): identical, 308 ops per layer,
#: in every layer of f-q3-4b-full-gc, f-q3-17-full-gc-s4096 and f-q3-06-full-gc-b2-s4096; each norm's backward as the
#: layer norms' (Gkn / Gqn: the k_norm's and q_norm's weight gradients, Rk / Rq their sums over the tokens)
QWEN3_CKPT_BACKWARD_LAYER = (
    "F F r -2 r r -2 F X X -3 -9 Q QF QF rQ -2 rQ rQ -2 QF Q Q -3 -9 -13 K KF KF rK -2 rK rK -2 KF K K -3 -9 -13 K Q "
    "Qh Q -2 Q -3 Q -7 -4 K Kh K -2 K -3 K -7 -4 -37 -24 t t Q L t -1 X X -2 F F r -2 r r -2 F X X -3 -9 I I I I -18 "
    "Gdown I -4 I I -9 -9 -6 Gup X -7 I -17 -9 Ggate X -24 -6 X -10 -5 X X -32 Gnorm Rh t -1 -3 -7 -12 F -11 F F r "
    "-3 -6 r r r -2 -4 -55 -9 F -6 F F F -2 -4 -69 -8 -5 X -22 -2 Go Q Q K K A -1 -91 -91 -91 -91 -116 -110 -102 -13 "
    "K Kh K -2 K -5 -2 K -20 -2 Q Qh Q -2 Q -5 -2 Q -31 -2 Gv X -33 K K -150 Gkn Rk t -1 -3 -7 -30 KF -11 KF KF rK "
    "-3 -6 rK rK rK -2 -4 -173 -9 KF -6 KF KF KF -2 -4 -187 -8 -5 K -22 K -3 Gk X -4 X -44 -4 Q Q -208 Gqn Rq t -1 "
    "-3 -7 -64 QF -11 QF QF rQ -3 -6 rQ rQ rQ -2 -4 -231 -9 QF -6 QF QF QF -2 -4 -245 -8 -5 Q -22 Q -3 Gq X -258 -5 "
    "-3 X X -264 Gnorm Rh t -1 -3 -7 -55 F -11 F F r -3 -6 r r r -2 -4 -287 -9 F -6 F F F -2 -4 -301 -8 x -6 X -23 "
    "-2"
).split()

#: the final norm's backward (its weight's gradient among them), from lm_head's gradient of the hidden state to the
#: gradient of the last layer's output (the pattern's last X), which is carried through the layers
LLAMA_FINAL_NORM_BACKWARD = (
    "X X Gnorm Rh t -1 -3 -6 ~g ~n F -11 F F r -3 -6 r r r -2 -4 -8 ~r F -6 F F F -2 -4 -7 ~h -5 X -22"
).split()

#: a gradient token's trainable group (memory/trainable.py's names)
GRAD_GROUPS = {
    "Gq": "self_attn.q_proj", "Gk": "self_attn.k_proj", "Gv": "self_attn.v_proj", "Go": "self_attn.o_proj",
    "Ggate": "mlp.gate_proj", "Gup": "mlp.up_proj", "Gdown": "mlp.down_proj", "Gnorm": "norms",
    "Bq": "self_attn.q_proj.bias", "Bk": "self_attn.k_proj.bias", "Bv": "self_attn.v_proj.bias",
    # the trainable groups hold q_norm's and k_norm's weights as one tensor ("other"): k_norm's token makes it, and
    # q_norm's (Gqn, a size kind of 0 bytes) none
    "Gkn": "other",
}  # fmt: skip
#: SDPA's seed / offset and the reductions' partial sums (8 to 256 bytes recorded): one small block each
TINY_BYTES = 8
#: SDPA's backward buffer beyond its parts (recorded: every history, every layer)
SDPA_BACKWARD_EXTRA_BYTES = 256


def _grad_groups(pattern: list[str]) -> Counter:
    """The trainable groups a pattern's gradient tokens make, with their counts."""
    return Counter(GRAD_GROUPS[x] for x in pattern if x in GRAD_GROUPS)


#: each model kind's patterns with the groups their gradients make (counted once, not per layer and estimate)
_PATTERNS_BY_GROUPS = {
    qk_norm: [(_grad_groups(p), p) for p in patterns]
    for qk_norm, patterns in ((True, (QWEN3_CKPT_BACKWARD_LAYER,)),
                              (False, (LLAMA_CKPT_BACKWARD_LAYER, LLAMA_CKPT_BACKWARD_LAYER_QKV_BIAS)))
}  # fmt: skip


def ckpt_backward_layer(model: ModelSpec, group_names: list[str]) -> list[str] | None:
    """The model's pattern whose gradients are exactly the layer's trainable groups (`group_names`), or None."""
    have = Counter(group_names)
    return next((p for groups, p in _PATTERNS_BY_GROUPS[bool(model.qk_norm)] if groups == have), None)


def ckpt_backward_applies(model: ModelSpec, setup: TrainingSetup, profile) -> bool:
    """Whether the setup's layers run the transformers modules the patterns were read from: those that run the recorded
    no-grad forward (no_grad_layer.py), on one GPU or DDP, not Unsloth (its own RMSNorm and RoPE kernels)."""
    return (
        setup.parallel in (None, "ddp") and profile.name != "unsloth"
        and no_grad_pattern_applies(model, setup, profile.liger)
    )  # fmt: skip


def ckpt_backward_patterns(model: ModelSpec, layer_groups, head_groups) -> list[list[str]] | None:
    """Each layer's pattern when every layer's gradients are a pattern's and the head has the final norm's (the
    setup must run the recorded no-grad forward too: no_grad_layer.no_grad_pattern_applies); else None."""
    by_names: dict[tuple[str, ...], list[str] | None] = {}  # the layers share their groups' names: one lookup each
    patterns = []
    for gs in layer_groups:
        names = tuple(g.name for g in gs)
        if names not in by_names:
            by_names[names] = ckpt_backward_layer(model, list(names))
        patterns.append(by_names[names])
    if any(p is None for p in patterns) or not any(g.name == "norms" for g in head_groups):
        return None
    return patterns


def ckpt_backward_sizes(model: ModelSpec, setup: TrainingSetup) -> dict[str, int]:
    """Bytes of each activation kind of the patterns for one micro-batch (the gradients' come from their groups)."""
    b, s = setup.batch_size, setup.seq_len
    n, h, e = b * s, model.hidden_size, 2
    q, kv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    lse = b * model.num_heads * s * 4
    expanded = 2 * n * q * e if kv < q else 0  # GQA: dk and dv at the query heads' width, then summed
    return {
        "F": n * h * 4, "r": n * 4, "X": n * h * e, "Q": n * q * e, "K": n * kv * e, "Qh": n * q * e // 2,
        "Kh": n * kv * e // 2, "L": lse, "t": TINY_BYTES, "I": n * model.intermediate_size * e,
        "A": n * q * 4 + expanded + lse + SDPA_BACKWARD_EXTRA_BYTES,
        "Rh": n * h * 8, "Rq": n * q * 8, "Rk": n * kv * 8,
        "QF": n * q * 4, "KF": n * kv * 4, "rQ": n * model.num_heads * 4, "rK": n * model.num_kv_heads * 4, "Gqn": 0,
    }  # fmt: skip


#: the final norm's forward with autograd (every history above): RMSNorm's ops, as at a layer pattern's start
FINAL_NORM_FORWARD = "F F r -2 r r -2 F X X -3 -9".split()
#: the tensors it saves for its backward, by token: the fp32 input, the rsqrt, the normalised bf16 copy, the output
FINAL_NORM_SAVED = (0, 5, 8, 9)
#: with a frozen norm weight (LoRA under FSDP, fc-l1-fsdp-lora-gc-x2): the normalised copy is freed too, and saved are
#: the fp32 input, the rsqrt and the output (which a frozen lm_head does not keep: freed after the logits)
FROZEN_FINAL_NORM_FORWARD = "F F r -2 r r -2 F X X -2 -4 -10".split()
FROZEN_FINAL_NORM_SAVED = (0, 5, 9)
#: and its backward from the gradient of its output (g): LLAMA_FINAL_NORM_BACKWARD without the weight's gradient
FROZEN_FINAL_NORM_BACKWARD = "X ~g F -3 F F r -3 -6 r r r -2 -4 -8 ~r F -6 F F F -2 -4 -7 ~h -5 X -22".split()
#: EmbeddingBackwardKernel.cu NROWS_PER_THREAD: the partial segments' bound is n / 10 + n
EMBEDDING_ROWS_PER_PARTIAL = 10
#: Embedding.cu embedding_dense_backward_cuda: up to this many indices one kernel adds into the zeroed gradient, no
#: partial sums (s-h200-l8-full-gc, n 2048: the gradient, then the carried gradient freed)
EMBEDDING_DIRECT_MAX_INDICES = 3072


@dataclass(frozen=True)
class CkptBackwardPeaks:
    """The estimator's terms for a setup whose backward runs the patterns (they are the sequence's, so the estimator's
    peak is the sequence's most live bytes): the carried gradient, the final norm's saved rsqrt, the most bytes the
    last layer's and layer 0's backward hold above what was alive before them (layer 0's checkpointed input and the
    rotary tables freed at its x), layer 0's gradients (among those), and the embedding backward's partial sums."""

    carry: int
    final_rsqrt: int
    top_layer: int
    first_layer: int
    first_layer_grads: int
    embedding_partials: int


def ckpt_backward_peaks(
    model: ModelSpec, setup: TrainingSetup, layer_groups, head_groups, checkpoint: int, rotary: int
) -> CkptBackwardPeaks | None:
    """The patterns' terms (CkptBackwardPeaks) when the setup's groups have patterns, else None; each layer keeps the
    gradients it makes when there is one micro-step (a later micro-step adds into the kept ones)."""
    patterns = ckpt_backward_patterns(model, layer_groups, head_groups)
    if patterns is None:
        return None
    sizes = ckpt_backward_sizes(model, setup)
    keep = setup.grad_accum == 1
    top = excursion(patterns[-1], sizes, grad_token_sizes(layer_groups[-1]), checkpoint, keep)
    first = excursion(patterns[0], sizes, grad_token_sizes(layer_groups[0]), checkpoint + rotary, keep)
    return CkptBackwardPeaks(
        carry=sizes["X"], final_rsqrt=sizes["r"], top_layer=top, first_layer=first,
        first_layer_grads=sum(grad_tensor(g) for g in layer_groups[0]) if keep else 0,
        embedding_partials=embedding_partial_sums_bytes(model, setup),
    )  # fmt: skip


def embedding_partial_sums_bytes(model: ModelSpec, setup: TrainingSetup) -> int:
    """embedding_dense_backward's fp32 partial sums over more than 3072 tokens: (n + n / 10) x h (0 up to 3072)."""
    n = setup.batch_size * setup.seq_len
    return (n + n // EMBEDDING_ROWS_PER_PARTIAL) * model.hidden_size * 4 if n > EMBEDDING_DIRECT_MAX_INDICES else 0


def grad_token_sizes(groups, grad_groups: dict[str, str] = GRAD_GROUPS) -> dict[str, list[int]]:
    """A pattern's gradient tokens -> the bytes of the groups' gradients, the first to be made last (popped);
    `grad_groups`: the patterns' token -> trainable group (unsloth_gemma3_layer.py has its own)."""
    sizes: dict[str, list[int]] = {}
    token = {name: tok for tok, name in grad_groups.items()}
    for g in reversed(groups):
        if g.name in token:
            sizes.setdefault(token[g.name], []).append(grad_tensor(g))
    return sizes


def excursion(tokens: list[str], sizes: dict[str, int], grads: dict[str, list[int]], inputs: int, keep: bool) -> int:
    """The most bytes `tokens` hold at once above what was alive before them (x frees `inputs` bytes); a gradient
    token's tensor is kept, or with `keep` False freed at once."""
    live = top = 0
    made: list[int] = []
    for tok in tokens:
        if tok[0] == "-":
            live -= made[len(made) - int(tok[1:])]
            nbytes = 0
        elif tok == "x":
            live -= inputs
            nbytes = 0
        else:
            nbytes = grads[tok].pop() if tok in grads else sizes[tok]
            live += nbytes
            top = max(top, live)
            if tok in grads and not keep:
                live -= nbytes
        made.append(nbytes)
    return top
