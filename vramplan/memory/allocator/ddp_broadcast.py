"""DDP's broadcast of the module's states at construction: the flat buffers it copies the parameters into.

torch/nn/parallel/distributed.py DistributedDataParallel.__init__ (init_sync=True, the default) calls
torch/distributed/utils.py::_sync_module_states, which hands every parameter (named_parameters order, a tied weight
once), then every buffer, to dist._broadcast_coalesced with broadcast_bucket_size = 250 MiB. That
(torch/csrc/distributed/c10d/comm.cpp::broadcast_coalesced) splits them with compute_bucket_assignment_by_size
(reducer.cpp: one open bucket per dtype, closed once it holds >= 250 MiB, the buckets sorted by their first
tensor's index), and keeps at most 2 buckets in flight: each BroadcastWork makes its bucket's flat copy
(torch/csrc/utils/tensor_flatten.h::flatten_dense_tensors: at::cat of the tensors; a bucket of one tensor is a view
of it, no copy), and the oldest is finished and freed before a third is made. The flat copies are freed before the
Reducer's gradient buckets are made, but their segments stay cached.

Measured (H200 x2, the load peak minus memory after load less the Reducer's buckets): llama-3.2-1b LoRA 553 MB,
llama-3.1-8b LoRA 1,605 MB, qwen2.5-7b QLoRA 2,625 MB; broadcast_peak_bytes gives 553, 1,604 and 2,624 MB.

Buffers are left out (Llama's and Qwen's rotary inv_freq: head_dim / 2 fp32 elements, in the fp32 bucket).
"""

from __future__ import annotations

from ...specs import ModelSpec, TrainingSetup
from ..adapters import adapter_pairs, lora_targets
from ..constants import BYTES_PER_DTYPE, MIB
from ..stacks import stack_profile
from .tensors import layer_weight_tensors, spread

#: torch/nn/parallel/distributed.py: self.broadcast_bucket_size = 250 * 1024 * 1024
DDP_BROADCAST_BUCKET_BYTES = 250 * MIB
#: torch/csrc/distributed/c10d/comm.cpp::broadcast_coalesced: constexpr auto max_in_flight = 2
DDP_BROADCAST_IN_FLIGHT = 2
FP32 = 4


def module_states(model: ModelSpec, setup: TrainingSetup, embed_bytes: int, lm_head_bytes: int) -> list[tuple[str, int]]:
    """(dtype, bytes) of every parameter in named_parameters order: the embedding, each decoder layer's modules (a LoRA
    target's lora_A and lora_B after its base weight and bias; adapters on MoE experts at the layer's end), the final
    norm, an untied lm_head. A bitsandbytes weight is its packed data (uint8, or int8 for LLM.int8); its QuantState is
    no parameter."""
    profile = stack_profile(setup)
    upcast = setup.method == "qlora" and profile.kbit_fp32_upcast
    item = FP32 if upcast else BYTES_PER_DTYPE[setup.dtype]
    floats = f"float{item}"
    adapters = f"float{profile.adapter_itemsize}"
    pairs = adapter_pairs(model, setup.lora) if setup.lora is not None else []
    n_linear = len(lora_targets(model, setup.lora)) if setup.lora is not None else 0

    def lora_ab(p) -> list[tuple[str, int]]:
        return [(adapters, p.a_rows * p.a_cols * profile.adapter_itemsize), (adapters, p.b_rows * p.b_cols * profile.adapter_itemsize)]

    of_target = {p.name: lora_ab(p) for p in pairs[:n_linear]}
    on_experts = [(lora_ab(p), spread(p.count, model.num_layers)) for p in pairs[n_linear:]]
    states = [(floats, embed_bytes)]
    for k, layer in enumerate(layer_weight_tensors(model, setup, profile.kbit_fp32_upcast)):
        pending, pending_name = [], ""  # a target's adapters, written after its bias
        for name, pieces, _ in layer:
            if pending and name != pending_name + ".bias":
                states += pending
                pending = []
            quantized = setup.method == "qlora" and len(pieces) > 1
            states.append(("int8" if setup.quant == "int8" else "uint8", pieces[0]) if quantized else (floats, pieces[0]))
            if name in of_target:
                pending, pending_name = of_target[name], name
        states += pending
        for ab, counts in on_experts:
            states += ab * counts[k]
    states.append((floats, model.hidden_size * item))
    if lm_head_bytes:
        states.append((floats, lm_head_bytes))
    return states


def broadcast_flat_bytes(states: list[tuple[str, int]], cap: int = DDP_BROADCAST_BUCKET_BYTES) -> list[int]:
    """Each broadcast bucket's flat copy in broadcast order (compute_bucket_assignment_by_size), 0 for a bucket of one
    tensor (a view)."""
    buckets: list[tuple[int, list[int]]] = []  # (first tensor's index, sizes)
    open_: dict[str, tuple[int, list[int]]] = {}
    for i, (dtype, nbytes) in enumerate(states):
        sizes = open_.setdefault(dtype, (i, []))[1]
        sizes.append(nbytes)
        if sum(sizes) >= cap:
            buckets.append(open_.pop(dtype))
    buckets += open_.values()
    return [sum(sizes) if len(sizes) > 1 else 0 for _, sizes in sorted(buckets)]


def ddp_flat_copies(model: ModelSpec, setup: TrainingSetup, weights: dict[str, int]) -> list[int]:
    """The flat copies of the setup's broadcast (broadcast_flat_bytes of module_states), from the estimator's weight
    terms (`weights`: weights.embeddings, weights.lm_head)."""
    embed, lm_head = weights.get("weights.embeddings", 0), weights.get("weights.lm_head", 0)
    return broadcast_flat_bytes(module_states(model, setup, embed, lm_head))


def broadcast_peak_bytes(flat: list[int]) -> int:
    """The most flat-copy bytes alive at once: each bucket with the one before it (DDP_BROADCAST_IN_FLIGHT = 2)."""
    return max((sum(flat[max(0, k - DDP_BROADCAST_IN_FLIGHT + 1) : k + 1]) for k in range(len(flat))), default=0)
