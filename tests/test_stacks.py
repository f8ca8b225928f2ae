"""Stack profiles: each stack's LM-head/loss term by hand, and what the profiles change in an estimate."""

import pytest

from vramplan.errors import VramplanError
from vramplan.estimator import estimate
from vramplan.memory.stacks import stack_profile
from vramplan.memory.stacks.heads import (
    liger_chunk_rows,
    liger_flce_head,
    trl_fused_head,
    unsloth_chunk_rows,
    unsloth_chunked_head,
)
from vramplan.models import resolve_model
from vramplan.specs import LoraSpec, TrainingSetup

LLAMA = resolve_model("llama-3.1-8b")  # h 4096, V 128256
LORA = TrainingSetup(method="lora", lora=LoraSpec(), seq_len=2048, grad_ckpt=True)
GIB = 2**30


def setup(**kw) -> TrainingSetup:
    return LORA.model_copy(update=kw)


def qlora(**kw) -> TrainingSetup:
    return TrainingSetup(method="qlora", quant="nf4", lora=LoraSpec(), seq_len=2048, grad_ckpt=True, **kw)


# --------------------------------------------------------------------------- golden numbers per head


def test_trl_fused_head_by_hand_for_llama_8b_lora_at_2048():
    # M = 2047 scored positions; hidden copy 2047*4096*2 = 16,769,024; nine fp32 [M] vectors 73,692; is_top1 2,047;
    # one bf16 [2047, 32768] tile 134,152,192 -> forward 150,996,955
    # backward: saved copy + log_z/entropy (16,769,024 + 16,376) + fp32 grad_hidden 33,538,048 + its bf16 cast
    # 16,769,024 + the tile 134,152,192 = 201,244,664
    head = trl_fused_head(LLAMA, LORA, e_h=2, e_w=2, lm_head_trainable=False)
    assert (head.forward, head.backward) == (150_996_955, 201_244_664)


def test_trl_fused_head_of_full_fine_tuning_adds_the_fp32_lm_head_gradient_and_its_cast():
    lora = trl_fused_head(LLAMA, LORA, e_h=2, e_w=2, lm_head_trainable=False)
    full = trl_fused_head(LLAMA, LORA, e_h=2, e_w=2, lm_head_trainable=True)
    assert full.backward - lora.backward == 128256 * 4096 * (4 + 2)


def test_trl_fused_head_casts_each_tile_input_and_lm_head_slice_when_they_are_fp32():
    bf16 = trl_fused_head(LLAMA, LORA, e_h=2, e_w=2, lm_head_trainable=False)
    fp32 = trl_fused_head(LLAMA, LORA, e_h=4, e_w=4, lm_head_trainable=False)
    copies = 2047 * 4096 * 2  # the gathered hidden copy is fp32 now: twice as large
    casts = 2047 * 4096 * 2 + 32768 * 4096 * 2  # [rows, h] and [32768, h] bf16 casts
    assert fp32.forward - bf16.forward == copies + casts


def test_liger_chunk_rows_follow_its_source_formula():
    # chunk = next_pow2(ceil(BT / ceil(V / H))): 2048 / ceil(128256/4096 = 31.3 -> 32) = 64
    assert liger_chunk_rows(2048, 128256, 4096) == 64
    # h 2048: ceil(62.6) = 63 -> ceil(2048/63) = 33 -> 64
    assert liger_chunk_rows(2048, 128256, 2048) == 64
    # small vocabularies: a single chunk never exceeds BT
    assert liger_chunk_rows(100, 1000, 4096) == 100


def test_liger_flce_by_hand_for_llama_8b_lora_at_2048():
    # grad_input 2048*4096*2 = 16,777,216; fp32 loss + bool mask 2048*5 = 10,240; one [64, 128256] bf16 chunk
    # 16,416,768 -> forward 33,204,224; backward keeps only grad_input
    head = liger_flce_head(LLAMA, LORA, e_h=2, e_w=2, lm_head_trainable=False)
    assert (head.forward, head.backward) == (33_204_224, 16_777_216)


def test_unsloth_chunk_rows_follow_fused_linear_rows():
    # Llama (V 128256, h 4096): N h / V = 65.4 -> 64 rows, raised to the rows holding 512 x 151936 logits
    # (606 -> power of two below: 512); the same 512 rows at 8192 tokens (261 -> 256 -> 512)
    assert unsloth_chunk_rows(2048, 128256, 4096) == 512
    assert unsloth_chunk_rows(8192, 128256, 4096) == 512
    # Mistral (V 32768): the minimum is 2374 -> 2048 rows, within 4096 and the 2 GiB fp32 budget (16384 rows)
    assert unsloth_chunk_rows(2048, 32768, 4096) == 2048
    assert unsloth_chunk_rows(300, 32768, 4096) == 300  # never more rows than tokens
    # Gemma 3 (V 262144): minimum 296 -> 256, raised to 512; the budget allows 2048
    assert unsloth_chunk_rows(2048, 262144, 2560) == 512


def test_unsloth_head_by_hand_for_llama_8b_lora_at_2048():
    # bf16 hidden-state gradient 2048*4096*2 = 16,777,216; one fp32 [512, 128256] chunk 262,668,288; the
    # per-row work 512*4096*10 = 20,971,520 -> 300,417,024 in the forward; backward returns the gradient
    head = unsloth_chunked_head(LLAMA, LORA, e_h=2)
    assert (head.forward, head.backward) == (300_417_024, 16_777_216)


def test_unsloth_loss_stays_small_where_the_hf_loss_grows():
    long = setup(seq_len=16384)
    un = estimate(LLAMA, long.model_copy(update={"stack": "unsloth", "lora": LoraSpec(dropout=0.0)})).memory
    hf = estimate(LLAMA, long).memory
    assert un.peak_allocated_bytes < hf.peak_allocated_bytes
    # 16384*4096*2 gradient + the 512-row chunk and its work: under half a GiB at 16k tokens
    assert un.breakdown.get("logits_loss", 0) < 0.5 * GIB < hf.breakdown["logits_loss"]


# --------------------------------------------------------------------------- what the profiles change


def peak(model, s) -> int:
    return estimate(model, s).memory.peak_allocated_bytes


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen2.5-7b", "gemma-3-4b-it", "mistral-7b-v0.3", "qwen3-8b"])
@pytest.mark.parametrize("s", [setup(grad_ckpt=False, seq_len=4096), setup(), qlora()])
def test_fused_heads_never_predict_more_than_the_hf_loss(name, s):
    model = resolve_model(name)
    hf = estimate(model, s).memory
    for stack, liger in (("hf", True), ("trl", False), ("trl", True)):
        fused = estimate(model, s.model_copy(update={"stack": stack, "liger": liger})).memory
        assert fused.peak_allocated_bytes <= hf.peak_allocated_bytes
        assert fused.phases["loss_backward"] < hf.phases["loss_backward"]


def test_trl_qlora_keeps_frozen_weights_bf16_and_adapters_bf16():
    hf, trl = estimate(LLAMA, qlora()).memory, estimate(LLAMA, qlora(stack="trl")).memory
    # prepare_model_for_kbit_training's fp32 embeddings and lm_head are bf16 under SFTTrainer: 2 B x 2 x V x h less
    assert hf.breakdown["weights.embeddings"] - trl.breakdown["weights.embeddings"] == 128256 * 4096 * 2
    # adapters, their gradients and Adam states are bf16: each half of the fp32 ones
    assert trl.breakdown["weights.adapters"] * 2 == hf.breakdown["weights.adapters"]


def test_trl_lora_without_quantization_keeps_fp32_adapters():
    hf, trl = estimate(LLAMA, setup()).memory, estimate(LLAMA, setup(stack="trl")).memory
    assert trl.phases["optimizer"] == hf.phases["optimizer"]  # same weights, adapters, grads and states


def test_liger_on_a_family_it_does_not_patch_is_the_hf_estimate_and_says_so():
    olmoe = resolve_model("olmoe-1b-7b-0924")
    no_dropout = LoraSpec(dropout=0.0)  # PEFT refuses dropout on OLMoE's fused experts
    with_liger = estimate(olmoe, setup(liger=True, lora=no_dropout))
    assert with_liger.memory.peak_allocated_bytes == estimate(olmoe, setup(lora=no_dropout)).memory.peak_allocated_bytes
    assert any("does not patch model_type 'olmoe'" in a for a in with_liger.assumptions)


def test_liger_kernels_save_less_per_layer_than_eager_modules():
    eager = stack_profile(setup(grad_ckpt=False)).activations(LLAMA, setup(grad_ckpt=False))
    liger = stack_profile(setup(grad_ckpt=False, liger=True)).activations(LLAMA, setup(grad_ckpt=False, liger=True))
    # LoRA, bf16: norms 2 x 4 -> 2 x 2 units; SwiGLU drops the bf16 activation output (2 x I/h = 7 units)
    assert eager.layer_units - liger.layer_units == pytest.approx(4.0 + 7.0)


def test_unsloth_offloaded_checkpoints_do_not_grow_with_depth():
    s = setup(stack="unsloth", lora=LoraSpec(dropout=0.0))
    one_input = 2 * 2048 * 4096  # one bf16 layer input
    phases = estimate(LLAMA, s).memory
    hf_ckpts = 32 * one_input
    assert estimate(LLAMA, setup()).memory.breakdown["activations.checkpoints"] == hf_ckpts
    for deeper in (LLAMA, resolve_model("llama-3.1-70b")):
        b = estimate(deeper, s).memory.breakdown
        one = 2 * 2048 * deeper.hidden_size  # the last layer's input, kept on the GPU from the second forward on
        assert b["activations.checkpoints"] == one
        assert b["weights.checkpoint_staging_buffers"] == 2 * one  # GPU_BUFFERS, GPU_BUFFERS_B, one checkpoint each
    assert phases.peak_allocated_bytes > 0


def test_unsloth_full_fine_tuning_trains_bf16_weights_and_states():
    # Unsloth 2026.10.9 on a bf16 GPU: "Using bfloat16 full finetuning" (H200 run u-l1-full-gc: bf16 trainable
    # parameters, optimizer phase 9.29 GiB = bf16 weights + gradients + two bf16 Adam states of 1.24 B params)
    full = TrainingSetup(method="full", grad_ckpt=True)
    unsloth = estimate(LLAMA, full.model_copy(update={"stack": "unsloth"}))
    fp32 = estimate(LLAMA, full.model_copy(update={"dtype": "fp32"}))
    assert unsloth.memory.breakdown["optimizer_states"] == estimate(LLAMA, full).memory.breakdown["optimizer_states"]
    assert unsloth.memory.phases["optimizer"] < 0.6 * fp32.memory.phases["optimizer"]
    assert any("bf16 weights with bf16 Adam states" in a for a in unsloth.assumptions)


def test_unsloth_qlora_keeps_its_global_dequantization_buffer():
    # the largest 4-bit weight (down/gate/up, 14336 x 4096) in bf16 plus its fp32 absmax (one per 64 elements)
    q = estimate(LLAMA, setup(method="qlora", quant="nf4", stack="unsloth", lora=LoraSpec(dropout=0.0))).memory
    assert q.breakdown["weights.unsloth_dequant_buffer"] == 14336 * 4096 * 2 + 14336 * 4096 // 64 * 4
    lora = estimate(LLAMA, setup(stack="unsloth", lora=LoraSpec(dropout=0.0))).memory
    assert "weights.unsloth_dequant_buffer" not in lora.breakdown


def test_unsloth_lora_dropout_runs_in_its_kernels_with_saved_masks_and_no_global_buffer():
    # H200 run u-l8-qlora-gc-drop (dropout 0.05): six 8 MiB and one 28 MiB bool mask per layer (q, k, v, gate, up
    # on [s, h], o on [s, q_width], down on [s, i]), no 112 MiB buffer kept, one [s, i] bf16 replay in backward
    plain = setup(method="qlora", quant="nf4", stack="unsloth", lora=LoraSpec(dropout=0.0))
    drop = setup(method="qlora", quant="nf4", stack="unsloth", lora=LoraSpec(dropout=0.05))
    p, d = (stack_profile(s).activations(LLAMA, s) for s in (plain, drop))
    assert d.saved_units["dropout_masks"] == pytest.approx(3 + 1 + 2 + 14336 / 4096)
    assert "dropout_masks" not in p.saved_units
    assert d.layer_units - p.layer_units == pytest.approx(9.5)
    unit = 2048 * 4096
    mp, md = estimate(LLAMA, plain).memory, estimate(LLAMA, drop).memory
    assert "weights.unsloth_dequant_buffer" not in md.breakdown
    assert md.breakdown["activations.recompute"] - mp.breakdown["activations.recompute"] == int(9.5 * unit)
    assert md.breakdown["backward_transients"] - mp.breakdown["backward_transients"] == pytest.approx(2 * 2048 * 14336, abs=2)
    # measured: +21 MiB over the run without dropout (7,140,417,536 vs 7,118,397,440 bytes)
    modelled = md.peak_allocated_bytes - mp.peak_allocated_bytes
    assert modelled / 2**20 == pytest.approx(21, abs=8)


def test_unsloth_loads_tied_models_from_a_checkpoint_without_the_lm_head_copy():
    # H200 run u-g3-4-lora-gc: load peak 7.37 GiB, the weights; the from_config load of hf/TRL makes a [V, h] copy
    gemma = resolve_model("gemma-3-4b-it")
    hf = estimate(gemma, setup()).memory
    un = estimate(gemma, setup(stack="unsloth", lora=LoraSpec(dropout=0.0))).memory
    made_later = ("weights.adapters", "weights.checkpoint_staging_buffers")  # by the PEFT wrap, the first forward
    weights = sum(v for k, v in un.breakdown.items() if k.startswith("weights.") and k not in made_later)
    assert hf.phases["load"] == weights + 262208 * 2560 * 2  # embedding-sized copy, freed when post_init ties it
    assert "load" not in un.phases
    assert un.peak_phase != "load"


@pytest.mark.parametrize(
    "s, message",
    [
        (setup(stack="unsloth", num_gpus=2, parallel="ddp"), "--stack unsloth runs on one GPU"),
        (qlora(stack="unsloth").model_copy(update={"quant": "int8"}), "--quant int8 accepted: nf4"),
    ],
)
def test_what_a_stack_cannot_run_is_refused_with_the_alternative(s, message):
    with pytest.raises(VramplanError, match=message):
        estimate(LLAMA, s)


def test_liger_with_unsloth_is_refused_at_the_boundary():
    with pytest.raises(ValueError, match="--liger applies to --stack hf"):
        TrainingSetup(method="full", stack="unsloth", liger=True)


def test_trl_says_when_the_sequence_is_above_its_default_max_length():
    notes = estimate(LLAMA, setup(stack="trl", seq_len=4096)).assumptions
    assert any("default max_length is 1024" in a for a in notes)
    assert not any("max_length is 1024" in a for a in estimate(LLAMA, setup(stack="trl", seq_len=1024)).assumptions)


def test_packing_with_flash_attention_costs_what_the_unpacked_batch_costs():
    flash = setup(attn="flash", stack="trl")
    assert peak(LLAMA, flash.model_copy(update={"packing": True})) == peak(LLAMA, flash)


@pytest.mark.parametrize("stack, liger", [("hf", False), ("hf", True), ("trl", False), ("trl", True), ("unsloth", False)])
def test_packing_with_sdpa_costs_its_mask_on_every_stack(stack, liger):
    s = setup(stack=stack, liger=liger, grad_ckpt=False, seq_len=2048, batch_size=2, lora=LoraSpec(dropout=0.0))
    packed = estimate(LLAMA, s.model_copy(update={"packing": True})).memory
    assert packed.peak_allocated_bytes > estimate(LLAMA, s).memory.peak_allocated_bytes
    flash = s.model_copy(update={"attn": "flash"})
    assert peak(LLAMA, flash.model_copy(update={"packing": True})) == peak(LLAMA, flash)


def test_packing_with_sdpa_pays_for_the_block_diagonal_mask_and_repeated_kv():
    # no checkpointing, b=2 x s=1024 packed into T = 2048 tokens: per layer a bf16 bias of T^2 and K/V repeated
    # to 32 heads (+4 x (1 - 0.25) units), once a bool mask of T^2
    base = setup(stack="trl", grad_ckpt=False, seq_len=1024, batch_size=2, attn="flash")
    flash = stack_profile(base).activations(LLAMA, base)
    sdpa_setup = base.model_copy(update={"attn": "sdpa", "packing": True})
    sdpa = stack_profile(sdpa_setup).activations(LLAMA, sdpa_setup)
    tokens = 2 * 1024
    unit = tokens * 4096
    assert (sdpa.layer_units - flash.layer_units) * unit == pytest.approx(2 * tokens**2 + 4 * 0.75 * unit)
    assert (sdpa.final_units - flash.final_units) * unit == pytest.approx(tokens**2)


def test_trl_padded_batches_pay_for_the_padding_mask_with_sdpa_only():
    padded = setup(stack="trl", grad_ckpt=False, seq_len=1024, batch_size=4)
    one = setup(stack="trl", grad_ckpt=False, seq_len=1024, batch_size=1)
    per_row = stack_profile(padded).activations(LLAMA, padded).saved_units["attention_mask_bias"]
    assert per_row == pytest.approx(2 * 1024 / 4096)  # a bf16 [b, 1, s, s] bias per layer: 2 s / h units
    assert "attention_mask_bias" not in stack_profile(one).activations(LLAMA, one).saved_units
    flash = padded.model_copy(update={"attn": "flash"})
    assert "attention_mask_bias" not in stack_profile(flash).activations(LLAMA, flash).saved_units


def test_estimate_names_its_stack_and_versions():
    e = estimate(LLAMA, setup(stack="trl", liger=True))
    assert e.stack == "trl+liger"
    assert e.stack_versions["trl"] == "1.16.0" and e.stack_versions["liger-kernel"] == "0.8.5"


def test_validate_reports_accuracy_per_stack():
    from vramplan.report.validation_view import validation_doc
    from vramplan.validation import RunComparison, Validation

    def comparison(stack, predicted, measured):
        totals = {"allocated": predicted, "reserved": predicted, "device": predicted}
        return RunComparison("r", "m", "s", totals, dict.fromkeys(totals, measured), "forward", stack=stack)

    v = Validation([comparison("hf", 101, 100), comparison("trl", 90, 100), comparison("trl", 110, 100)])
    assert v.stacks() == ["hf", "trl"]
    doc = validation_doc(v)
    assert doc["stats_by_stack"]["hf"]["allocated"]["runs"] == 1
    trl = doc["stats_by_stack"]["trl"]["allocated"]
    assert trl["runs"] == 2 and trl["worst_under"] == pytest.approx(-0.10) and trl["median_abs"] == pytest.approx(0.10)


# --- measured on the H200 (2026-12-01): what a stack's own head changes around the lm_head ------------------

def test_liger_flce_keeps_no_autocast_copy_of_an_fp32_lm_head():
    # hf QLoRA: prepare_model_for_kbit_training makes lm_head fp32 and autocast saves its bf16 copy (V h 2 bytes);
    # Liger's FLCE casts the weight per chunk itself (in its head term): s-q7-liger-qlora-gc measured 9.67 GiB
    spec = resolve_model("qwen2.5-7b")
    copy = spec.vocab_size * spec.hidden_size * 2
    base = TrainingSetup(method="qlora", quant="nf4", lora=LoraSpec(), seq_len=2048, grad_ckpt=True)
    hf = estimate(spec, base).memory
    liger = estimate(spec, base.model_copy(update={"liger": True})).memory
    assert hf.breakdown.get("autocast_weight_copies", 0) >= copy
    assert "autocast_weight_copies" not in liger.breakdown
    assert liger.peak_allocated_bytes / 2**30 == pytest.approx(9.67, rel=0.01)


def test_a_stack_head_accumulates_the_tied_gradient_in_place():
    # Llama-3.2-1B full FT (tied): hf sums lm_head's transposed gradient and the embedding's out of place
    # (2 x [V, h] bf16); TRL's head returns a contiguous gradient, added to in place (1 x [V, h])
    spec = resolve_model("llama-3.2-1b")
    vh = spec.vocab_size * spec.hidden_size
    base = TrainingSetup(method="full", seq_len=2048, grad_ckpt=True)
    hf = estimate(spec, base).memory.breakdown["tied_embedding_grad_accumulation"]
    trl = estimate(spec, base.model_copy(update={"stack": "trl"})).memory.breakdown["tied_embedding_grad_accumulation"]
    assert hf == pytest.approx(4 * vh, rel=1e-3)
    assert trl == pytest.approx(2 * vh, rel=1e-3)


def test_liger_largest_block_is_the_fp32_lm_head_cast():
    spec = resolve_model("qwen2.5-7b")
    setup = TrainingSetup(method="qlora", quant="nf4", lora=LoraSpec(), seq_len=2048, grad_ckpt=True, liger=True)
    head = stack_profile(setup).head_bytes(spec, setup)
    assert head.largest == spec.vocab_size * spec.hidden_size * 2


def test_bf16_adapters_hold_a_bf16_lora_backward_chain():
    # TRL QLoRA (bf16 adapters): the down_proj LoRA backward keeps its input gradients in bf16 where fp32 adapters
    # hold two fp32 [s, i] gradients and a bf16 cast: 6 bytes x s x i less (Llama-3.1-8B, s=2048: 168 MiB)
    from vramplan.memory.transients import compute_dtype_adapter_saving_bytes

    spec = resolve_model("llama-3.1-8b")
    setup = qlora(stack="trl")
    assert compute_dtype_adapter_saving_bytes(spec, setup, 2) == 2048 * 14336 * 6
    assert compute_dtype_adapter_saving_bytes(spec, setup, 4) == 0
    assert compute_dtype_adapter_saving_bytes(spec, qlora(), stack_profile(qlora()).adapter_itemsize) == 0
    # s-l8-trl-qlora-gc measured 6.765 GiB peak allocated on the H200
    assert estimate(spec, setup).memory.peak_allocated_bytes / 2**30 == pytest.approx(6.765, rel=0.005)
