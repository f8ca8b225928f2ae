"""A checkpointed LoRA layer's first forward under a DeepSpeed engine, as torch's no-grad forward runs it: each tensor
freed when the forward drops it (the LoRA counterpart of no_grad_layer.py).

DeepSpeed runs the module without autocast. ZeRO-2's engine casts PEFT's fp32 adapters to bf16, so each wrapped Linear
(peft tuners/lora/layer.py Linear.forward) makes: the base layer's output, the dropout's bool mask and output, lora_A's
output, lora_B's, its product by the scaling and the sum with the base output (BF16_BLOCK). ZeRO-3's keeps them fp32:
the input is first cast to fp32 (``_cast_input_dtype``), lora_A's weight is fetched for its forward (a copy, freed once
lora_A has run; in the first step only), the adapter's chain runs in fp32 and the sum is cast back to the base output's dtype (FP32_BLOCK). The
rest of the layer is the full fine-tuning one (no_grad_layer.LLAMA_NO_GRAD_LAYER: RMSNorms, rotary, SDPA, SwiGLU),
except that the attention output goes to o_proj without a contiguous copy. A projection LoRA does not wrap makes its
output alone. Read from the H200 histories o-l1-zero2-lora-gc-x1 (167 ops per layer, identical in every layer) and
o-l1-zero3-lora-gc-x1 (209; read with Python stacks from the same run crashed in step 0's backward, not
shipped), and checked op for op against every layer of the 14 ZeRO LoRA histories (tests/test_allocator_zero.py).

The layer is built from named steps (``_Layer``) and written out as tokens for layer_patterns.run_pattern: a kind
allocates, -n frees the tensor made n tokens earlier. Kinds beyond no_grad_layer's: M<k> a dropout mask of an input of
kind k (bool), a: lora_A's output [b s, r] in the adapters' dtype, w<k>: lora_A's fp32 weight [r, width of k], <k>F:
kind k in fp32.
"""

from __future__ import annotations

from functools import lru_cache

from ...specs import ModelSpec, TrainingSetup
from ..adapters import lora_targets
from .no_grad_layer import llama_family_checkpointed, no_grad_layer_sizes

#: a wrapped Linear's ops on input `i` with output kind `o` (ZeRO-2, bf16 adapters): base output, dropout mask and
#: output, lora_A, lora_B, scaling, the sum; each name's tensor freed as recorded. The result is "sum".
BF16_BLOCK = (("base", "o"), ("mask", "Mi"), ("drop", "i"), ("-", "mask"), ("a", "a"), ("-", "drop"), ("b", "o"),
              ("-", "a"), ("scaled", "o"), ("-", "b"), ("sum", "o"), ("-", "scaled"), ("-", "base"))  # fmt: skip
#: the same with fp32 adapters (ZeRO-3): lora_A's weight fetched, the input cast to fp32, the chain in fp32, the sum
#: cast back
FP32_BLOCK = (("base", "o"), ("w", "wi"), ("xf", "iF"), ("mask", "Mi"), ("drop", "iF"), ("-", "mask"), ("a", "a"),
              ("-", "w"), ("-", "drop"), ("b", "oF"), ("-", "a"), ("scaled", "oF"), ("-", "b"), ("sumf", "oF"),
              ("-", "scaled"), ("-", "base"), ("sum", "o"), ("-", "sumf"), ("-", "xf"))  # fmt: skip
#: after the first step lora_A's weight is fetched as a view: no copy
FP32_LATER_BLOCK = tuple(step for step in FP32_BLOCK if step not in (("w", "wi"), ("-", "w")))


class _Layer:
    """Named allocations and frees, written out as run_pattern tokens."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.at: dict[str, int] = {}

    def alloc(self, name: str, kind: str) -> str:
        self.at[name] = len(self.tokens)
        self.tokens.append(kind)
        return name

    def free(self, *names: str) -> None:
        for name in names:
            self.tokens.append(f"-{len(self.tokens) - self.at.pop(name)}")

    def norm(self, p: str, f: str = "F", r: str = "r", x: str = "X") -> str:
        """An RMSNorm (its input kept by the caller): the fp32 upcast, its pow, mean, + eps, rsqrt, the product, the
        cast back and the weight product (no_grad_layer's "F F r -2 r r -2 F -3 -9 X X -2 -6 -12")."""
        h, sq, mean = self.alloc(p + "h", f), self.alloc(p + "sq", f), self.alloc(p + "mean", r)
        self.free(sq)
        eps, rs = self.alloc(p + "eps", r), self.alloc(p + "rs", r)
        self.free(eps)
        normed = self.alloc(p + "n", f)
        self.free(rs, h)
        cast, out = self.alloc(p + "c", x), self.alloc(p + "o", x)
        self.free(cast, normed, mean)
        return out

    def normed(self, p: str, x: str, f: str, r: str, kind: str) -> str:
        """norm() of the tensor `x`, then `x` freed."""
        out = self.norm(p, f, r, kind)
        self.free(x)
        return out

    def linear(self, p: str, i: str, o: str, block) -> str:
        """A projection from input kind `i` to output kind `o`: its LoRA block, or (block None) its output alone."""
        if block is None:
            return self.alloc(p, o)
        kinds = {"o": o, "i": i, "Mi": f"M{i}", "wi": f"w{i}", "iF": f"{i}F", "oF": f"{o}F", "a": "a"}
        for name, what in block:
            if name == "-":
                self.free(p + what)
            else:
                self.alloc(p + name, kinds[what])
        return p + "sum"

    def rotary(self, p: str, x: str, half: str) -> str:
        """apply_rotary_pos_emb on one of q / k (no_grad_layer's "Q Qh Q -2 Q -3 Q -7 -4")."""
        cos, h = self.alloc(p + "cos", x), self.alloc(p + "h", half)
        cat = self.alloc(p + "cat", x)
        self.free(h)
        sin = self.alloc(p + "sin", x)
        self.free(cat)
        out = self.alloc(p + "r", x)
        self.free(cos, sin)
        return out


def lora_no_grad_pattern(
    model: ModelSpec, setup: TrainingSetup, liger: bool, first: bool, fsdp: bool = False
) -> tuple[tuple[str, ...], int] | None:
    """lora_no_grad_layer where it applies: LoRA with dropout under ZeRO-2 / ZeRO-3, or on an FSDP rank (`fsdp`: the
    one-GPU setup, bf16 adapters as FSDP2 gathers them, the ZeRO-2 chain), on a layer the no-grad patterns were read
    from (no_grad_layer.llama_family_checkpointed); else None."""
    applies = (
        setup.method == "lora" and (fsdp or setup.parallel in ("zero2", "zero3")) and setup.lora.dropout > 0
        and llama_family_checkpointed(model, setup, liger)
    )  # fmt: skip
    return lora_no_grad_layer(model, setup, first) if applies else None


def lora_no_grad_layer(model: ModelSpec, setup: TrainingSetup, first: bool = True) -> tuple[tuple[str, ...], int]:
    """The layer's tokens and the token of its output (the second residual sum, the only tensor left). ZeRO-3 fetches
    lora_A's weight as a copy in the `first` step's forward only (the later steps' histories make none)."""
    targets = frozenset(t.name.rsplit(".", 1)[-1] for t in lora_targets(model, setup.lora))
    fp32 = setup.parallel == "zero3"
    block = (FP32_BLOCK if first else FP32_LATER_BLOCK) if fp32 else BF16_BLOCK
    return _layer(targets, block, model.qk_norm)


@lru_cache(maxsize=32)
def _layer(targets: frozenset[str], block: tuple, qk_norm: bool) -> tuple[tuple[str, ...], int]:
    on = lambda name: block if name in targets else None  # noqa: E731
    g = _Layer()
    hn = g.norm("n1")
    q = g.linear("q", "X", "Q", on("q_proj"))
    if qk_norm:  # Qwen3's RMSNorm over each head, right after the projection, which it frees
        q = g.normed("qn", q, "QF", "rQ", "Q")
    k = g.linear("k", "X", "K", on("k_proj"))
    if qk_norm:
        k = g.normed("kn", k, "KF", "rK", "K")
    v = g.linear("v", "X", "K", on("v_proj"))
    qr, kr = g.rotary("rq", "Q", "Qh"), g.rotary("rk", "K", "Kh")
    g.free(q, k)
    t1, t2, attn, lse, t3 = (g.alloc(n, kind) for n, kind in (("t1", "t"), ("t2", "t"), ("attn", "Q"), ("lse", "L"),
                                                              ("t3", "t")))  # fmt: skip
    g.free(t3, lse, t1, t2)
    o = g.linear("o", "Q", "X", on("o_proj"))
    g.free(attn, qr, kr, v, hn)
    h2 = g.alloc("h2", "X")
    g.free(o)
    hn2 = g.norm("n2")
    gate = g.linear("gate", "X", "I", on("gate_proj"))
    act = g.alloc("act", "I")
    g.free(gate)
    up = g.linear("up", "X", "I", on("up_proj"))
    prod = g.alloc("prod", "I")
    g.free(act, up)
    down = g.linear("down", "I", "X", on("down_proj"))
    g.free(prod, hn2)
    out = g.alloc("out", "X")
    g.free(down, h2)
    return tuple(g.tokens), g.at[out]


def lora_no_grad_sizes(model: ModelSpec, setup: TrainingSetup) -> dict[str, int]:
    """Bytes of each kind for one micro-batch: no_grad_layer's, the masks, lora_A's output and weights, fp32 kinds."""
    sizes = no_grad_layer_sizes(model, setup)
    n, r = setup.batch_size * setup.seq_len, setup.lora.rank
    widths = {"X": model.hidden_size, "Q": model.num_heads * model.head_dim,
              "K": model.num_kv_heads * model.head_dim, "I": model.intermediate_size}  # fmt: skip
    for kind, width in widths.items():
        sizes[f"M{kind}"] = n * width  # torch.bool
        sizes[f"{kind}F"] = n * width * 4
        sizes[f"w{kind}"] = r * width * 4
    sizes["a"] = n * r * (4 if setup.parallel == "zero3" else 2)
    return sizes
