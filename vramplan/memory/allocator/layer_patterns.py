"""Steps of the predicted sequence that run a recorded layer pattern (no_grad_layer.py): a list of tokens, each
allocating a tensor of a kind or freeing one made a few ops earlier, as torch ran that layer op by op.

A mixin of sequence._Builder (it uses the builder's seq, L, final and no_grad_sizes); kept apart so that sequence.py
stays the training step's builder.
"""

from __future__ import annotations

from .no_grad_layer import LLAMA_NO_GRAD_LAYER, NO_GRAD_OUTPUT


def run_pattern(seq, tokens: list[str], sizes: dict[str, int]) -> list[int]:
    """Append a pattern's ops to `seq`: a kind allocates sizes[kind], -n frees the tensor allocated n ops earlier.
    The tensor of each token (-1 for a free)."""
    made: list[int] = []
    for tok in tokens:
        if tok[0] == "-":
            seq.free(made[len(made) - int(tok[1:])])
            made.append(-1)
        else:
            made.append(seq.alloc(sizes[tok]))
    return made


class LayerPatterns:
    def _no_grad_layer(self, k: int) -> list[int]:
        """Layer k's first forward under checkpointing as LLAMA_NO_GRAD_LAYER: its output, the next layer's input; after
        the last layer the final norm's tensors, made from it (the output freed once they are)."""
        seq = self.seq
        out = run_pattern(seq, LLAMA_NO_GRAD_LAYER, self.no_grad_sizes)[NO_GRAD_OUTPUT]
        if k < self.L - 1:
            return [out]
        final = [seq.alloc(x) for x in self.final]
        seq.free(out)
        return final
