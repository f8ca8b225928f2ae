"""How training_sequence builds its sequence faster without changing it: a decoder layer like the one before it gets
its ops repeated (Sequence.repeat) instead of built again, and the checkpointed hf QLoRA gradient order is chosen
without building the other order when a bound rules it out."""

import random

import pytest

from gpu_catalog import find_gpu
from vramplan.errors import VramplanError
from vramplan.estimator import CALIBRATED_DEFAULTS, _terms
from vramplan.memory.allocator import sequence, tensors
from vramplan.memory.allocator.ops import EMPTY_CACHE, Sequence, live_bytes, live_peaks
from vramplan.memory.allocator.simulated import check_reserved_rule
from vramplan.models import resolve_model
from vramplan.runs import load_runs, shipped_runs_dir, single_gpu_run
from vramplan.specs import LoraSpec, TrainingSetup

H100 = find_gpu("h100-sxm")
# every shipped run's setup the simulated rule takes, and models whose layers differ (MoE with dense first layers,
# tied, softcapping, biases, q/k norms) under each method and stack
SHIPPED = sorted({(r.model_source or r.model, r.setup) for r in load_runs([shipped_runs_dir()]) if single_gpu_run(r)},
                 key=str)  # fmt: skip
GRID = [
    (name, TrainingSetup(**kw))
    for name in ("deepseek-v3", "qwen3-30b-a3b", "gpt-oss-20b", "olmoe-1b-7b-0924", "gemma-2-2b-it", "qwen2.5-0.5b",
                 "phi-3-mini-4k-instruct", "llama-3.2-1b-instruct")
    for kw in (
        {"method": "full", "grad_ckpt": True, "seq_len": 256},
        {"method": "full", "seq_len": 128, "grad_accum": 2, "optimizer": "adamw_torch", "dtype": "fp32"},
        {"method": "lora", "lora": LoraSpec(rank=8, dropout=0.05), "seq_len": 256},
        {"method": "lora", "lora": LoraSpec(rank=8), "grad_ckpt": True, "stack": "trl", "liger": True},
        {"method": "qlora", "lora": LoraSpec(rank=16), "quant": "nf4", "grad_ckpt": True, "grad_accum": 2},
        {"method": "qlora", "lora": LoraSpec(rank=16, dropout=0.1), "quant": "int8", "seq_len": 256},
    )
]


def _simulated(name, setup) -> bool:
    try:
        check_reserved_rule("simulated", setup)
        return True
    except VramplanError:
        return False


@pytest.mark.parametrize("name, setup", [c for c in SHIPPED + GRID if _simulated(*c)], ids=str)
def test_repeated_layers_give_the_sequence_built_layer_by_layer(name, setup):
    model = resolve_model(name)
    t = _terms(model, setup, H100, dict(CALIBRATED_DEFAULTS))
    for layer_grads in (True, False):
        compact, b = sequence._training_sequence(model, setup, t, 2, layer_grads)
        expanded, _ = sequence._training_sequence(model, setup, t, 2, layer_grads, repeat_layers=False)
        assert compact == expanded
        if not b.layer_grads:
            break


def test_a_stretch_is_repeated_with_fresh_ids_and_its_inputs_freed():
    seq = Sequence()
    kept = seq.alloc(100)
    since = seq.since()
    a, b = seq.alloc(10), seq.alloc(0)
    seq.free(kept, b)
    out = ([a],)
    template = seq.template(since, [kept], out)
    other = seq.alloc(100)
    assert seq.repeat(template, [other]) == ([4],)
    assert seq.sizes == [100, 10, 0, 100, 10, 0] and seq.ops == [0, 1, ~0, 3, 4, ~3]


def test_a_stretch_that_frees_what_it_was_not_given_or_empties_the_cache_is_not_repeated():
    seq = Sequence()
    made_before = seq.alloc(100)
    since = seq.since()
    seq.free(made_before)
    assert seq.template(since, [], ()) is None
    since = seq.since()
    seq.empty_cache()
    assert seq.ops[-1] == EMPTY_CACHE and seq.template(since, [], ()) is None


def test_a_stretch_is_not_repeated_with_inputs_of_other_sizes():
    seq = Sequence()
    kept = seq.alloc(100)
    since = seq.since()
    seq.free(kept)
    template = seq.template(since, [kept], ())
    assert seq.repeat(template, [seq.alloc(0)]) is None  # freeing an empty tensor is no op: other ops
    assert seq.repeat(template, [seq.alloc(7)]) is None
    assert seq.repeat(template, [seq.alloc(100)]) == ()

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


@pytest.mark.parametrize("name, setup", [c for c in SHIPPED[::6] + GRID[::5] if _simulated(*c)], ids=str)
def test_live_peaks_counts_repeated_layers_by_their_excursion_as_op_by_op(name, setup):
    model = resolve_model(name)
    seq, b = sequence._training_sequence(model, setup, _terms(model, setup, H100, dict(CALIBRATED_DEFAULTS)), 2, True)
    assert seq.repeats
    live, n = live_bytes(seq), len(seq.ops)
    rng = random.Random(n)
    for ranges in [b.grad_stretches, [(0, n)], [(0, 0), (n, n)]] + [
        list(zip(*[iter(sorted(rng.sample(range(n + 1), 6)))] * 2)) for _ in range(5)
    ]:
        within = [max(live[a - 1] if a else 0, max(live[a:e], default=0)) for a, e in ranges]
        assert live_peaks(seq, ranges) == (max(0, *live), within)


def test_spread_puts_the_kth_tensor_in_layer_k_times_layers_over_count():
    for layers in (1, 2, 3, 7, 32, 61):
        for count in (0, 1, layers - 1, layers, layers + 1, 2 * layers, 5 * layers + 3, 128 * layers):
            expected = [0] * layers
            for k in range(count):
                expected[k * layers // count] += 1
            assert tensors.spread(count, layers) == expected
    assert tensors.spread(3, 4) == [1, 1, 1, 0] and tensors.spread(6, 4) == [2, 1, 2, 1]


def test_replace_all_is_each_copy_made_then_its_original_freed():
    fast, slow = Sequence(), Sequence()
    for seq in (fast, slow):
        seq.alloc_all([8, 0, 6])
    assert list(fast.replace_all([16, 4, 0], [0, 1, 2])) == [3, 4, 5]
    for x, old in zip([16, 4, 0], [0, 1, 2]):
        slow.alloc(x)
        slow.free(old)
    assert fast == slow and fast.ops == [0, 2, 3, ~0, 4, ~2]
