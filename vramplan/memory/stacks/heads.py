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

# --- Unsloth (unsloth_zoo/fused_losses/cross_entropy_loss.py) ---
#: bytes per (token x vocab) element its chunk budget assumes (_CE_BYTES_PER_LOGIT)
UNSLOTH_CE_BYTES_PER_LOGIT = 16
#: what one chunk really holds at once, per the same source comment: bf16 logits 2 + fp32 upcast 4 + saved
#: log_softmax 4 + its gradient 4 = 14, and 16 under softcapping (the tanh output)
UNSLOTH_CE_CHAIN_BYTES_PER_LOGIT = 14
UNSLOTH_CE_CHAIN_BYTES_PER_LOGIT_SOFTCAP = 16
#: the chunk budget is half the free GPU memory, capped at 4 GiB (_CE_TARGET_GB_CAP); the cap is the bound
UNSLOTH_CE_TARGET_BYTES = 4 * 1024**3
#: the number of chunks is a multiple of 4 (get_chunk_size)
UNSLOTH_CE_CHUNK_MULTIPLE = 4


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


def unsloth_chunk_rows(n_tokens: int, vocab: int) -> int:
    """Rows per chunk of Unsloth's chunked cross-entropy (unsloth_zoo fused_losses get_chunk_size): enough
    chunks, a multiple of 4, that one chunk's 16 bytes per logit stay within the 4 GiB budget cap."""
    exact = UNSLOTH_CE_BYTES_PER_LOGIT * n_tokens * vocab / UNSLOTH_CE_TARGET_BYTES
    if exact <= 1.0:
        return n_tokens
    chunks = min(math.ceil(exact / UNSLOTH_CE_CHUNK_MULTIPLE) * UNSLOTH_CE_CHUNK_MULTIPLE, n_tokens)
    return -(-n_tokens // chunks)


def unsloth_chunked_head(spec: ModelSpec, setup: TrainingSetup, *, e_h: int) -> HeadBytes:
    """Unsloth's chunked fused cross-entropy (unsloth_zoo/fused_losses/cross_entropy_loss.py).

    The loss is computed chunk by chunk with its gradient during the forward (``accumulate_chunk``): one
    chunk's bf16 logits, fp32 upcast, log_softmax and gradient (14 bytes per logit, 16 with softcapping) plus
    the gradient of the hidden states [N, h]. The chunk budget is half the free memory capped at 4 GiB; this
    uses the cap, an upper bound (on a nearly full card the chunks are smaller). When a whole micro-batch fits
    the budget it is one chunk, which holds more at once than the hf loss's 12 N V (its forward and backward
    of the loss happen together).
    """
    n = setup.batch_size * setup.seq_len
    per_logit = UNSLOTH_CE_CHAIN_BYTES_PER_LOGIT_SOFTCAP if spec.final_logit_softcapping else UNSLOTH_CE_CHAIN_BYTES_PER_LOGIT
    chunk = unsloth_chunk_rows(n, spec.vocab_size) * spec.vocab_size * per_logit
    grad_inputs = n * spec.hidden_size * e_h
    return HeadBytes(forward=grad_inputs + chunk, backward=grad_inputs, chain=grad_inputs + chunk, largest=chunk)
