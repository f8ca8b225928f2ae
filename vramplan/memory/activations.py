"""Activations saved for backward, in units of b*s*h bytes per decoder layer.

Derived from what autograd keeps in transformers v5 decoder layers (memory_model.md section 5:
E1/E2 saved-tensor counts on CPU with the CUDA mask correction). Symbols: qw = q_width/h,
kw = kv_width/h, i = intermediate/h, f_t = in_features/h of a LoRA target, r = LoRA rank.

Modes:
* full FT, bf16 weights: norms 2 x (4 fp32 input + 2 normalised) + 2 x 2 linear inputs,
  attention 4qw + 4kw (flash/SDPA: q, k, v, out), MLP 8i (SwiGLU: gate out, act out, up out, product).
* full FT, fp32 weights under bf16 autocast: fp32 residual stream, norms 2 x (4 + 4), autocast casts the
  norm output separately for each consumer (q, k, v: 3 x 2; gate, up: 2 x 2).
* LoRA / QLoRA (frozen base and norms): norms 4 each (only the fp32 input), attention 4qw + 4kw,
  MLP 6i (12i in fp32 when prepare_model_for_kbit_training made the residual stream fp32), plus per
  target: bf16 autocast copy of its input 2 f_t, dropout mask 1 f_t (bool) when dropout > 0, lora_B input 2r/h.
* eager attention: q, repeated K and V, and the output copy 8qw, plus fp32 softmax and bf16 probabilities
  6 * nh * s / h (quadratic in s). Sliding-window layers still build the full [s, s] scores (the window is
  a mask), so eager's bytes do not shrink; flash's never depended on s.
* gpt-oss (modeling_gpt_oss.py): no SDPA (_supports_sdpa=False: "sdpa" runs eager); eager concatenates the
  sink logit and takes the softmax in the logits' dtype, so only bf16 probabilities 2 * nh * s / h are saved;
  flash (kernels-community/vllm-flash-attn3 with s_aux) saves q, k, v, out, lse like any flash kernel.
* DeepSeek MLA (modeling_deepseek_v3.py::DeepseekV3Attention, expand_kv): q and k are nh*(nope+rope) wide,
  v is a view of the kv_b_proj output (nh*(nope+v) stays alive), the same for sdpa and flash in 5.24;
  q_a/kv_a RMSNorms save like any norm of their width.
* every formula here is checked against the traced path (models/traced.py) within 1 % (tests/test_traced.py).
"""

from dataclasses import dataclass, field

from ..errors import VramplanError
from ..specs import ModelSpec, TrainingSetup
from .adapters import lora_targets

#: RMSNorms that multiply by the weight in fp32 and cast afterwards, so full FT saves an fp32 normalised tensor
#: (Gemma: x.float() * (1 + w.float()); OLMo 2/3, gpt-oss: (self.weight * hidden_states).to(input_dtype))
FP32_NORMALISED = ("gemma2", "gemma3_text", "olmo2", "olmo3", "gpt_oss")

#: families whose transformers class has no SDPA path (_supports_sdpa = False): "sdpa" is costed as eager
NO_SDPA = ("gemma2", "gpt_oss")


@dataclass(frozen=True)
class LayerActivations:
    """Per decoder layer: saved units by component (no checkpointing), checkpoint units, transients."""

    saved_units: dict[str, float] = field(default_factory=dict)
    #: what a checkpointed layer keeps: its input hidden state
    checkpoint_units: float = 2.0
    #: outside the layers: final norm and lm_head input
    final_units: float = 0.0

    @property
    def layer_units(self) -> float:
        return sum(self.saved_units.values())


def residual_bytes_per_element(setup: TrainingSetup) -> int:
    """fp32 residual stream for fp32 weights and for QLoRA (prepare_model_for_kbit_training upcasts embeddings)."""
    if setup.method == "qlora" or setup.dtype == "fp32":
        return 4
    return 2


def rotary_tables(spec: ModelSpec, setup: TrainingSetup, itemsize: int) -> list[int]:
    """The bytes of the rotary embedding's cos and sin (cos, sin per rotary embedding), b*s*d elements each of `itemsize`
    (the hidden states' dtype), made once per forward and alive to the end of the layers' backward.

    transformers <Model>.forward calls ``position_embeddings = self.rotary_emb(hidden_states, position_ids)`` once and
    passes it to every decoder layer (qwen2/modeling_qwen2.py:379); LlamaRotaryEmbedding.forward (and each family's
    copy) returns ``cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)`` of width d = head_dim (``cat((freqs, freqs))``);
    every layer's RoPE multiply saves them, a checkpointed layer keeps them as its inputs (history
    h-q7-qlora-r64-gc-s4096: freed right after layer 0's backward). d is qk_rope_head_dim for MLA
    (DeepseekV3RotaryEmbedding), head_dim / 2 for gpt-oss (GptOssRotaryEmbedding: ``emb = freqs``); Gemma 3 makes one
    pair per layer type (Gemma3TextModel: ``position_embeddings[layer_type]``). A traced type: none here (models/traced.py
    charges a saved tensor to the decoder layer that first saves it)."""
    if spec.traced is not None:
        return []
    d = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim
    if spec.model_type == "gpt_oss":
        d //= 2
    sliding = spec.sliding_layers if spec.sliding_layers is not None else (spec.num_layers if spec.sliding_window else 0)
    pairs = 2 if spec.model_type == "gemma3_text" and 0 < sliding < spec.num_layers else 1  # set(config.layer_types)
    return [setup.batch_size * setup.seq_len * d * itemsize] * (2 * pairs)


def layer_activations(spec: ModelSpec, setup: TrainingSetup) -> LayerActivations:
    """Saved activation units of one average decoder layer for this model and setup."""
    if spec.traced is not None:
        return _traced_activations(spec, setup)
    h = spec.hidden_size
    qw, kw = spec.q_width / h, spec.kv_width / h
    residual = residual_bytes_per_element(setup)
    full = setup.method == "full"
    units: dict[str, float] = {}

    units["norms"] = _norm_units(spec, setup)
    units["attention"] = _attention_units(spec, setup, qw, kw)
    if spec.qk_norm:
        # fp32 input + normalised output (Gemma 3 keeps the normalised q/k in fp32 too: 4 instead of 2)
        normalised = (4.0 if spec.model_type in FP32_NORMALISED else 2.0) if full else 0.0
        units["qk_norm"] = (4.0 + normalised) * (qw + kw)
    units["mlp"] = _mlp_units(spec, setup)
    if not full:
        units["lora"] = _lora_units(spec, setup)
    final = (6.0 + 2.0) if full else 4.0
    return LayerActivations(saved_units=units, checkpoint_units=float(residual), final_units=final)


def _norm_units(spec: ModelSpec, setup: TrainingSetup) -> float:
    pre_norms = 2
    fp32_normalised = spec.model_type in FP32_NORMALISED
    if setup.method != "full":
        # frozen weight: only the fp32 input survives (Gemma computes in fp32 too)
        return 4.0 * spec.norms_per_layer
    if setup.dtype == "fp32":
        # fp32 input + fp32 normalised per norm; autocast casts the output once per consumer linear
        consumers = (1 if spec.fused_qkv else 3) + (1 if spec.fused_gate_up else 2)
        return 8.0 * spec.norms_per_layer + 2.0 * consumers
    normalised = 4.0 if fp32_normalised else 2.0  # the weight multiply happens in fp32 (FP32_NORMALISED)
    per_norm = 4.0 + normalised
    return per_norm * spec.norms_per_layer + 2.0 * pre_norms


def _attention_units(spec: ModelSpec, setup: TrainingSetup, qw: float, kw: float) -> float:
    if spec.mla is not None:
        return _mla_units(spec, setup)
    # eager's contiguous output copy (o_proj input). A trainable o_proj keeps it; a frozen base alone does not
    # (traced), yet the measured LoRA eager runs (gemma-2-2b, llama-3.2-1b, H100) need it: kept for LoRA/QLoRA
    out_copy = 2.0 * qw
    eager = setup.attn == "eager" or (setup.attn == "sdpa" and spec.model_type in NO_SDPA)
    if spec.attention_sinks and eager:
        # gpt-oss eager: q, repeat_kv K and V (+ output copy); softmax in bf16: only the probabilities are saved
        return 6.0 * qw + out_copy + 2.0 * spec.num_heads * _attended_len(spec, setup) / spec.hidden_size
    # chunk() views keep the whole fused qkv output alive (memory_model.md 5.5: Phi-3 +2 units), any kernel
    fused = 2.0 * (qw + 2 * kw) - 2.0 * kw if spec.fused_qkv else 0.0
    if eager:
        quadratic = 6.0 * spec.num_heads * _attended_len(spec, setup) / spec.hidden_size
        if spec.attn_logit_softcapping:
            quadratic += 2.0 * spec.num_heads * _attended_len(spec, setup) / spec.hidden_size
        # q, repeat_kv K and V, and the contiguous output copy, which only a trainable o_proj keeps
        return 6.0 * qw + out_copy + quadratic + fused
    # flash / SDPA-flash: q, k, v, out (+ fp32 logsumexp per head, 4*nh/h)
    return 4.0 * qw + 4.0 * kw + 4.0 * spec.num_heads / spec.hidden_size + fused


def _mla_units(spec: ModelSpec, setup: TrainingSetup) -> float:
    """MLA per layer (transformers 5.24 DeepseekV3Attention with expand_kv, the same for every kernel):
    q and k nh*(nope+rope) wide; v is a view of the kv_b_proj output, which stays alive whole (nh*(nope+v));
    out nh*v; eager adds the scores and, for a trainable o_proj, the contiguous output copy; the q_a/kv_a
    RMSNorms save like any norm of their width (full FT 8 per width unit with the q_b/kv_b input, frozen 4)."""
    m, h, nh = spec.mla, spec.hidden_size, spec.num_heads
    assert m is not None
    qk = nh * m.qk_head_dim / h
    v = nh * m.v_head_dim / h
    kv_b_out = nh * (m.qk_nope_head_dim + m.v_head_dim) / h
    latent = (m.q_lora_rank or 0) + m.kv_lora_rank
    norms = (8.0 if setup.method == "full" else 4.0) * latent / h
    if setup.attn == "eager":
        out_copy = 2.0 * v if setup.method == "full" else 0.0
        return norms + 4.0 * qk + 2.0 * kv_b_out + out_copy + 6.0 * nh * _attended_len(spec, setup) / h
    return norms + 4.0 * qk + 2.0 * kv_b_out + 2.0 * v + 4.0 * nh / h


def _attended_len(spec: ModelSpec, setup: TrainingSetup) -> int:
    # eager materialises the full [s, s] score matrix even for sliding-window layers
    return setup.seq_len


def _mlp_units(spec: ModelSpec, setup: TrainingSetup) -> float:
    h = spec.hidden_size
    full = setup.method == "full"
    # bytes per saved MLP element: bf16 under autocast; fp32 when QLoRA's Linear4bit returns the fp32 input dtype
    elem = 4.0 if setup.method == "qlora" else 2.0
    per_width = 4.0 if full else 3.0  # full: gate out, act out, up out, product; frozen: product not saved
    if spec.moe is None:
        return per_width * elem * spec.intermediate_size / h
    moe = spec.moe
    n_moe = spec.num_layers - len(moe.dense_layers)
    dense_i = (moe.dense_intermediate_size or spec.intermediate_size) / h
    # routed experts: each token visits top_k experts; gathered input and weighted output saved per visit
    expert_width = per_width
    if moe.layout == "gpt_oss":
        # GptOssExperts._apply_gate: gate_up (2I, kept by clamp), clamped gate, sigmoid, glu, up + 1, product
        expert_width = 7.0 if full else 6.0
    # per visit: the gathered input (kept only for a trainable expert's weight grad), the expert output (kept by
    # the routing-weight multiply) and the weighted output (kept by index_add's backward for `source`); the MoE
    # input itself is the pre-norm output already counted in the norms. Traced against the eager experts loop.
    per_visit = 6.0 if full else 4.0
    routed = moe.top_k * (expert_width * elem * moe.expert_intermediate_size / h + per_visit)
    router = 4.0 * moe.num_experts / h * 2  # fp32 router logits and softmax [N, E]
    if moe.layout == "deepseek" and full:
        router += 4.0  # DeepseekV3TopkRouter: F.linear(hidden.float(), weight.float()) keeps the fp32 input
    shared = per_width * elem * (moe.shared_expert_intermediate_size or 0) / h
    if moe.shared_expert_gate:  # Qwen2-MoE: sigmoid(shared_expert_gate(x)) * shared_out keeps shared_out
        shared += 2.0
    moe_units = routed + router + shared
    dense_units = per_width * elem * dense_i
    return (n_moe * moe_units + len(moe.dense_layers) * dense_units) / spec.num_layers


def _lora_units(spec: ModelSpec, setup: TrainingSetup) -> float:
    assert setup.lora is not None
    h = spec.hidden_size
    per_input = 2.0 + (1.0 if setup.lora.dropout > 0 else 0.0)
    total = 0.0
    for s in lora_targets(spec, setup.lora):
        per_layer = s.count / spec.num_layers
        total += per_layer * (per_input * s.in_features / h + 2.0 * setup.lora.rank / h)
    return total


def _traced_activations(spec: ModelSpec, setup: TrainingSetup) -> LayerActivations:
    """A traced model (models/traced.py): the traced layer units at this sequence length; LoRA/QLoRA add the
    per-target LoRA terms to the traced frozen base, and under eager the o_proj-input copy the measured LoRA
    runs keep (see _attention_units)."""
    assert spec.traced is not None
    full = setup.method == "full"
    by_attn = spec.traced.activations["full" if full else "frozen"]
    if setup.attn not in by_attn:
        raise VramplanError(
            f"--attn {setup.attn}: the traced {spec.model_type} picks its attention class by name, so only its own "
            f"kernels were traced; accepted: --attn {'|'.join(sorted(by_attn))}"
        )
    traced = by_attn[setup.attn]
    per_layer = traced.layer_units + traced.layer_units_per_token * setup.seq_len
    per_layer += traced.layer_constant_bytes / (setup.batch_size * setup.seq_len * spec.hidden_size)
    units = {"traced": per_layer}
    if not full:
        units["lora"] = _lora_units(spec, setup)
        if setup.attn == "eager":
            units["eager_output_copy"] = 2.0 * spec.q_width / spec.hidden_size
    return LayerActivations(
        saved_units=units, checkpoint_units=float(residual_bytes_per_element(setup)), final_units=traced.final_units
    )
