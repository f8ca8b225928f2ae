"""The LM-head / loss term of each stack: bytes on top of the saved layer activations.

Each stack computes the loss differently, and that is often the largest single term (memory_model.md
section 6). Symbols: N = b*s tokens per micro-batch, M = b*(s-1) scored positions (every label valid,
the last position has no next token), V vocabulary, h hidden size, e_h bytes per element of the final
hidden state (2 for a bf16 residual stream, 4 for an fp32 one), e_w bytes per lm_head element.

A `HeadBytes` gives three numbers:
* forward: the peak inside the loss during the forward pass,
* backward: the peak when backward starts (the head's own backward),
* chain: every buffer of one step's loss that the allocator must place (for the steady-step segment rule),
* largest: the largest single loss buffer (what the fragmentation rule strands).
A head that owns the lm_head (TRL's, Liger's) also gives its buffers one tensor each, for the allocation sequence
(memory/allocator/sequence.py): `saved` (kept from forward to backward), `forward_tmp`, `backward_tmp`; saved +
forward_tmp add up to forward, saved + backward_tmp to backward.
"""

import math
from dataclasses import dataclass

from ...specs import ModelSpec, TrainingSetup
from ..loss import logits_count, loss_backward_bytes, loss_forward_bytes

FP32 = 4
BF16 = 2

# --- TRL 1.16 (trl/kernels/chunked_logprob.py, trl/trainer/utils.py::add_fused_lm_head) ---
#: tokens per projection tile (chunked_logprob.py::TOKEN_CHUNK_SIZE)
TRL_TOKEN_TILE = 4096
#: vocabulary columns per tile (trainer/utils.py::_CHUNKED_LOGPROB_CHUNK_SIZE)
TRL_VOCAB_TILE = 32768
#: fp32 [M] running statistics of the forward fold (running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum,
#: max_before_target, target_logit) plus the outputs log_probs and entropy
TRL_FP32_VECTORS_FWD = 9
#: saved for backward: log_z and entropy, fp32 [M]
TRL_FP32_VECTORS_SAVED = 2

# --- Unsloth (unsloth_zoo/fused_losses/fused_linear.py, 2026.10.9) ---
#: rows of one chunk never fall below what holds 512 x 151936 logits (_MIN_LOGITS, rounded down to a power of 2,
#: at least 512) nor exceed _MAX_ROWS; the budget per chunk is min(2 GiB, half the free memory) (_CHUNK_GB)
UNSLOTH_MIN_LOGITS = 512 * 151936
UNSLOTH_MIN_ROWS = 512
UNSLOTH_MAX_ROWS = 4096
UNSLOTH_CHUNK_BUDGET_BYTES = 2 * 1024**3
#: bytes per logit of a chunk (fp32 logits, _bytes_per_logit with fp32_logits)
UNSLOTH_LOGIT_BYTES = 4
#: per chunk row, besides its logits: two fp32 and one bf16 [rows, h] working tensors (H200 history of
#: u-l8-qlora-gc: 8 + 8 + 4 MiB at 512 rows, h 4096)
UNSLOTH_ROW_BYTES_PER_HIDDEN = 10


@dataclass(frozen=True)
class HeadBytes:
    forward: int
    backward: int
    chain: int
    largest: int
    saved: tuple[int, ...] = ()
    forward_tmp: tuple[int, ...] = ()
    #: in creation order; when lm_head is trainable the last one is its weight's gradient
    backward_tmp: tuple[int, ...] = ()


def hf_head(spec: ModelSpec, setup: TrainingSetup) -> HeadBytes:
    """transformers' own loss over full (b, s, V) logits (memory/loss.py: 10 N V forward, 12 N V backward).

    The chain (bf16 logits, fp32 upcast, log_softmax output and its gradient) is 14 N V; with an fp32
    lm_head (QLoRA after prepare_model_for_kbit_training) the chain is the same size in this model.
    """
    nv = logits_count(spec, setup)
    forward, backward = loss_forward_bytes(spec, setup), loss_backward_bytes(spec, setup)
    return HeadBytes(forward=forward, backward=backward, chain=forward + FP32 * nv, largest=FP32 * nv)


def trl_fused_head(spec: ModelSpec, setup: TrainingSetup, *, e_h: int, e_w: int, lm_head_trainable: bool) -> HeadBytes:
    """TRL SFTTrainer's tiled LM head (trl/trainer/utils.py::add_fused_lm_head, kernels/chunked_logprob.py).

    Forward: ``hidden_states[:, :-1][mask]`` gathers the M scored positions (a copy, e_h M h, saved for
    backward); ``ChunkedLogProbFunction.forward`` projects [4096, 32768] tiles into one reused ``mm_buf`` in
    the autocast dtype (bf16) and folds them into fp32 [M] statistics; the tile input and the lm_head slice
    are cast to bf16 per tile when they are not bf16 already (fp32 residual stream / fp32 lm_head).
    It returns log_probs, entropy and is_top1 (SFTTrainer asks for entropy and token accuracy).
    Backward: fp32 ``grad_hidden`` [M, h] (and fp32 ``grad_weight`` [V, h] when lm_head is trainable), the
    tile buffer again, then ``grad_hidden.to(hidden.dtype)`` and ``grad_weight.to(weight.dtype)`` while the
    fp32 accumulators are still referenced (the return statement).
    """
    m = setup.batch_size * (setup.seq_len - 1)
    h, v = spec.hidden_size, spec.vocab_size
    rows = min(m, TRL_TOKEN_TILE)
    tile = rows * min(v, TRL_VOCAB_TILE) * BF16
    casts = (rows * h * BF16 if e_h != BF16 else 0) + (min(v, TRL_VOCAB_TILE) * h * BF16 if e_w != BF16 else 0)
    hidden_copy = m * h * e_h
    saved = hidden_copy + TRL_FP32_VECTORS_SAVED * FP32 * m
    forward = hidden_copy + TRL_FP32_VECTORS_FWD * FP32 * m + m + tile + casts
    grad_weight = v * h * (FP32 + e_w) if lm_head_trainable else 0
    backward = saved + FP32 * m * h + m * h * e_h + tile + casts + grad_weight
    chain = forward + FP32 * m * h + m * h * e_h + tile + (v * h * FP32 if lm_head_trainable else 0)
    # forward: the gathered copy and the saved log_z / entropy, the other statistics, per tile the casts and mm_buf;
    # backward: the fp32 accumulators (grad_hidden, grad_weight), per tile the casts and the tile, then the casts back
    fp32_acc, weight_cast = (v * h * FP32, v * h * e_w) if lm_head_trainable else (0, 0)
    return HeadBytes(
        forward=forward, backward=backward, chain=chain, largest=max(FP32 * m * h, tile),
        saved=(hidden_copy, TRL_FP32_VECTORS_SAVED * FP32 * m),
        forward_tmp=((TRL_FP32_VECTORS_FWD - TRL_FP32_VECTORS_SAVED) * FP32 * m + m, casts, tile),
        backward_tmp=(FP32 * m * h, fp32_acc, casts, tile, m * h * e_h, weight_cast),
    )  # fmt: skip


def liger_chunk_rows(n_tokens: int, vocab: int, hidden: int) -> int:
    """Rows per chunk of Liger's fused linear cross-entropy (ops/fused_linear_cross_entropy.py):
    chunk = min(next_power_of_2(ceil(BT / ceil(V / H))), BT), so a chunk's logits are about BT x H."""
    inc_factor = -(-vocab // hidden)
    rows = -(-n_tokens // inc_factor)
    return min(1 << (rows - 1).bit_length(), n_tokens)


def liger_flce_head(spec: ModelSpec, setup: TrainingSetup, *, e_h: int, e_w: int, lm_head_trainable: bool) -> HeadBytes:
    """Liger's fused linear cross-entropy (liger_kernel/ops/fused_linear_cross_entropy.py, 0.8.5).

    ``LigerForCausalLMLoss`` pads the labels instead of shifting the hidden states, so BT = N rows (a view).
    The forward computes the gradients too: ``grad_input = zeros_like(_input)`` (e_h N h) and, when lm_head is
    trainable, ``grad_weight = zeros_like(weight)`` (e_w V h, the lm_head gradient allocated early), an fp32
    loss vector and a bool target mask; the logits exist one chunk at a time ([chunk, V] in the compute dtype).
    When the lm_head weight is not in the autocast dtype (fp32 lm_head), autocast casts the whole weight to
    bf16 for each chunk's matmul (V h 2, transient). Backward only scales the saved gradients in place.
    """
    n = setup.batch_size * setup.seq_len
    h, v = spec.hidden_size, spec.vocab_size
    chunk_logits = liger_chunk_rows(n, v, h) * v * BF16
    weight_cast = v * h * BF16 if e_w != BF16 else 0
    grad_input = n * h * e_h
    grad_weight = v * h * e_w if lm_head_trainable else 0
    forward = grad_input + grad_weight + (FP32 + 1) * n + chunk_logits + weight_cast
    backward = grad_input + grad_weight
    # the fp32-lm_head cast is the largest block it allocates and frees (once per chunk): what gets stranded
    # (H200 history of s-q7-liger-qlora-gc: reserved sits one cast above allocated)
    largest = max(grad_input, chunk_logits, weight_cast)
    # one tensor each: grad_input kept for backward; grad_weight is made in the forward and kept too, but stands in
    # the backward's buffers here (the sequence makes the lm_head gradient where the other heads make it)
    return HeadBytes(
        forward=forward, backward=backward, chain=forward, largest=largest, saved=(grad_input,),
        forward_tmp=(grad_weight, FP32 * n, n, weight_cast, chunk_logits), backward_tmp=(grad_weight,),
    )  # fmt: skip


def _pow2_floor(x: float) -> int:
    """The largest power of two at or below x (1 for x < 2)."""
    return 1 << max(int(math.floor(math.log2(x))), 0) if x >= 1 else 1


def unsloth_chunk_rows(n_tokens: int, vocab: int, hidden: int) -> int:
    """Rows per chunk of Unsloth's fused linear cross-entropy (unsloth_zoo/fused_losses/fused_linear.py::
    fused_linear_rows): the power of two at or below N h / V (as Liger), raised to the rows that hold
    512 x 151936 logits (a power of two, at least 512), at most 4096 and at most the 2 GiB budget of fp32
    logits, at most N."""
    rows = _pow2_floor(n_tokens * hidden / vocab)
    min_rows = min(max(_pow2_floor(UNSLOTH_MIN_LOGITS / vocab), UNSLOTH_MIN_ROWS), UNSLOTH_MAX_ROWS)
    rows = min(max(rows, min_rows), UNSLOTH_MAX_ROWS)
    rows = min(rows, max(UNSLOTH_CHUNK_BUDGET_BYTES // (vocab * UNSLOTH_LOGIT_BYTES), 2))
    return max(min(rows, n_tokens), 1)


def unsloth_chunked_head(spec: ModelSpec, setup: TrainingSetup, *, e_h: int) -> HeadBytes:
    """Unsloth's fused linear cross-entropy (unsloth_zoo/fused_losses/fused_linear.py, reached through
    cross_entropy_loss.py::unsloth_fused_ce_loss -> chunked_logprob.py::unsloth_chunked_ce_loss).

    The loss and its gradient are computed in the forward, chunk by chunk: the gradient of the hidden states
    [N, h] (e_h, kept for backward), one fp32 [rows, V] logits buffer reused by every chunk and three [rows, h]
    working tensors. Measured on the H200 (u-l8-qlora-gc): 16 MiB gradient, 250.5 MiB chunk, 20 MiB per-row
    work at N = 2048 and 4096 alike (512 rows). Backward only returns the saved gradient.
    """
    n = setup.batch_size * setup.seq_len
    rows = unsloth_chunk_rows(n, spec.vocab_size, spec.hidden_size)
    chunk = rows * spec.vocab_size * UNSLOTH_LOGIT_BYTES
    work = rows * spec.hidden_size * UNSLOTH_ROW_BYTES_PER_HIDDEN
    grad_inputs = n * spec.hidden_size * e_h
    return HeadBytes(forward=grad_inputs + chunk + work, backward=grad_inputs, chain=grad_inputs + chunk + work,
                     largest=chunk, saved=(grad_inputs,), forward_tmp=(chunk, work))  # fmt: skip
