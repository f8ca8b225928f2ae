"""How training_sequence builds its sequence faster without changing it: the checkpointed hf QLoRA gradient order
is chosen without building the other order when a bound rules it out."""

import pytest

from gpu_catalog import find_gpu
from vramplan.estimator import CALIBRATED_DEFAULTS, _terms
from vramplan.memory.allocator import sequence
from vramplan.memory.allocator.ops import live_bytes
from vramplan.models import resolve_model
from vramplan.specs import LoraSpec, TrainingSetup

H100 = find_gpu("h100-sxm")

# checkpointed hf QLoRA (the setups with per-layer adapter gradients), short and long sequences, both quantizations
QLORA = [
    (name, TrainingSetup(method="qlora", quant="nf4", double_quant=dq, grad_ckpt=True, lora=LoraSpec(rank=r, dropout=d),
                         seq_len=s, batch_size=b, grad_accum=ga))
    for name in ("llama-3.1-8b", "qwen2.5-0.5b")
    for dq, r, d, s, b, ga in [(True, 16, 0.0, 2048, 1, 1), (False, 64, 0.05, 512, 4, 1), (True, 8, 0.05, 64, 1, 2),
                               (True, 128, 0.0, 32, 1, 1), (False, 16, 0.0, 4096, 2, 1)]
]


def _both_orders(name, setup):
    model = resolve_model(name)
    t = _terms(model, setup, H100, dict(CALIBRATED_DEFAULTS))
    per_layer, b = sequence._training_sequence(model, setup, t, 2, layer_grads=True)
    whole, _ = sequence._training_sequence(model, setup, t, 2, layer_grads=False)
    assert b.layer_grads
    return model, t, per_layer, whole, b


@pytest.mark.parametrize("name, setup", QLORA, ids=[f"{n}-{i}" for i, (n, _) in enumerate(QLORA)])
def test_the_all_at_once_order_holds_at_most_the_gradients_more_in_the_layers_backward(name, setup):
    _, _, per_layer, whole, b = _both_orders(name, setup)
    per, every = live_bytes(per_layer), live_bytes(whole)
    assert len(per) == len(every)
    grads = b.layer_grad_bytes()
    inside = set()
    for start, end in b.grad_stretches:
        assert max(every[start:end]) <= max(per[start:end]) + grads
        inside.update(range(start, end))
    # a later micro-batch's backward dequantizes a layer's weights one at a time in another order: the same peak
    starts = sorted(per_layer.marks.values()) + [len(per)]
    for mark, start in per_layer.marks.items():
        if ".micro" in mark and mark.endswith(".backward"):
            end = min(x for x in starts if x > start)
            assert max(every[start:end]) == max(per[start:end])
            inside.update(range(start, end))
    # elsewhere the same bytes at every allocation (zero_grad frees the gradients in another order)
    assert all(per[i] == every[i] for i, op in enumerate(per_layer.ops) if op >= 0 and i not in inside)


@pytest.mark.parametrize("name, setup", QLORA, ids=[f"{n}-{i}" for i, (n, _) in enumerate(QLORA)])
def test_training_sequence_picks_the_order_that_building_both_would(name, setup):
    model, t, per_layer, whole, _ = _both_orders(name, setup)
    expected = whole if whole.live_peak() > per_layer.live_peak() else per_layer
    assert sequence.training_sequence(model, setup, t) == expected
