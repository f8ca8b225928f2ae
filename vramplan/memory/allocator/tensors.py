"""Single tensors behind the memory terms: what the allocator sees one request at a time.

The terms of vramplan.estimator are totals (weights by role, states, activations by component); the
allocator model needs the tensors, in the order they are created. Each function here splits a term
into tensors whose bytes add up to the term exactly (tests/test_allocator_sequence.py checks it).
"""

from ...models.params import LinearShape, expert_param_shapes, linear_shapes, moe_layers, param_counts
from ...specs import ModelSpec, TrainingSetup
from ..activations import LayerActivations
from ..adapters import ADAPTER_BYTES_PER_PARAM, adapter_pairs, lora_targets
from ..constants import (
    BNB_MIN_8BIT_SIZE,
    BNB_PAGED_MIN_NUMEL,
    BNB_STATE_BLOCKSIZE,
    BYTES_PER_DTYPE,
    NF4_BLOCKSIZE,
    NF4_CODE_BYTES,
    NF4_DQ_BLOCKSIZE,
    NF4_DQ_CODE_BYTES,
    NF4_DQ_OFFSET_BYTES,
)
from ..trainable import TensorGroup
from .rules import block_bytes

FP32 = 4


def spread(count: int, layers: int) -> list[int]:
    """How many of `count` tensors of one kind each decoder layer holds (k-th tensor in layer k*L//count): layer j
    holds the k with j*count <= k*L < (j+1)*count, ceil((j+1)*count/L) - ceil(j*count/L) of them."""
    if count == layers:
        return [1] * layers
    starts = [-(-j * count // layers) for j in range(layers + 1)]
    return [b - a for a, b in zip(starts, starts[1:])]


def layer_weight_tensors(
    model: ModelSpec, setup: TrainingSetup, fp32_upcast: bool = True
) -> list[list[tuple[str, list[int], int]]]:
    """Base-model weights of each decoder layer in module order: (name, resident tensors, bf16 bytes loaded first).

    Linear weights are block-rounded (weights.weight_bytes), and for QLoRA bitsandbytes' pieces (packed data,
    absmax, codes: weights.nf4_matrix_bytes / int8_matrix_bytes) made from a bf16 load of the weight; then
    biases, q/k norms, MoE experts and router, and the layer norms, raw bytes (weights.other), loaded bf16 and
    cast up to fp32 for QLoRA when the stack upcasts (`fp32_upcast`, StackProfile.kbit_fp32_upcast; bf16 bytes 0 =
    created directly; without the upcast they stay as loaded, bf16 bytes = resident bytes)."""
    L = model.num_layers
    quant = setup.method == "qlora"
    nbytes = FP32 if quant and fp32_upcast else BYTES_PER_DTYPE[setup.dtype]
    layers: list[list[tuple[str, list[int], int]]] = [[] for _ in range(L)]

    def other(layer: list, name: str, nbytes_fp: int) -> None:
        layer.append((name, [nbytes_fp], (nbytes_fp // 2 if fp32_upcast else nbytes_fp) if quant else 0))

    for s in linear_shapes(model):
        if s.role == "lm_head":
            continue
        n = s.in_features * s.out_features
        item = (s.name, quantized_pieces(s.out_features, s.in_features, setup), n * 2) if quant else (
            s.name, [block_bytes(n * nbytes)], 0
        )
        for layer, k in zip(layers, spread(s.count, L)):
            for _ in range(k):
                layer.append(item)
                if s.bias:
                    other(layer, s.name + ".bias", s.out_features * nbytes)
    qk = param_counts(model)["qk_norm"] // L
    for layer in layers:
        if qk:
            other(layer, "self_attn.k_norm", qk // 2 * nbytes)
            other(layer, "self_attn.q_norm", (qk - qk // 2) * nbytes)
    shapes = expert_param_shapes(model)
    for i in moe_layers(model):
        for name, shape in shapes.items():
            n = 1
            for d in shape:
                n *= d
            other(layers[i], name, n * nbytes)
    for layer in layers:
        for k in range(model.norms_per_layer):
            other(layer, f"norm{k}", model.hidden_size * nbytes)
    return layers


def quantized_pieces(out_features: int, in_features: int, setup: TrainingSetup) -> list[int]:
    """Tensors of one bitsandbytes-quantized weight (sum = weights.nf4_matrix_bytes / int8_matrix_bytes)."""
    n = out_features * in_features
    if setup.quant == "int8":
        return [block_bytes(n), block_bytes(out_features * FP32)]
    nblocks = -(-n // NF4_BLOCKSIZE)
    pieces = [block_bytes(-(-n // 2)), block_bytes(NF4_CODE_BYTES)]
    if setup.double_quant:
        pieces += [
            block_bytes(nblocks),
            block_bytes(-(-nblocks // NF4_DQ_BLOCKSIZE) * FP32),
            block_bytes(NF4_DQ_CODE_BYTES),
            block_bytes(NF4_DQ_OFFSET_BYTES),
        ]
    else:
        pieces.append(block_bytes(nblocks * FP32))
    return pieces


def quantization_steps(out_features: int, in_features: int, setup: TrainingSetup) -> list[tuple[int, bool]]:
    """What quantizing one bf16 weight on the device allocates, in order: (bytes, freed at the end?).

    bitsandbytes backends/cuda/ops.py::_quantize_4bit_impl makes the fp32 absmax, then the packed data;
    with double quantization functional.py::quantize_4bit centres the absmax (absmax - offset, a new fp32
    tensor) and quantize_blockwise makes the uint8 absmax, its fp32 absmax and code, and both fp32 absmax
    tensors are dropped; int8_vectorwise_quant makes CB then SCB. The kept tensors add up to
    quantized_pieces."""
    n = out_features * in_features
    if setup.quant == "int8":
        return [(block_bytes(n), False), (block_bytes(out_features * FP32), False)]
    nblocks = -(-n // NF4_BLOCKSIZE)
    absmax, packed = block_bytes(nblocks * FP32), block_bytes(-(-n // 2))
    code = (block_bytes(NF4_CODE_BYTES), False)
    if not setup.double_quant:
        return [(absmax, False), (packed, False), code]
    return [
        (absmax, True),
        (packed, False),
        (block_bytes(NF4_DQ_OFFSET_BYTES), False),
        (absmax, True),  # absmax - offset
        (block_bytes(nblocks), False),
        (block_bytes(-(-nblocks // NF4_DQ_BLOCKSIZE) * FP32), False),
        (block_bytes(NF4_DQ_CODE_BYTES), False),
        code,
    ]


def layer_adapter_tensors(
    model: ModelSpec, setup: TrainingSetup, itemsize: int = ADAPTER_BYTES_PER_PARAM
) -> list[list[int]]:
    """lora_A / lora_B weights of each layer, fp32 unless the stack casts them (`itemsize`, StackProfile.adapter_itemsize;
    sum = adapters.adapter_bytes)."""
    layers: list[list[int]] = [[] for _ in range(model.num_layers)]
    if setup.lora is None:
        return layers
    for p in adapter_pairs(model, setup.lora):
        a = block_bytes(p.a_rows * p.a_cols * itemsize)
        b = block_bytes(p.b_rows * p.b_cols * itemsize)
        for layer, n in zip(layers, spread(p.count, model.num_layers)):
            layer.extend([a, b] * n)
    return layers


def layer_adapter_copies(model: ModelSpec, setup: TrainingSetup) -> list[list[int]]:
    """autocast's bf16 copy of each fp32 lora_A / lora_B weight of a layer (2 bytes per parameter), in use order.

    torch aten/src/ATen/autocast_mode.cpp::cached_cast caches the lower-precision cast of an fp32 leaf that
    requires grad (the trainable adapters; not the frozen base weights) until autocast exits. Only the nn.Linear
    targets (lora_targets); PEFT's ParamWrapper on fused MoE experts is left out."""
    layers: list[list[int]] = [[] for _ in range(model.num_layers)]
    if setup.lora is None:
        return layers
    for p in adapter_pairs(model, setup.lora)[: len(lora_targets(model, setup.lora))]:
        a, b = block_bytes(p.a_rows * p.a_cols * 2), block_bytes(p.b_rows * p.b_cols * 2)
        for layer, n in zip(layers, spread(p.count, model.num_layers)):
            layer.extend([a, b] * n)
    return layers


def grouped_by_layer(groups: list[TensorGroup], layers: int) -> tuple[list[list[TensorGroup]], list[TensorGroup]]:
    """Trainable tensors by the decoder layer whose backward makes their gradient, and those of the head
    (embeddings, lm_head, final norm), one TensorGroup of count 1 per tensor."""
    per_layer: list[list[TensorGroup]] = [[] for _ in range(layers)]
    head: list[TensorGroup] = []
    for g in groups:
        one = TensorGroup(g.name, 1, g.rows, g.cols, g.itemsize, g.is_embedding)
        if g.name in ("embed_tokens", "lm_head"):
            head.append(one)
            continue
        in_layers = g.count - 1 if g.name == "norms" else g.count  # the final norm belongs to the head
        for layer, n in zip(per_layer, spread(in_layers, layers)):
            layer.extend([one] * n)
        if g.name == "norms":
            head.append(one)
    return per_layer, head


def grad_tensor(g: TensorGroup) -> int:
    """One gradient, in the parameter's dtype (optimizer.gradient_bytes)."""
    return block_bytes(g.numel * g.itemsize)


def state_tensors(g: TensorGroup, setup: TrainingSetup) -> list[int]:
    """The optimizer-state tensors of one parameter in the torch allocator, in creation order (torch
    adam.py::_init_group: step, exp_avg, exp_avg_sq; bitsandbytes Optimizer2State.init_state: state1,
    state2, absmax1, absmax2); sum = optimizer._state_bytes_per_tensor, paged buffers left out."""
    n, opt = g.numel, setup.optimizer
    if opt.startswith("paged_") and n >= BNB_PAGED_MIN_NUMEL:
        return []  # cudaMallocManaged, outside the pool
    if opt in ("adamw_torch_fused", "adamw_torch"):
        step = [512] if opt == "adamw_torch_fused" else []
        return step + [block_bytes(n * g.itemsize)] * 2
    if opt in ("adamw_8bit", "paged_adamw_8bit"):
        if g.is_embedding or n < BNB_MIN_8BIT_SIZE:
            return [block_bytes(n * FP32)] * 2
        absmax = block_bytes(-(-n // BNB_STATE_BLOCKSIZE) * FP32)
        return [block_bytes(n), block_bytes(n), absmax, absmax]
    if opt == "paged_adamw_32bit":
        return [block_bytes(n * FP32)] * 2
    if opt == "adafactor":
        return [block_bytes(n * FP32)] if g.cols == 1 else [block_bytes(g.rows * FP32), block_bytes(g.cols * FP32)]
    return []  # sgd without momentum


def split_units(units: float, piece: float) -> list[float]:
    """`units` as pieces of `piece` units and one remainder."""
    if units <= 0:
        return []
    if piece <= 0 or units <= piece:
        return [units]
    k = int(units // piece)
    rest = units - k * piece
    return [piece] * k + ([rest] if rest > 1e-9 else [])


def activation_tensors(
    model: ModelSpec, setup: TrainingSetup, act: LayerActivations, unit_bytes: int, layer_bytes: int
) -> list[int]:
    """One decoder layer's saved tensors in forward order (sum = layer_bytes): the first norm's, the attention
    targets' LoRA inputs, attention q, k, v, out, the second norm's, the MLP targets' LoRA inputs, the MLP
    intermediates (i = intermediate/h units each, fp32 under QLoRA: activations._mlp_units), in b*s*h units."""
    return _to_bytes(_activation_units(model, setup, act)[0], unit_bytes, layer_bytes)


def activation_anchors(model: ModelSpec, setup: TrainingSetup, act: LayerActivations) -> tuple[int, int, int]:
    """Indices into activation_tensors' list: the first attention piece (q_proj's output), the first piece
    after the attention (the residual sum behind o_proj), the first MLP piece (gate_proj's output)."""
    return _activation_units(model, setup, act)[1]


def lora_target_pieces(model: ModelSpec, setup: TrainingSetup, act: LayerActivations) -> list[tuple[LinearShape, int]]:
    """Each LoRA target of a layer with the index, into activation_tensors' list, of its first saved piece (its
    pieces, in _lora_pieces' order: the bf16 copy of its input, the dropout mask, lora_A's output)."""
    if setup.lora is None or not act.saved_units.get("lora"):
        return []
    per = 3 if setup.lora.dropout > 0 else 2
    _, (a0, _, m0) = _activation_units(model, setup, act)
    lora_attn, lora_mlp = _lora_pieces(model, setup, act.saved_units["lora"])
    targets = lora_targets(model, setup.lora)
    attn = [t for t in targets if t.name.startswith("self_attn")]
    mlp = [t for t in targets if not t.name.startswith("self_attn")]
    # the attention targets' pieces come right before the attention's, the MLP targets' right before the MLP's
    # (a remainder piece, if any, after the last target's)
    attn_start, mlp_start = a0 - len(lora_attn), m0 - len(lora_mlp)
    return [(t, attn_start + per * j) for j, t in enumerate(attn)] + [(t, mlp_start + per * j) for j, t in enumerate(mlp)]


def _activation_units(model: ModelSpec, setup: TrainingSetup, act: LayerActivations):
    h = model.hidden_size
    qw, kw, i = model.q_width / h, model.kv_width / h, model.intermediate_size / h
    u = dict(act.saved_units)
    norms = split_units(u.pop("norms", 0.0) / 2, 4.0)
    lora_attn, lora_mlp = _lora_pieces(model, setup, u.pop("lora", 0.0))
    att = u.pop("attention", 0.0)
    base = [2 * qw, 2 * kw, 2 * kw, 2 * qw]
    attention = base + split_units(att - sum(base), 2 * qw) if att > sum(base) else [att]
    mlp = split_units(u.pop("mlp", 0.0), (4.0 if setup.method == "qlora" else 2.0) * i)
    rest = [x for v in u.values() for x in split_units(v, 4.0)]  # q/k norms
    units = norms + lora_attn + attention + rest + norms + lora_mlp + mlp
    a0 = len(norms) + len(lora_attn)
    a_end = a0 + len(attention) + len(rest)
    return units, (a0, a_end, a_end + len(norms) + len(lora_mlp))


def _lora_pieces(model: ModelSpec, setup: TrainingSetup, total: float) -> tuple[list[float], list[float]]:
    """Per LoRA target of a layer: its input's bf16 copy (2 f_t), dropout mask (f_t), lora_B input (2 r / h)
    (activations._lora_units), split into the attention's and the MLP's targets."""
    if total <= 0 or setup.lora is None:
        return [], []
    h, r = model.hidden_size, setup.lora.rank
    attn: list[float] = []
    mlp: list[float] = []
    listed = 0.0
    for s in lora_targets(model, setup.lora):
        per_layer = s.count / model.num_layers
        f = s.in_features / h
        pieces = [2.0 * f] + ([f] if setup.lora.dropout > 0 else []) + [2.0 * r / h]
        pieces = [p * per_layer for p in pieces]
        listed += sum(pieces)
        (attn if s.name.startswith("self_attn") else mlp).extend(pieces)
    (mlp or attn).append(total - listed) if abs(total - listed) > 1e-9 else None
    return attn, mlp


def pieces_bytes(units: float, piece: float, unit_bytes: int, total_bytes: int) -> list[int]:
    """`total_bytes` (= units x unit_bytes) as tensors of `piece` units."""
    return _to_bytes(split_units(units, piece), unit_bytes, total_bytes)


def _to_bytes(units: list[float], unit_bytes: int, total_bytes: int) -> list[int]:
    out = [int(u * unit_bytes) for u in units]
    if not out:
        return [total_bytes] if total_bytes > 0 else []
    out[-1] += total_bytes - sum(out)
    return [b for b in out if b > 0]
