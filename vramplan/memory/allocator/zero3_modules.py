"""The hooked modules of a decoder as DeepSpeed ZeRO-3 sees them, and the hook calls of one training step in order
(forward, backward with non-reentrant checkpoint recomputation, the step's end): the input of zero3_fetch.py's
parameter coordinator. Pure Python, no torch; the rules and their DeepSpeed / torch sources are in zero3_fetch.py's
docstring ("Hooks", "Step end").
"""

from __future__ import annotations

from dataclasses import dataclass, field


# ---------------------------------------------------------------------------------------------- model description
@dataclass(frozen=True)
class Z3Module:
    """One nn.Module that carries ZeRO-3 hooks. ``params``: its direct parameters as (name, numel), a tied weight
    under the name of the module that owns it; ``children``: the modules its forward calls, in call order;
    ``grad_out``: its output requires grad (pre-backward hook fires); ``grad_in``: some input requires grad
    (post-backward hook fires); ``saves_weight``: its forward saves its weight for backward (linear, RMSNorm);
    ``checkpoint``: its forward runs under non-reentrant torch.utils.checkpoint."""

    name: str
    params: tuple[tuple[str, int], ...] = ()
    children: tuple[str, ...] = ()
    grad_out: bool = True
    grad_in: bool = True
    saves_weight: bool = False
    checkpoint: bool = False


@dataclass
class Z3Model:
    """Modules in registration order (po:337-356 assigns ds_id depth first), the root first; parameters in
    creation order (their ds_id), a tied one once."""

    modules: dict[str, Z3Module]
    param_numel: dict[str, int] = field(default_factory=dict)
    #: bytes per element of the parameters that are not bf16 (PEFT's fp32 adapters under ZeRO-3)
    param_itemsize: dict[str, int] = field(default_factory=dict)
    #: the parameters that need no gradient (LoRA's base model)
    frozen: frozenset = frozenset()

    def __post_init__(self):
        if not self.param_numel:
            for m in self.modules.values():
                for name, numel in m.params:
                    self.param_numel.setdefault(name, numel)

    @property
    def root(self) -> str:
        return next(iter(self.modules))


def decoder_modules(spec, lora: tuple[int, frozenset] | None = None) -> Z3Model:
    """The hooked modules of a Llama / Qwen2 / Qwen3-style *ForCausalLM (transformers 5 modeling_llama.py etc.):
    root, model, embed_tokens, rotary_emb, layers.i.{input_layernorm, self_attn.{q,k,v,o}_proj (+ q_norm /
    k_norm), post_attention_layernorm, mlp.{gate,up,down}_proj, mlp.act_fn}, norm, lm_head (tied: embed's
    weight). ``spec``: a vramplan ModelSpec. ``lora``: (rank, the wrapped Linears' names such as "q_proj"): PEFT's
    LoRA Linear in their place (peft tuners/lora/layer.py Linear.forward: base_layer, then lora_dropout, lora_A and
    lora_B of the adapter, each a module of its own), under PeftModelForCausalLM and LoraModel; the adapters fp32,
    made after the model (their ds_ids after every base parameter: the engine's _convert_to_zero_parameters)."""
    if spec.moe or spec.fused_qkv or spec.fused_gate_up or spec.post_norm or spec.norms_per_layer != 2 or spec.mla:
        raise NotImplementedError(f"{spec.name}: not a plain Llama/Qwen2/Qwen3 decoder")
    h, hd, i = spec.hidden_size, spec.head_dim, spec.intermediate_size
    q_out, kv_out = spec.num_heads * hd, spec.num_kv_heads * hd
    mods: dict[str, Z3Module] = {}
    rank, targets = lora if lora else (0, frozenset())
    adapters: list[tuple[str, int]] = []

    def add(name, params=(), **kw):
        mods[name] = Z3Module(name, tuple(params), **kw)

    if lora:
        add("peft", children=("peft.base_model",), grad_in=False)
        add("peft.base_model", children=("root",), grad_in=False)

    def linear(name, n_in, n_out, bias):
        ps = [(f"{name}.weight", n_in * n_out)] + ([(f"{name}.bias", n_out)] if bias else [])
        if name.rsplit(".", 1)[-1] not in targets:
            return add(name, ps, saves_weight=True)
        base, drop, a, b = (f"{name}.{m}" for m in ("base_layer", "lora_dropout.default", "lora_A.default",
                                                    "lora_B.default"))  # fmt: skip
        # the wrapper's forward reads lora_A's weight (_cast_input_dtype(x, lora_A.weight.dtype)) before lora_A runs:
        # an access ("@" child) that ZeRO-3's ZeROOrderedDict turns into an external parameter of the wrapper
        add(name, children=(base, f"@{a}.weight", drop, a, b))
        add(base, [(f"{base}.{k.rsplit('.', 1)[-1]}", n) for k, n in ps], saves_weight=True)
        add(drop)
        for m, n in ((a, rank * n_in), (b, n_out * rank)):
            add(m, [(f"{m}.weight", n)], saves_weight=True)
            adapters.append((f"{m}.weight", n))

    embed = "model.embed_tokens"
    layers = [f"model.layers.{k}" for k in range(spec.num_layers)]
    add("root", children=("model", "lm_head"), grad_in=False)  # input_ids, labels: no grad
    add("model", children=(embed, "model.rotary_emb", *layers, "model.norm"), grad_in=False)
    add(embed, [(f"{embed}.weight", spec.vocab_size * h)], grad_in=False)
    # mods are registered in __init__ order (ds_id): the model's children first, lm_head last
    qk_norm = bool(spec.qk_norm)
    for L in layers:
        a, m = f"{L}.self_attn", f"{L}.mlp"
        attn_calls = [f"{a}.q_proj"] + ([f"{a}.q_norm"] if qk_norm else []) + [f"{a}.k_proj"] + (
            [f"{a}.k_norm"] if qk_norm else []) + [f"{a}.v_proj", f"{a}.o_proj"]
        add(L, children=(f"{L}.input_layernorm", a, f"{L}.post_attention_layernorm", m), checkpoint=True)
        add(a, children=tuple(attn_calls))
        linear(f"{a}.q_proj", h, q_out, spec.attention_bias)
        linear(f"{a}.k_proj", h, kv_out, spec.attention_bias)
        linear(f"{a}.v_proj", h, kv_out, spec.attention_bias)
        linear(f"{a}.o_proj", q_out, h, spec.attention_out_bias)
        if qk_norm:
            add(f"{a}.q_norm", [(f"{a}.q_norm.weight", hd)], saves_weight=True)
            add(f"{a}.k_norm", [(f"{a}.k_norm.weight", hd)], saves_weight=True)
        add(m, children=(f"{m}.gate_proj", f"{m}.act_fn", f"{m}.up_proj", f"{m}.down_proj"))
        linear(f"{m}.gate_proj", h, i, spec.mlp_bias)
        linear(f"{m}.up_proj", h, i, spec.mlp_bias)
        linear(f"{m}.down_proj", i, h, spec.mlp_bias)
        add(f"{m}.act_fn")
        add(f"{L}.input_layernorm", [(f"{L}.input_layernorm.weight", h)], saves_weight=True)
        add(f"{L}.post_attention_layernorm", [(f"{L}.post_attention_layernorm.weight", h)], saves_weight=True)
    add("model.norm", [("model.norm.weight", h)], saves_weight=True)
    add("model.rotary_emb", grad_out=False, grad_in=False)  # @torch.no_grad forward: cos / sin need no grad
    head = [(f"{embed}.weight", spec.vocab_size * h)] if spec.tie_word_embeddings else [
        ("lm_head.weight", spec.vocab_size * h)]
    add("lm_head", head, saves_weight=True)
    if not lora:
        return Z3Model(mods)
    lora_names = {n for n, _ in adapters}
    numel = {n: k for m in mods.values() for n, k in m.params if n not in lora_names}
    return Z3Model(mods, {**numel, **dict(adapters)}, dict.fromkeys(lora_names, 4), frozenset(numel))


# ---------------------------------------------------------------------------------------------- hook schedule
def step_hooks(model: Z3Model) -> list[tuple]:
    """The hook calls of one training step, in order: ("reset",), ("pre_fwd"|"post_fwd"|"pre_bwd"|"post_bwd",
    module, recompute), ("hold"|"unhold", module) for a checkpointed module's saved weight, ("leftovers",),
    ("optimizer",). Backward runs in reverse call order (autograd's ready queue takes the highest sequence number,
    i.e. the most recently created node, first)."""
    mods = model.modules
    out: list[tuple] = [("reset",)]

    def saving(name):  # modules whose forward saves a tensor, in call order, under `name`
        m = mods[name]
        return ([name] if m.saves_weight else []) + [s for c in m.children if c[0] != "@" for s in saving(c)]

    def forward(name, recompute=False, stop=None, held=False):
        """returns True when the recomputation stopped early inside `stop`"""
        m = mods[name]
        out.append(("pre_fwd", name, recompute))
        if held and m.saves_weight:
            out.append(("hold", name))
        if name == stop:
            return True  # checkpoint early stop inside the last saving op: no post-forward hooks above it
        for c in m.children:
            if c[0] == "@":  # a read of another module's parameter inside this one's forward
                out.append(("access", name, c[1:], recompute))
            elif forward(c, recompute, stop, held):
                return True
        out.append(("post_fwd", name, recompute))
        return False

    def backward(name, ckpt=None):
        m = mods[name]
        if not m.grad_out:
            return
        out.append(("pre_bwd", name, False))
        if m.checkpoint:
            ckpt = {"root": name, "last": saving(name)[-1], "done": False}
        for c in reversed(m.children):
            if c[0] != "@":
                backward(c, ckpt)
        if ckpt is not None and m.saves_weight:
            if not ckpt["done"]:  # first unpack in the block: recompute its forward (early stop at `last`)
                ckpt["done"] = True
                forward(ckpt["root"], recompute=True, stop=ckpt["last"], held=True)
            out.append(("unhold", name))
        if m.grad_in:
            out.append(("post_bwd", name, False))

    forward(model.root)
    backward(model.root)
    out += [("leftovers",), ("optimizer",)]
    return out
