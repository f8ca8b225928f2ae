"""The optimizer step and zero_grad: the end of each step of the predicted sequence (sequence.py's "optimizer step").

torch optimizers create their states lazily, in the first step() (adam.py::_init_group), in model.parameters()
order for each of the Trainer's param groups; the step's temporaries are freed when it ends, and
zero_grad(set_to_none=True) frees the gradients.

A mixin of sequence._Builder (it uses the builder's s, t, seq, head_groups, layer_groups, grads and param_groups, None
until the first step); kept apart so that sequence.py stays the forward and backward's builder.
"""

from __future__ import annotations

from .tensors import grad_tensor, state_tensors


class OptimizerSteps:
    def optimizer_step(self, first: bool) -> None:
        """torch.optim: for each of the Trainer's two param groups (weight decay, then none), _init_group makes
        the group's states at step 0, then the update runs; foreach AdamW makes one temporary per parameter
        (torch._foreach_sqrt of exp_avg_sq), kept here until the step ends so that the step's total is the
        estimator's; Adafactor one set of fp32 temporaries."""
        s, t, seq = self.s, self.t, self.seq
        temporaries: list[int] = []
        made: dict[int, list[int]] = {}  # id of a TensorGroup (the layers share them) -> its state tensors
        for group in self._param_groups():
            if first:
                states: list[int] = []
                for g in group:
                    x = made.get(id(g))
                    states += made.setdefault(id(g), state_tensors(g, s)) if x is None else x
                seq.alloc_all(states)
            if s.optimizer == "adamw_torch" and t.opt_transient:
                temporaries += seq.alloc_all([grad_tensor(g) for g in group])
        if t.opt_transient and s.optimizer != "adamw_torch":
            temporaries.append(seq.alloc(t.opt_transient))
        seq.free(*temporaries)

    def _param_groups(self) -> tuple[list, list]:
        """The Trainer's two param groups (weight decay, then none), each in model.parameters() order: embed_tokens,
        the layers, the final norm, lm_head (the same at every step: made once)."""
        if self.param_groups is None:
            head = {g.name: g for g in self.head_groups}
            first = [head["embed_tokens"]] if "embed_tokens" in head else []
            last = [head[n] for n in ("norms", "lm_head") if n in head]
            groups = first + [g for gs in self.layer_groups for g in gs] + last
            undecayed = {id(g): no_decay(g) for g in groups}  # the layers share their TensorGroups
            self.param_groups = ([g for g in groups if not undecayed[id(g)]], [g for g in groups if undecayed[id(g)]])
        return self.param_groups

    def zero_grad(self) -> None:
        self.seq.free(*self.grads)
        self.grads = []


def no_decay(g) -> bool:
    """Trainer.get_decay_parameter_names: biases and norm weights get no weight decay (a second group)."""
    return g.name == "norms" or g.name.endswith(".bias")
