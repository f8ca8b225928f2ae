"""The steps of a checkpointed hf QLoRA layer that follow its recorded histories (r-l8-qlora-*, 2026-12-02): the MLP's
no-grad forward freeing each fp32 tensor when LlamaMLP / peft Linear4bit drop it, its adapters' autocast copies made
where each is first used, and the layer's adapter gradients made as autograd reaches each target.

A mixin of sequence._Builder (it uses the builder's seq, ckpt_mlp, mlp_copies, adapter_copies, layers, layer_groups
and _dequantize); kept apart so that sequence.py stays one builder of the common steps.
"""

from __future__ import annotations

from .tensors import grad_tensor


class CheckpointedQloraSteps:
    def _checkpointed_mlp(self, weights: dict[str, int], k: int, copies: list[int]) -> None:
        """LlamaMLP.forward in a checkpointed QLoRA layer's forward, each tensor freed when no longer referenced
        (lora_chain.CheckpointedMlp: the recorded order); `weights`: each projection's dequantized bf16 bytes; the
        adapter copies it makes are added to `copies`."""
        seq = self.seq
        gate = self._checkpointed_linear4bit("gate_proj", weights["gate_proj"], k, copies)
        act = seq.alloc(self.ckpt_mlp.i_fp32)  # act_fn(gate_proj(x))
        seq.free(gate)
        up = self._checkpointed_linear4bit("up_proj", weights["up_proj"], k, copies)
        product = seq.alloc(self.ckpt_mlp.i_fp32)
        seq.free(act, up)
        seq.free(self._checkpointed_linear4bit("down_proj", weights["down_proj"], k, copies), product)

    def _checkpointed_linear4bit(self, leaf: str, weight: int, k: int, copies: list[int]) -> int:
        """peft lora.Linear4bit.forward of an fp32 input under autocast, nothing saved: the result's id; layer k's
        autocast copies of this target's lora_A / lora_B weights are made at their first use (cached_cast), kept until
        autocast exits after the loss (added to `copies`)."""
        seq, c = self.seq, self.ckpt_mlp
        x, y, mask, lora = c.linear(leaf)
        cast = seq.alloc(x // 2)  # bitsandbytes Linear4bit: x.to(compute_dtype)
        w = self._dequantize(weight)
        out = seq.alloc(y // 2)  # matmul_4bit's bf16 output
        seq.free(w)
        result = seq.alloc(y)  # .to(inp_dtype)
        seq.free(out, cast)
        clone = seq.alloc(y)  # PEFT: result = result.clone()
        seq.free(result)
        if not lora:
            return clone
        m = seq.alloc(mask)
        dropped = seq.alloc(x) if c.dropout else None  # the dropout's fp32 output (no dropout: x itself)
        seq.free(m)
        at = self.mlp_copies.get(leaf)
        sizes = self.adapter_copies[k][at : at + 2] if at is not None else []
        if sizes:  # F.linear under autocast: lora_A's weight cast, then its input's
            copies.append(seq.alloc(sizes[0]))
        copy = seq.alloc(x // 2)  # autocast's bf16 copy for lora_A
        a = seq.alloc(c.lora_a)
        seq.free(copy, *([dropped] if dropped is not None else []))
        if sizes:
            copies.append(seq.alloc(sizes[1]))
        b = seq.alloc(y // 2)  # lora_B's output
        seq.free(a)
        scaled = seq.alloc(y // 2)
        seq.free(b)
        total = seq.alloc(y)  # result + ...: fp32
        seq.free(clone, scaled)
        return total

    def _layer_grads_and_dequant(self, k: int, new_grads: bool) -> list[int]:
        """Layer k's Linear modules in the order autograd reaches them (down_proj first, q_proj last): a LoRA
        target's lora_B then lora_A gradient (peft Linear4bit.forward adds lora_B(lora_A(x)) after the base layer's
        output, so their backward nodes run first; AccumulateGrad keeps each as .grad), then the 4-bit base weight
        dequantized for the input's gradient (bitsandbytes MatMul4Bit.backward). Recorded in r-l8-qlora-r64-gc
        (docs/allocator_traces): per target 1 / 3.5 MiB gradients, then the absmax and the bf16 weight. Returns the
        gradients' ids."""
        seq, grads, made = self.seq, {}, []
        for g in self.layer_groups[k] if new_grads else []:
            grads.setdefault(g.name.split(".", 1)[-1], []).append(g)
        for name, pieces, bf16 in reversed(self.layers[k]):
            made += [seq.alloc(grad_tensor(g)) for g in reversed(grads.pop(name, []))]
            if len(pieces) > 1:
                seq.free(self._dequantize(bf16))
        return made + [seq.alloc(grad_tensor(g)) for gs in grads.values() for g in reversed(gs)]
