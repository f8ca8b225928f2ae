"""Steps of the predicted sequence that run a recorded layer pattern: a list of tokens, each allocating a tensor of a
kind or freeing one made a few ops earlier, as torch ran that layer op by op. A checkpointed full fine-tuning
Llama-family (or Qwen3) layer's first forward (no_grad_layer.py), its backward and the final norm's
(ckpt_backward_layer.py); Unsloth's compiled Gemma 3 LoRA / QLoRA layer's backward (unsloth_gemma3_layer.py).

A mixin of sequence._Builder (it uses the builder's m, s, t, seq, L, final, rotary, final_ids, head_groups,
layer_groups, grads, no_grad_sizes, ckpt_bwd and unsloth_g3); kept apart so that sequence.py stays the training step's
builder.
"""

from __future__ import annotations

from .ckpt_backward_layer import (
    FINAL_NORM_FORWARD,
    FINAL_NORM_SAVED,
    FROZEN_FINAL_NORM_BACKWARD,
    FROZEN_FINAL_NORM_FORWARD,
    FROZEN_FINAL_NORM_SAVED,
    LLAMA_FINAL_NORM_BACKWARD,
    ckpt_backward_sizes,
    embedding_partial_sums_bytes,
    grad_token_sizes,
)
from .tensors import grad_tensor
from .unsloth_gemma3_layer import grad_token_sizes as unsloth_grad_token_sizes


#: a compiled token: allocate a kind, free the tensor made n tokens earlier, free the inputs, free a named tensor
_KIND, _BACK, _INPUTS, _NAMED = range(4)
#: tokens (as a tuple) -> their compiled form (_compile); patterns are per model and setup, a few per process
_COMPILED: dict[tuple[str, ...], list[tuple[int, object]]] = {}


def _compile(tokens) -> list[tuple[int, object]]:
    """`tokens` as (what, argument) pairs, parsed once per pattern: run_pattern's per-token string tests and int()
    were about half of its time, and under DeepSpeed (no layer templates: its gradient hooks keep state) it runs on
    every layer (Llama-3.1-8B ZeRO-3: 132 patterns, 21,000 tokens, 9.4 ms of a 31.6 ms cold estimate)."""
    key = tuple(tokens)
    out = _COMPILED.get(key)
    if out is None:
        out = []
        for tok in key:
            c = tok[0]
            if c == "-":
                out.append((_BACK, int(tok[1:])))
            elif c == "x":
                out.append((_INPUTS, None))
            elif c == "~":
                out.append((_NAMED, tok[1:]))
            else:
                out.append((_KIND, tok))
        if len(_COMPILED) >= 256:
            _COMPILED.clear()
        _COMPILED[key] = out
    return out


def run_pattern(
    seq, tokens: list[str], sizes: dict[str, int], inputs: list[int] = (), named: dict[str, int] | None = None,
    grads: dict[str, list[int]] | None = None, keep_grads: bool = True, hook=None,
) -> tuple[list[int], list[int]]:
    """Append a pattern's ops to `seq`: a kind allocates sizes[kind], -n frees the tensor allocated n ops earlier,
    x frees `inputs`, ~name frees named[name]; a gradient token allocates the next of grads[token], kept (or, when
    `keep_grads` is False, added into the existing gradient: freed at once; or handed to `hook`, a DeepSpeed engine's
    gradient hook, zero_steps.py). The tensor of each token (-1 for a free) and the gradients kept.

    Sequence.alloc / free inlined on seq's lists (the same ops; a hook's own allocations go through them)."""
    made: list[int] = []
    kept: list[int] = []
    known, ops = seq.sizes, seq.ops
    grads = grads or {}
    for what, arg in _compile(tokens):
        if what == _KIND:
            if arg in grads:
                made.append(seq.alloc(grads[arg].pop()))
                if hook is not None:
                    hook(made[-1])
                elif keep_grads:
                    kept.append(made[-1])
                else:
                    seq.free(made[-1])
            else:
                i = len(known)
                nbytes = sizes[arg]
                known.append(nbytes)
                if nbytes > 0:
                    ops.append(i)
                made.append(i)
            continue
        if what == _BACK:
            i = made[len(made) - arg]
            if known[i] > 0:
                ops.append(~i)
        elif what == _INPUTS:
            seq.free(*inputs)
        else:
            seq.free(named[arg])
        made.append(-1)
    return made, kept


class LayerPatterns:
    def _no_grad_layer(self, k: int) -> list[int]:
        """Layer k's first forward under checkpointing as its no-grad pattern (no_grad_layer.py): its output, the next
        layer's input; after the last layer the final norm's tensors, made from it (the output freed once they are)."""
        seq = self.seq
        tokens, output = self.no_grad
        out = run_pattern(seq, tokens, self.no_grad_sizes)[0][output]
        if k < self.L - 1:
            return [out]
        self.fsdp_tail_gather()  # an untied model's FSDP tail, before the final norm (fsdp_steps.py)
        if self.fsdp_lora:  # resharded first, then the frozen norm (fsdp_steps.py)
            self.fsdp_reshard_last()
            made, _ = run_pattern(seq, FROZEN_FINAL_NORM_FORWARD, ckpt_backward_sizes(self.m, self.s))
            final = [made[j] for j in FROZEN_FINAL_NORM_SAVED]
        elif self.ckpt_bwd:  # the final norm's forward with autograd (FINAL_NORM_FORWARD): what it saves, in order,
            # then the rest of the estimator's final tensors (TRL with b > 1: its attention mask)
            made, _ = run_pattern(seq, FINAL_NORM_FORWARD, self.ckpt_bwd_sizes)
            final = [made[j] for j in FINAL_NORM_SAVED]
            kept = sum(seq.sizes[i] for i in final) - (seq.sizes[final[3]] if self.profile.owns_lm_head(self.m) else 0)
            final += [seq.alloc(self.t.final - kept)] if self.t.final > kept else []
        else:
            final = [seq.alloc(x) for x in self.final]
        seq.free(out)
        return final

    def _ckpt_final_norm_backward(self, logits_grad: list[int], new_grads: bool) -> int:
        """lm_head's gradient of the hidden state, then the final norm's backward (LLAMA_FINAL_NORM_BACKWARD): the
        gradient carried through the layers (the pattern's last X)."""
        seq = self.seq
        grad = seq.alloc(self.ckpt_bwd_sizes["X"])
        self._autograd_workspace()
        h, r, normed, out, *rest = self.final_ids
        seq.free(*logits_grad, *([] if self.profile.owns_lm_head(self.m) else [out]), *rest)  # lm_head's saved input
        norms = [g for g in self.head_groups if g.name == "norms"]
        named = {"g": grad, "n": normed, "r": r, "h": h}
        made, grads = run_pattern(seq, LLAMA_FINAL_NORM_BACKWARD, self.ckpt_bwd_sizes, named=named,
                                  grads=grad_token_sizes(norms), keep_grads=new_grads, hook=self.grad_hook)  # fmt: skip
        self.grads += grads
        return made[-2]

    def _frozen_final_norm_backward(self, logits_grad: list[int]) -> int:
        """LoRA under FSDP: lm_head's gradient of the hidden state, the logits' gradient freed, an untied lm_head's unit
        resharded, then the frozen final norm's backward (FROZEN_FINAL_NORM_BACKWARD; fc-l1-, fc-l8-fsdp-lora-gc-x2):
        the gradient carried through the layers (the pattern's last X)."""
        seq, sizes = self.seq, ckpt_backward_sizes(self.m, self.s)
        grad = seq.alloc(sizes["X"])
        self._autograd_workspace()
        h, r = self.final_ids
        seq.free(*logits_grad)
        self.fsdp_tail_reduce()
        made, _ = run_pattern(seq, FROZEN_FINAL_NORM_BACKWARD, sizes, named={"g": grad, "r": r, "h": h})
        return made[-2]

    def _ckpt_backward_layer(self, k: int, inputs: list[int], new_grads: bool) -> tuple[list[int]]:
        """Layer k's recompute and backward as its pattern; `inputs`: its checkpointed input (at layer 0 after the
        rotary cos and sin). The gradients it keeps."""
        _, grads = run_pattern(self.seq, self.ckpt_bwd[k], self.ckpt_bwd_sizes, inputs=inputs,
                               grads=grad_token_sizes(self.layer_groups[k]), keep_grads=new_grads,
                               hook=self.grad_hook)  # fmt: skip
        return (grads,)

    def _unsloth_gemma3_backward_layer(self, k: int, carry: int, kept: list[int], cache: list[int], new_grads: bool):
        """Layer k's backward as Unsloth's Gemma 3 pattern (unsloth_gemma3_layer.py) from the gradient of its output
        (`carry`, freed at the pattern's x); what its forward kept (the last layer's input) and its weights' autocast
        copies (`cache`) are freed at its end: ([the gradient of its input], the gradients it kept)."""
        made, grads = run_pattern(self.seq, self.unsloth_g3, self.unsloth_g3_sizes, inputs=[carry],
                                  grads=unsloth_grad_token_sizes(self.layer_groups[k]), keep_grads=new_grads,
                                  hook=self.grad_hook)  # fmt: skip
        self.seq.free(*kept, *cache)
        return [made[self.unsloth_g3_out]], grads

    def _ckpt_embedding_backward(self, carry: int, new_grads: bool) -> None:
        """The embedding's backward (embedding_dense_backward): its gradient, then over 3072 tokens an fp32 buffer of
        partial sums, (n + n / 10) x h (EmbeddingBackwardKernel.cu's bound on the partial segments, recorded: 35.2 MiB
        for TinyLlama s 4096), then the carried gradient freed. A tied embedding's gradient is then added to lm_head's
        as a new tensor, the old two freed (a head that owns the lm_head adds it in place)."""
        seq, t, m = self.seq, self.t, self.m
        embed = next(g for g in self.head_groups if g.name == "embed_tokens")
        tied, owned = m.tie_word_embeddings, self.profile.owns_lm_head(m)
        if not new_grads or not tied:  # its own gradient (a later micro-step's is added into the kept one)
            own = seq.alloc(grad_tensor(embed))
        elif owned:  # added in place into the owned head's contiguous gradient
            own = seq.alloc(t.tied_grad)
        else:  # AccumulateGrad: the embedding's own gradient, then grad + it as a new tensor (tied_grad: both)
            own = seq.alloc(t.tied_grad - seq.sizes[self.tied_grad_id])
        seq.free(seq.alloc(embedding_partial_sums_bytes(m, self.s)))
        seq.free(carry)
        if not new_grads or (tied and owned):
            seq.free(own)
        elif tied and self.zero is not None and self.zero.stage == 3:  # added in place (h-q15-zero3-full-gc-x1)
            seq.free(own)
            self.grad_hook(self.tied_grad_id)
        elif tied:
            total = seq.alloc(seq.sizes[self.tied_grad_id])
            seq.free(self.tied_grad_id, own)
            if self.grad_hook is not None:  # the shared weight's hook runs once, on the sum
                self.grad_hook(total)
            else:
                self.grads[self.grads.index(self.tied_grad_id)] = self.tied_grad_id = total
        elif self.grad_hook is not None:
            self.grad_hook(own)
        else:
            self.grads.append(own)
