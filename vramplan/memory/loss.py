"""Logits and loss buffers of the HF causal-LM loss (often the largest single term).

transformers loss/loss_utils.py::ForCausalLMLoss upcasts logits (`logits.float()`) and calls
F.cross_entropy = log_softmax (fp32 output saved) + nll_loss; N = b*s rows (v5 pads labels
instead of slicing logits), V = vocabulary:
* inside the forward loss: bf16 logits 2 + fp32 copy 4 + log_softmax 4 = 10 N V bytes;
  accelerate's convert_outputs_to_fp32 then replaces the bf16 logits by an fp32 copy (also 10 N V);
* start of backward: saved log_softmax 4 + dense nll grad 4 + log_softmax backward output 4 = 12 N V
  (Trainer.compute_loss drops `outputs` before backward).
Gemma-2's final logit softcapping (tanh) keeps 2 N V more and needs 2 N V transient.
"""

from ..specs import ModelSpec, TrainingSetup

LOSS_FORWARD_BYTES_PER_LOGIT = 10
LOSS_BACKWARD_BYTES_PER_LOGIT = 12
SOFTCAP_SAVED_BYTES_PER_LOGIT = 2
SOFTCAP_TRANSIENT_BYTES_PER_LOGIT = 2


def logits_count(spec: ModelSpec, setup: TrainingSetup) -> int:
    return setup.batch_size * setup.seq_len * spec.vocab_size


def loss_forward_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """Peak logits/loss bytes during the forward pass (on top of saved layer activations)."""
    per = LOSS_FORWARD_BYTES_PER_LOGIT
    if spec.final_logit_softcapping:
        per += SOFTCAP_SAVED_BYTES_PER_LOGIT + SOFTCAP_TRANSIENT_BYTES_PER_LOGIT
    return per * logits_count(spec, setup)


def loss_backward_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """Logits/loss bytes at the start of backward (the usual global peak for long sequences)."""
    per = LOSS_BACKWARD_BYTES_PER_LOGIT
    if spec.final_logit_softcapping:
        per += SOFTCAP_SAVED_BYTES_PER_LOGIT
    return per * logits_count(spec, setup)
