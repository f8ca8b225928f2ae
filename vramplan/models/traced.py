"""Trace a causal LM that is not hand-modelled: transformers builds it on the meta device, autograd tells us
what one training step saves. The only module of the estimate path that imports torch, and only when a
model is traced (extra `[trace]`); the result is cached as data (traced_cache.py) so later estimates need no torch.

What is recorded (all on `meta`: no weights, no real compute, never trust_remote_code):
* parameters per role (the roles of params.py) and every nn.Linear of a decoder layer, from the built model;
* saved activations per decoder layer: `torch.autograd.graph.saved_tensors_hooks` sees every tensor autograd
  keeps; storages are deduplicated (views count once), parameters and buffers are dropped, and each storage
  is charged to the decoder layer running when it was first saved (forward pre-hooks), the rest to the final
  norm / lm_head input. Two sequence lengths separate the linear and quadratic terms.

CUDA kernel semantics, not the CPU math kernel's: "sdpa" and "flash" run a stand-in attention function that
saves what the CUDA flash kernel saves (torch `_scaled_dot_product_flash_attention` / flash-attn
`FlashAttnFunc.forward`: q, k, v, out and an fp32 logsumexp [b, nh, s]); its name contains "flash" for the
flash case so that model code taking flash-only branches (DeepSeek pads v) takes them. "eager" runs the
model's own eager attention, which is the same math on every device.
MoE experts (transformers v5 `use_experts_implementation`) run a balanced stand-in of the eager loop: the
N*top_k token visits are gathered once and pass through one expert's weights, which saves the same bytes as
the eager per-expert loop with balanced routing (saved bytes do not depend on the balance, memory_model.md 10).
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigError
from .traced_cache import TRACER_VERSION
#: three sequence lengths (batch 1): bytes(s) = c + A*s + C*s^2 separates the per-layer constant (Gemma's
#: fp32 1 + weight), the linear and the quadratic (eager scores) terms
SEQ_LENS = (64, 128, 256)
MODES = ("full", "frozen")
ATTNS = ("sdpa", "flash", "eager")
_ATTN_NAMES = {"sdpa": "vramplan_kernel", "flash": "vramplan_kernel_flash", "eager": "eager"}
_EXPERTS_NAME = "vramplan_balanced"


def trace_config(config: dict[str, Any]) -> dict[str, Any]:
    """The traced record of a config dict (JSON-ready). Raises ConfigError when transformers cannot build it."""
    import torch
    import transformers

    model_type = config.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        from ..specs.model import SUPPORTED_MODEL_TYPES

        raise ConfigError(
            f"unsupported model_type {model_type!r}: not hand-modelled ({', '.join(SUPPORTED_MODEL_TYPES)}) and not "
            f"known to the installed transformers {transformers.__version__}, so it cannot be traced either"
        )
    _register_kernels()
    hf_config = transformers.CONFIG_MAPPING[model_type].from_dict({k: v for k, v in config.items() if k != "model_type"})
    model = _build(hf_config, "eager")
    record: dict[str, Any] = {
        "tracer_version": TRACER_VERSION,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model_type": model_type,
        "shapes": _shapes(hf_config),
        "param_counts": param_roles(model),
        "linears": _linears(model),
        "activations": {},
    }
    h = record["shapes"]["hidden_size"]
    skipped = {}
    for attn in ATTNS:
        try:
            built = model if attn == "eager" else _build(hf_config, attn)
            units = {mode: _units(built, mode, h) for mode in MODES}
        except (KeyError, ValueError, RuntimeError, ConfigError) as err:
            if attn == "eager":
                raise ConfigError(f"cannot trace {model_type}: {type(err).__name__}: {err}") from None
            # attention classes picked by name (Falcon) take no stand-in kernel: that kernel is not traced
            skipped[attn] = f"{type(err).__name__}: {err}"
            continue
        for mode in MODES:
            record["activations"].setdefault(mode, {})[attn] = units[mode]
    record["untraced_kernels"] = skipped
    return record


def param_roles(model: Any) -> dict[str, int]:
    """Parameters per role (tied weights once), named as vramplan.models.params.ROLES."""
    from .params import ROLES

    counts = dict.fromkeys(ROLES, 0)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue  # tied: counted once, where it first appears
            seen.add(id(p))
            counts[_role(f"{module_name}.{name}", module, embed, head)] += p.numel()
    return counts


def _role(name: str, module: Any, embed: Any, head: Any) -> str:
    """The role of one parameter, in the order tests/test_models_params.py::_role defines it for the hand families."""
    if module is embed:
        return "embed_tokens"
    if module is head:
        return "lm_head"
    if ".q_norm." in name or ".k_norm." in name:
        return "qk_norm"
    if any(k in name for k in (".self_attn.", ".attention.", ".attn.")):
        return "attention"
    if ".experts." in name:
        return "experts"
    if name.endswith(".mlp.gate.weight") or ".router." in name:
        return "router"
    if ".mlp." in name or ".feed_forward." in name:
        return "mlp"
    if "norm" in name.lower() or "norm" in type(module).__name__.lower():
        return "norms"
    return "mlp"


def _shapes(cfg: Any) -> dict[str, Any]:
    """The ModelSpec fields the estimator reads, from the transformers config (its attribute_map applies)."""
    heads = int(cfg.num_attention_heads)
    hidden = int(cfg.hidden_size)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * hidden
    return {
        "hidden_size": hidden,
        "num_layers": int(cfg.num_hidden_layers),
        "num_heads": heads,
        "num_kv_heads": int(kv) if heads % int(kv) == 0 else heads,
        "head_dim": int(head_dim),
        "intermediate_size": int(inter),
        "vocab_size": int(cfg.vocab_size),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
    }


def _linears(model: Any) -> list[dict[str, Any]]:
    """Every nn.Linear kind inside the decoder layers (name inside a layer, shape, bias, count), and lm_head."""
    import re

    import torch

    kinds: dict[tuple, int] = {}
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear:
            continue
        if name == "lm_head":
            continue
        inner = re.sub(r"^.*?layers\.\d+\.", "", name)
        role = "attention" if any(k in inner for k in ("attn", "attention")) else "mlp"
        key = (inner, module.in_features, module.out_features, module.bias is not None, role)
        kinds[key] = kinds.get(key, 0) + 1
    out = [
        {"name": n, "in_features": i, "out_features": o, "bias": b, "count": c, "role": r}
        for (n, i, o, b, r), c in sorted(kinds.items())
    ]
    head = model.get_output_embeddings()
    if head is not None:
        out.append({"name": "lm_head", "in_features": head.in_features, "out_features": head.out_features,
                    "bias": False, "count": 1, "role": "lm_head"})  # fmt: skip
    return out


def _build(hf_config: Any, attn: str) -> Any:
    import torch
    import transformers

    cfg = hf_config.__class__.from_dict(hf_config.to_dict())
    cfg._experts_implementation = _EXPERTS_NAME
    # a name with "flash" in it is taken for a hub kernel at build time: build as the sdpa stand-in, then rename.
    # A class without an SDPA path (gpt-oss: _supports_sdpa = False) runs eager when asked for sdpa.
    model_class = transformers.AutoModelForCausalLM._model_mapping.get(type(cfg), None)
    no_sdpa = attn == "sdpa" and model_class is not None and not getattr(model_class, "_supports_sdpa", True)
    build_name = "eager" if attn == "eager" or no_sdpa else _ATTN_NAMES["sdpa"]
    with torch.device("meta"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=build_name, dtype=torch.bfloat16)
        except (ValueError, ImportError) as err:
            raise ConfigError(f"transformers cannot build {cfg.model_type} as a causal LM: {err}") from None
    if attn == "flash":
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation_internal"):
                config._attn_implementation_internal = _ATTN_NAMES["flash"]
    return model


def _units(model: Any, mode: str, hidden: int) -> dict[str, float]:
    """Saved bytes per layer (averaged) and outside the layers, in units of b*s*h bytes, linear + quadratic."""
    per_len = [_saved_bytes(model, mode, s) for s in SEQ_LENS]
    const, lin, quad = _fit([s for s in SEQ_LENS], [layer for layer, _ in per_len])
    _, final_lin, _ = _fit([s for s in SEQ_LENS], [final for _, final in per_len])
    return {
        "layer_units": lin / hidden,
        "layer_units_per_token": quad / hidden,
        "layer_constant_bytes": const,
        "final_units": final_lin / hidden,
    }


def _fit(xs: list[int], ys: list[float]) -> tuple[float, float, float]:
    """c, a, q with y = c + a x + q x^2 through three points (Lagrange form, exact)."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    q = ((y2 - y0) / (x2 - x0) - (y1 - y0) / (x1 - x0)) / (x2 - x1)
    a = (y1 - y0) / (x1 - x0) - q * (x0 + x1)
    return y0 - a * x0 - q * x0 * x0, a, q


def _saved_bytes(model: Any, mode: str, seq_len: int) -> tuple[float, float]:
    """(average saved bytes of one decoder layer, saved bytes of final norm + lm_head input) for one forward.

    A tensor counts when autograd still holds it at the end of the forward (a weak reference tells): branches
    whose graph is dropped during the forward (routing scores that only feed topk indices) free their saved
    tensors at once. Storages are deduplicated among those still alive, whose addresses cannot be reused.
    """
    import weakref

    import torch

    layers = _decoder_layers(model)
    where: dict[str, Any] = {"bucket": "embed"}
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    params |= {b.untyped_storage()._cdata for b in model.buffers()}
    packed: list[tuple[Any, int, Any, int]] = []
    vocab = model.config.vocab_size

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        bucket = where["bucket"]
        if bucket == "head" and t.shape and t.shape[-1] == vocab:
            bucket = "loss"
        packed.append((weakref.ref(t), storage._cdata, bucket, storage.nbytes()))
        return t

    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: where.update(bucket=i)) for i, layer in enumerate(layers)]
    norm = getattr(model.base_model, "norm", None) or getattr(model.base_model, "final_layernorm", None)
    if norm is not None:
        handles.append(norm.register_forward_pre_hook(lambda m, a: where.update(bucket="head")))
    head = model.get_output_embeddings()
    handles.append(head.register_forward_pre_hook(lambda m, a: where.update(bucket="head")))
    seen: dict[int, tuple[Any, int]] = {}
    with _requires_grad(model, mode), _no_packed_sequence_probe():
        ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(inputs_embeds=embeds, use_cache=False)
        for ref, key, bucket, nbytes in packed:
            if ref() is not None and key not in params and key not in seen:
                seen[key] = (bucket, nbytes)
        del output
    for handle in handles:
        handle.remove()
    per_layer = [0] * len(layers)
    final = 0
    for bucket, nbytes in seen.values():
        if isinstance(bucket, int):
            per_layer[bucket] += nbytes
        elif bucket == "head":
            final += nbytes
    return sum(per_layer) / len(per_layer), float(final)


def _decoder_layers(model: Any) -> list[Any]:
    import torch

    best: list[Any] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            best = list(module)
    if not best:
        raise ConfigError(f"cannot find the decoder layers of {type(model).__name__} to trace")
    return best


@contextmanager
def _no_packed_sequence_probe() -> Iterator[None]:
    """transformers looks for packed sequences in position_ids with a data-dependent .all(): not on meta.
    The traced batch is one unpacked sequence (the estimate's "no padding, no packing" assumption)."""
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda *args, **kwargs: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


@contextmanager
def _requires_grad(model: Any, mode: str) -> Iterator[None]:
    """full: every parameter trains; frozen: none does (a LoRA/QLoRA base: only the input needs a gradient)."""
    before = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(mode == "full")
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(before[id(p)])


def _register_kernels() -> None:
    """Register the flash stand-ins (attention) and the balanced eager stand-in (MoE experts) once."""
    from transformers import AttentionInterface
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    for name in ("vramplan_kernel", "vramplan_kernel_flash"):
        AttentionInterface.register(name, _flash_like_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, flash_attention_mask)
    ALL_EXPERTS_FUNCTIONS.register(_EXPERTS_NAME, _balanced_experts)


def _flash_like_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """What the CUDA flash kernel saves: q, k, v (GQA not expanded), out [b, s, nh, dv], lse fp32 [b, nh, s]."""
    return _FlashSaves.apply(query, key, value), None


def _balanced_experts(self, hidden_states, top_k_index, top_k_weights):
    """The eager experts loop with balanced routing, as one gather: same saved bytes, no data-dependent shapes."""
    import torch
    import torch.nn.functional as F

    n, k = top_k_index.shape
    visits = torch.arange(n * k, device=hidden_states.device)
    token_idx, top_k_pos = visits // k, visits % k
    current = hidden_states[token_idx]
    gate_up_w = self.gate_up_proj[0] if self.has_gate else self.up_proj[0]
    if self.is_transposed:
        proj = current @ gate_up_w
    else:
        proj = F.linear(current, gate_up_w)
    if self.has_bias:
        proj = proj + (self.gate_up_proj_bias[0] if self.has_gate else self.up_proj_bias[0])
    proj = self._apply_gate(proj) if self.has_gate else self.act_fn(proj)
    out = proj @ self.down_proj[0] if self.is_transposed else F.linear(proj, self.down_proj[0])
    if self.has_bias:
        out = out + self.down_proj_bias[0]
    out = out * top_k_weights[token_idx, top_k_pos, None]
    final = torch.zeros_like(hidden_states)
    return final.index_add(0, token_idx, out.to(final.dtype))


def _flash_saves_class() -> Any:
    import torch

    class FlashSaves(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):  # q [b, nh, s, d], k/v [b, nkv, s, d]
            b, nh, s, _ = q.shape
            out = q.new_empty(b, s, nh, v.shape[-1])
            lse = q.new_empty(b, nh, s, dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):  # never run: the tracer only records what forward saves
            q, k, v, _, _ = ctx.saved_tensors
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    return FlashSaves


class _LazyFlash:
    _cls = None

    def apply(self, *args):
        if _LazyFlash._cls is None:
            _LazyFlash._cls = _flash_saves_class()
        return _LazyFlash._cls.apply(*args)


_FlashSaves = _LazyFlash()


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=1, sort_keys=True)
