"""Unsloth's Gemma 3 decoder-layer backward, as its compiled modules run it: the recompute from the checkpoint copied
back into the staging buffer (no allocation), then LoRA_MLP's, LoRA_QKV's and LoRA_W's backward through Gemma 3's four
norms and its q / k norms, each op's tensors made and freed in order, each adapter's gradient made where autograd
reaches it.

The summary backward this replaces (the recompute's saved tensors and the fitted transients at once, every adapter's
gradient in the last layer's) holds four [n, intermediate] tensors where this holds up to six (the recompute makes
gate and up as base output, then base + LoRA with the base freed, then their GeGLU product; the backward its products
next to them), at the same live peak; each of them is the size of its own segment, so the summary made fewer segments
than the runs: reserved -8.1 % (1B QLoRA s 4096) ... -1.1 % (docs/allocator_simulation.md, "Unsloth on Gemma 3").

The patterns are data, read from the H200 histories of Unsloth / unsloth_zoo 2026.10.9 (bf16, SDPA, LoRA r 16 on
every linear, dropout 0, b 1, offloaded checkpoints): in each history step 1's backward runs its pattern in every
decoder layer but the last (which frees its kept input as well), sliding and global layers alike
(tests/test_unsloth_gemma3_backward.py matches each pattern op by op against its history). The kinds were read across
the five histories (1B: one kv head, h 1152; 4B: four, h 2560): a size that is two kinds on one model is one on
another, and the recompute and the MLP's backward (their first ~110 ops) are one pattern on both models. They differ
in the attention's part: with one kv head the value states need no contiguous copy (4B: K -7 after the k norm), and
the order of the attention's frees and of the q / k / v adapters' gradients differs between the histories. Where a
gradient sits before the attention's backward (4B, 1B QLoRA s 4096) the history made a buffer of the gradient's
exact bytes there and never freed it, and made no gradient of that size later: Inductor's compiled backward reusing
a freed buffer of equal bytes is the likely mechanism (not read from its generated code), so which order a setup runs
likely follows from its sizes; the patterns are picked by method, one kv head or more, and for LoRA with more kv heads the
tokens (up to 2048: the s 2048 pattern; the histories do not say where between 2048 and 4096 the other starts).

Each token allocates one tensor of a kind, frees the tensor allocated n ops earlier (-n) or frees the gradient carried
in from the layer above (x). Kinds, for n = b s tokens, in the compute dtype unless fp32: r fp32 [n] (a norm's rsqrt);
X [n, h]; F fp32 [n, h]; Q [n, q width]; QF fp32 [n, q width]; K [n, kv width]; I [n, intermediate]; rQ / rK fp32
[n, heads] / [n, kv heads] (the q / k norms' rsqrt, SDPA's logsumexp); nr [n, r] (x @ lora_A); Ah / Aq / Ak / Ai:
autocast's copy of an adapter [r, h] / [r, q width] / [r, kv width] / [r, intermediate] (either side); Wq / Wk / Wi: a
4-bit weight dequantized to the compute dtype ([q width, h], [kv width, h], [intermediate, h]); G..: an adapter's
gradient (GRAD_GROUPS), kept when the micro-step makes gradients, else added into the existing one (made and freed
at once).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ...specs import ModelSpec, TrainingSetup
from ..constants import BYTES_PER_DTYPE
from ..stacks.kernels import UNSLOTH_COMPILED_MODEL_TYPES
from .ckpt_backward_layer import excursion, grad_token_sizes as _grad_token_sizes
from .tensors import grad_tensor

#: ug2-g3-1-lora-gc (Gemma 3 1B, one kv head, s 2048), 154 ops
UNSLOTH_GEMMA3_LORA_ONE_KV_HEAD = (
    "r X Q Ah nr Aq Q -5 K Ah nr Ak K Ah nr Ak K -9 rQ rK K Q rQ rQ Q -2 Q X Aq nr Ah X r r I Ah nr Ai I Ah nr Ai I X "
    "Ai nr Ah X r -1 nr -5 Ah -8 Gdb -3 Ai -23 I -9 -16 Gda -6 I -17 I I -29 -26 -11 -7 nr -31 Ai -34 Gub Ah X -39 "
    "Gua X -16 -45 -47 Ggb -12 -59 X -53 Gga X -25 F X -62 -62 -66 -68 Gob Aq -74 Q -74 Goa Q rQ -82 K K -89 -9 -6 "
    "-91 -91 -98 -7 -97 -13 -100 -104 Ak -107 Gvb -110 Gva -18 -115 -117 Gkb -9 -121 Gka -120 -128 -130 Gqb -37 -136 "
    "-67 -136 Gqa -65 X -137 -113 -55 -59 -67 -71 -7 -58 -151 -109 x"
).split()

#: u-g3-4-lora-gc (4B, s 2048), 156 ops
UNSLOTH_GEMMA3_LORA = (
    "r X Q Ah nr Aq Q -5 K Ah nr Ak K Ah nr Ak K -9 rQ rK Q K K -7 rQ rQ Q -2 Q X Aq nr Ah X r r I Ah nr Ai I Ah nr "
    "Ai I X Ai nr Ah X r -1 nr -5 Ah -8 Gdb -3 Ai -23 I -9 -16 Gda -6 I -17 I I -29 -26 -11 -7 nr -31 Ai -34 Gub Ah X "
    "-39 Gua X -16 -45 -47 Ggb -12 -59 X -53 Gga X -25 F X -62 -62 -66 -68 Gob Aq -74 Q -74 Goa Q Gvb -82 K K -8 -92 "
    "-92 -92 -91 -97 QF -12 -2 -102 -12 -107 Ak -110 -112 Gva -17 -117 -119 Gkb -8 -123 Gka -122 -130 -132 Gqb -65 "
    "-138 -39 -138 Gqa -65 X -139 -113 -55 -59 -67 -71 -7 -58 -153 -109 x"
).split()

#: ug-g3-4-lora-gc-s4096 (4B, s 4096), 158 ops: one more [n, q] buffer in the attention's backward and its
#: gradients in another order
UNSLOTH_GEMMA3_LORA_LONG = (
    "r X Q Ah nr Aq Q -5 K Ah nr Ak K Ah nr Ak K -9 rQ rK Q K K -7 rQ rQ Q -2 Q X Aq nr Ah X r r I Ah nr Ai I Ah nr "
    "Ai I X Ai nr Ah X r -1 nr -5 Ah -8 Gdb -3 Ai -23 I -9 -16 Gda -6 I -17 I I -29 -26 -11 -7 nr -31 Ai -34 Gub Ah X "
    "-39 Gua X -16 -45 -47 Ggb -12 -59 X -53 Gga X -25 F X -62 -62 -66 -68 Gob Aq -74 Q -74 Goa Q Gqb -82 K K -8 -92 "
    "-92 -92 -91 Q -1 -99 QF -14 -2 -104 -14 -109 Ak -112 Gvb -115 Gva -20 -120 -122 Gkb -9 -126 Gka -125 -133 -135 "
    "-39 -140 -69 -140 Gqa -67 X -141 -115 -57 -61 -69 -73 -7 -60 -155 -111 x"
).split()

#: ug2-g3-1-qlora-gc-s4096 (1B QLoRA, s 4096), 174 ops
UNSLOTH_GEMMA3_QLORA_ONE_KV_HEAD = (
    "r X Wq Q Ah nr Aq Q -5 Wk K Ah nr Ak K -6 Ah nr Ak K rQ rK Q rQ rQ Q -2 Q X -27 Aq nr Ah X r r Wi I -2 Ah nr Ai "
    "I -6 Wi I -2 Ah nr Ai I -6 Wi I X -3 Ai nr Ah X r -1 nr -5 Ah -8 Gdb -3 Ai -16 I -9 -16 Gda -6 Wi I -18 -3 I I "
    "-39 -32 -7 -14 nr -37 Ai -40 Gub Ah X -45 Gua Wi X -17 -56 -58 Ggb -13 -73 X -64 Gga X -26 -13 F X -76 -76 -80 "
    "-82 Gob Aq -89 Q -88 Goa Wq Q Gqb -98 K K -116 -10 -106 -106 -111 -6 -111 QF -13 -2 -116 -119 Ak -122 Gvb -125 "
    "Gva Wk -20 -132 -134 Gkb -10 -138 Gka -137 -9 -147 -149 -40 -155 -72 -154 Gqa -70 X -155 -43 -131 -60 -64 -72 "
    "-77 -8 -62 -171 -118 x"
).split()

#: ug-g3-4-qlora-gc (4B QLoRA, s 2048), 172 ops
UNSLOTH_GEMMA3_QLORA = (
    "r X Wq Q Ah nr Aq Q Wk K Ah nr Ak K -6 Ah nr Ak K rQ rK K -4 rQ rQ Q -2 Q X Aq nr Ah r r Wi I -2 Ah nr Ai I -6 "
    "Wi I -2 Ah nr Ai I -6 Wi I X -3 Ai nr Ah X r -1 nr -5 Ah -8 Gdb -3 Ai -16 I -9 -16 Gda -6 Wi I -18 -3 I I -39 "
    "-32 -7 -14 nr -37 Ai -40 Gub Ah X -45 Gua Wi X -17 -56 -58 Ggb -13 -71 X -64 Gga X -26 -13 F X -76 -76 -79 -81 "
    "Gob Aq -87 Q -87 Goa Q Gvb -95 K K -8 -121 -116 -105 -104 -108 QF -12 -2 -113 -12 -117 Ak -120 -122 Gva Wk -18 "
    "-129 -131 Gkb -9 -135 Gka -134 -9 -143 -145 Gqb -69 -152 -41 -151 Gqa -69 X X -153 -3 -59 -161 -64 -72 -77 -8 "
    "-62 -169 -118 x"
).split()

#: a gradient token's trainable group (memory/trainable.py's names); the adapters of gate and up, and of q, k and v's
#: lora_A, are the same size, so which of them autograd reaches first is not told by the histories
GRAD_GROUPS = {
    f"G{leaf[0]}{side.lower()}": f"lora_{side}.{module}.{leaf}_proj"
    for module, leaves in (("self_attn", ("q", "k", "v", "o")), ("mlp", ("gate", "up", "down")))
    for leaf in leaves
    for side in ("A", "B")
}
#: the patterns by (method, one kv head), and for LoRA with more kv heads by tokens: from LONG_MIN_TOKENS on the s 4096
#: one (the 4B LoRA histories: s 2048 ran the one, s 4096 the other; where between them they part is not known)
LONG_MIN_TOKENS = 2049
_PATTERNS = {
    ("lora", True): UNSLOTH_GEMMA3_LORA_ONE_KV_HEAD,
    ("qlora", True): UNSLOTH_GEMMA3_QLORA_ONE_KV_HEAD,
    ("qlora", False): UNSLOTH_GEMMA3_QLORA,
}


def unsloth_gemma3_applies(model: ModelSpec, setup: TrainingSetup, profile, offloaded: bool, group_names) -> bool:
    """Whether the setup's layers run the recorded backward: Unsloth's compiled Gemma 3 with its offloaded checkpoints
    (`offloaded`: StackProfile.offloaded), LoRA or QLoRA on every linear (`group_names`: one layer's trainable groups)
    without dropout (Unsloth's fused dropout runs other kernels), bf16 and SDPA, as the histories ran."""
    return (
        profile.name == "unsloth" and model.model_type in UNSLOTH_COMPILED_MODEL_TYPES and offloaded
        and setup.grad_ckpt and setup.lora is not None and setup.lora.dropout == 0 and setup.dtype == "bf16"
        and setup.attn == "sdpa" and Counter(group_names) == Counter(GRAD_GROUPS.values())
    )  # fmt: skip


def unsloth_gemma3_pattern(model: ModelSpec, setup: TrainingSetup) -> list[str]:
    """The pattern a setup's layers run (module docstring: by method, one kv head, tokens)."""
    one_kv_head = model.num_kv_heads == 1
    if setup.method == "lora" and not one_kv_head:
        long = setup.batch_size * setup.seq_len >= LONG_MIN_TOKENS
        return UNSLOTH_GEMMA3_LORA_LONG if long else UNSLOTH_GEMMA3_LORA
    return _PATTERNS[(setup.method, one_kv_head)]


def unsloth_gemma3_sizes(model: ModelSpec, setup: TrainingSetup) -> dict[str, int]:
    """Bytes of each kind of the patterns for one micro-batch (the gradients' come from their groups)."""
    n, e, r = setup.batch_size * setup.seq_len, BYTES_PER_DTYPE[setup.dtype], setup.lora.rank
    h, i = model.hidden_size, model.intermediate_size
    q, kv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    return {
        "r": n * 4, "X": n * h * e, "F": n * h * 4, "Q": n * q * e, "QF": n * q * 4, "K": n * kv * e,
        "I": n * i * e, "rQ": n * model.num_heads * 4, "rK": n * model.num_kv_heads * 4, "nr": n * r * e,
        "Ah": r * h * e, "Aq": r * q * e, "Ak": r * kv * e, "Ai": r * i * e,
        "Wq": q * h * e, "Wk": kv * h * e, "Wi": i * h * e,
    }  # fmt: skip


def carried_out(tokens: list[str]) -> int:
    """The index of the token that makes the gradient carried on to the layer below: the one [n, h] tensor the pattern
    does not free."""
    freed = {j - int(tok[1:]) for j, tok in enumerate(tokens) if tok[0] == "-"}
    (out,) = [j for j, tok in enumerate(tokens) if tok == "X" and j not in freed]
    return out


def grad_token_sizes(groups) -> dict[str, list[int]]:
    """The pattern's gradient tokens -> the bytes of the layer's gradients (one each: unsloth_gemma3_applies)."""
    return _grad_token_sizes(groups, GRAD_GROUPS)


@dataclass(frozen=True)
class UnslothGemma3Peaks:
    """The estimator's terms for a setup whose layers run the pattern (they are the sequence's, so the estimator's peak
    is the sequence's most live bytes): the carried gradient, the most bytes one layer's backward holds above what was
    alive before it (its own gradients among them when there is one micro-step), and layer 0's gradients."""

    carry: int
    layer: int
    first_layer_grads: int


def unsloth_gemma3_peaks(model: ModelSpec, setup: TrainingSetup, layer_groups) -> UnslothGemma3Peaks:
    """The pattern's terms (UnslothGemma3Peaks); every layer runs the same pattern, so the last layer's and layer 0's
    excursions are one; a later micro-step adds into the gradients the first made."""
    sizes = unsloth_gemma3_sizes(model, setup)
    keep = setup.grad_accum == 1
    top = excursion(unsloth_gemma3_pattern(model, setup), sizes, grad_token_sizes(layer_groups[0]), sizes["X"], keep)
    return UnslothGemma3Peaks(
        carry=sizes["X"], layer=top, first_layer_grads=sum(grad_tensor(g) for g in layer_groups[0]) if keep else 0
    )
