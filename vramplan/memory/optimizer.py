"""Gradients, optimizer states and optimizer-step transients.

Gradients have the parameter's dtype and are freed by zero_grad(set_to_none=True) after each
step; with gradient accumulation they stay resident through the next micro-steps.
"""

from ..specs import TrainingSetup
from .allocator import block_bytes
from .constants import (
    ADAFACTOR_TRANSIENT_FP32_COPIES,
    ALLOC_BLOCK_BYTES,
    BNB_MIN_8BIT_SIZE,
    BNB_PAGED_MIN_NUMEL,
    BNB_STATE_BLOCKSIZE,
)
from .trainable import TensorGroup

FP32 = 4


def gradient_bytes(groups: list[TensorGroup]) -> int:
    """One gradient per trainable tensor, in the parameter's dtype (AccumulateGrad)."""
    return sum(g.count * block_bytes(g.numel * g.itemsize) for g in groups)


def optimizer_state_bytes(groups: list[TensorGroup], setup: TrainingSetup) -> tuple[int, int]:
    """(bytes in the torch allocator, bytes in CUDA managed memory) of the persistent optimizer states.

    adamw_torch(_fused): exp_avg + exp_avg_sq zeros_like(p) (param dtype); fused keeps the 0-d `step`
      on the device, one 512-byte block per tensor (torch/optim/adam.py::_init_group).
    adamw_8bit / paged_adamw_8bit: uint8 state1/state2 + fp32 absmax per 256 elements each; tensors under
      4096 elements and every nn.Embedding weight (HF Trainer override to optim_bits=32) keep fp32 states.
    paged_*: buffers of >= 1e5 elements are cudaMallocManaged (invisible to torch.cuda.memory_*).
    adafactor: factored fp32 row + column second moments (vectors: full fp32), no first moment.
    sgd: HF passes no momentum -> no state.
    """
    allocator = 0
    managed = 0
    paged = setup.optimizer.startswith("paged_")
    for g in groups:
        per_tensor = _state_bytes_per_tensor(g, setup.optimizer)
        if paged and g.numel >= BNB_PAGED_MIN_NUMEL:
            managed += g.count * per_tensor
        else:
            allocator += g.count * per_tensor
    return allocator, managed


def _state_bytes_per_tensor(g: TensorGroup, optimizer: str) -> int:
    n = g.numel
    if optimizer in ("adamw_torch_fused", "adamw_torch"):
        step = ALLOC_BLOCK_BYTES if optimizer == "adamw_torch_fused" else 0
        return 2 * block_bytes(n * g.itemsize) + step
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        if g.is_embedding or n < BNB_MIN_8BIT_SIZE:
            return 2 * block_bytes(n * FP32)
        absmax = -(-n // BNB_STATE_BLOCKSIZE) * FP32
        return 2 * (block_bytes(n) + block_bytes(absmax))
    if optimizer == "paged_adamw_32bit":
        return 2 * block_bytes(n * FP32)
    if optimizer == "adafactor":
        if g.cols == 1:
            return block_bytes(n * FP32)
        return block_bytes(g.rows * FP32) + block_bytes(g.cols * FP32)
    if optimizer == "sgd":
        return 0
    raise ValueError(f"unknown optimizer {optimizer!r}")


def optimizer_step_transient_bytes(groups: list[TensorGroup], setup: TrainingSetup) -> int:
    """Extra bytes alive inside optimizer.step() on top of weights, grads and states.

    adamw_torch (foreach): torch._foreach_sqrt(exp_avg_sqs) materialises one state-dtype copy of every
      parameter of the group (adam.py::_multi_tensor_adam) -> +1x params in param dtype.
    adafactor: grad.float(), p.float(), grad**2 and the factored product for the largest parameter
      (transformers optimization.py::Adafactor.step); fp32 parameters skip the two casts.
    fused AdamW, bitsandbytes and SGD update in place.
    """
    if not groups:
        return 0
    if setup.optimizer == "adamw_torch":
        return sum(g.count * block_bytes(g.numel * g.itemsize) for g in groups)
    if setup.optimizer == "adafactor":
        largest = max(groups, key=lambda g: g.numel)
        copies = ADAFACTOR_TRANSIENT_FP32_COPIES if largest.itemsize < FP32 else ADAFACTOR_TRANSIENT_FP32_COPIES - 2
        return copies * block_bytes(largest.numel * FP32)
    return 0
