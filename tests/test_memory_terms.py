"""Hand-derived golden numbers, one model (Llama-3.1-8B) per memory term."""

import pytest

from vramplan.errors import VramplanError
from vramplan.memory.activations import layer_activations
from vramplan.memory.adapters import adapter_bytes, lora_param_count
from vramplan.memory.allocator import block_bytes, workspace_bytes
from vramplan.memory.loss import loss_backward_bytes, loss_forward_bytes
from vramplan.memory.optimizer import gradient_bytes, optimizer_state_bytes, optimizer_step_transient_bytes
from vramplan.memory.trainable import trainable_groups
from vramplan.memory.weights import int8_matrix_bytes, nf4_matrix_bytes, weight_bytes
from vramplan.models import resolve_model
from vramplan.specs import LoraSpec, TrainingSetup

LLAMA = resolve_model("llama-3.1-8b")
P_LLAMA = 8_030_261_248
V, H, L = 128256, 4096, 32


def lora(**kw) -> TrainingSetup:
    return TrainingSetup(method="lora", lora=LoraSpec(**kw.pop("lora", {})), **kw)


def test_block_rounding_is_512_bytes():
    assert block_bytes(0) == 0
    assert block_bytes(1) == 512
    assert block_bytes(512) == 512
    assert block_bytes(513) == 1024


def test_nf4_double_quant_matrix_bytes_by_hand():
    # q_proj 4096x4096: packed 8 MiB, uint8 absmax 262144, state2.absmax 1024 fp32, dynamic code 1 KiB,
    # offset (one 512 B block) and the fp32[16] code (one block)
    expected = 8_388_608 + 262_144 + 4_096 + 1_024 + 512 + 512
    assert nf4_matrix_bytes(4096 * 4096, double_quant=True) == expected


def test_nf4_without_double_quant_keeps_fp32_absmax():
    expected = 8_388_608 + 262_144 * 4 + 512
    assert nf4_matrix_bytes(4096 * 4096, double_quant=False) == expected


def test_nf4_double_quant_is_about_4_127_bits_per_weight():
    n = 4096 * 14336
    bits = nf4_matrix_bytes(n, double_quant=True) * 8 / n
    assert bits == pytest.approx(4.127, abs=0.002)


def test_int8_matrix_is_one_byte_plus_fp32_row_scales():
    assert int8_matrix_bytes(4096, 4096) == 4096 * 4096 + 4096 * 4


def test_bf16_weights_are_two_bytes_per_parameter():
    w = weight_bytes(LLAMA, TrainingSetup(method="full"))
    assert sum(w.values()) == 2 * P_LLAMA


def test_qlora_weights_match_reference_worked_example():
    # memory_model.md section 11: NF4+DQ+prepare_kbit Llama-3.1-8B weights = 7.27 GiB
    w = weight_bytes(LLAMA, TrainingSetup(method="qlora", lora=LoraSpec(), quant="nf4"))
    assert w["weights.embeddings"] == V * H * 4  # upcast to fp32 by prepare_model_for_kbit_training
    assert sum(w.values()) / 2**30 == pytest.approx(7.27, abs=0.01)


def test_lora_r16_all_linear_parameter_count():
    per_layer = 16 * (4096 + 4096 + 4096 + 1024 + 4096 + 1024 + 4096 + 4096 + 2 * (4096 + 14336) + 14336 + 4096)
    assert lora_param_count(LLAMA, LoraSpec(rank=16)) == per_layer * L == 41_943_040


def test_lora_q_v_targets_only():
    assert lora_param_count(LLAMA, LoraSpec(rank=8, targets=("q_proj", "v_proj"))) == 8 * (8192 + 5120) * L


def test_adapters_are_fp32():
    assert adapter_bytes(LLAMA, LoraSpec(rank=16)) == 4 * 41_943_040


def test_unknown_lora_target_lists_accepted_names():
    with pytest.raises(VramplanError, match="accepted: all-linear or a comma list of .*q_proj"):
        lora_param_count(LLAMA, LoraSpec(targets=("qkv",)))


def test_rank_larger_than_layer_is_refused():
    with pytest.raises(VramplanError, match="larger than .*k_proj"):
        lora_param_count(LLAMA, LoraSpec(rank=2048, targets=("k_proj",)))


def test_fused_adamw_states_two_fp32_per_adapter_param_plus_device_step():
    setup = lora()
    groups = trainable_groups(LLAMA, setup)
    states, managed = optimizer_state_bytes(groups, setup)
    assert managed == 0
    assert states == 8 * 41_943_040 + 512 * 7 * 2 * L


def test_full_bf16_adamw_states_are_four_bytes_per_param():
    setup = TrainingSetup(method="full", optimizer="adamw_torch")
    states, _ = optimizer_state_bytes(trainable_groups(LLAMA, setup), setup)
    assert states == pytest.approx(4 * P_LLAMA, rel=1e-4)


def test_bnb_8bit_keeps_embeddings_in_32bit_states():
    setup = TrainingSetup(method="full", optimizer="adamw_8bit")
    states, _ = optimizer_state_bytes(trainable_groups(LLAMA, setup), setup)
    embeddings = 8 * V * H
    rest = P_LLAMA - V * H
    assert states == pytest.approx(embeddings + rest * (2 + 8 / 256), rel=2e-3)


def test_paged_states_leave_the_allocator():
    setup = TrainingSetup(method="full", optimizer="paged_adamw_32bit")
    states, managed = optimizer_state_bytes(trainable_groups(LLAMA, setup), setup)
    assert managed == pytest.approx(8 * P_LLAMA, rel=1e-3)
    assert states < 0.001 * managed


def test_foreach_adamw_step_copies_every_param_once():
    setup = TrainingSetup(method="full", optimizer="adamw_torch")
    groups = trainable_groups(LLAMA, setup)
    assert optimizer_step_transient_bytes(groups, setup) == pytest.approx(2 * P_LLAMA, rel=1e-4)
    fused = TrainingSetup(method="full")
    assert optimizer_step_transient_bytes(groups, fused) == 0


def test_full_bf16_gradients_two_bytes_per_param():
    setup = TrainingSetup(method="full")
    assert gradient_bytes(trainable_groups(LLAMA, setup)) == pytest.approx(2 * P_LLAMA, rel=1e-5)


def test_full_ft_activation_units_llama():
    # 20 + 4 * nkv/nh + 8 * I/h, plus the fp32 logsumexp 4 * nh / h
    act = layer_activations(LLAMA, TrainingSetup(method="full"))
    assert act.layer_units == pytest.approx(20 + 1 + 28 + 4 * 32 / 4096)
    assert act.checkpoint_units == 2


def test_lora_all_linear_with_dropout_activation_units():
    # norms 8, attention 5 (+lse), MLP 6 * 3.5, per target 3 * f_t (f sums to 6 + 3.5), lora_B input 2r/h each
    act = layer_activations(LLAMA, lora())
    expected = 8 + 5 + 4 * 32 / 4096 + 21 + 3 * 9.5 + 7 * 2 * 16 / 4096
    assert act.layer_units == pytest.approx(expected)


def test_dropout_zero_removes_the_masks():
    with_masks = layer_activations(LLAMA, lora()).layer_units
    without = layer_activations(LLAMA, lora(lora={"dropout": 0.0})).layer_units
    assert with_masks - without == pytest.approx(9.5)


def test_qlora_checkpoints_are_fp32():
    act = layer_activations(LLAMA, TrainingSetup(method="qlora", lora=LoraSpec(), quant="nf4"))
    assert act.checkpoint_units == 4


def test_eager_attention_adds_quadratic_term():
    sdpa = layer_activations(LLAMA, TrainingSetup(method="full", seq_len=1024)).layer_units
    eager = layer_activations(LLAMA, TrainingSetup(method="full", seq_len=1024, attn="eager")).layer_units
    assert eager - sdpa == pytest.approx(6 * 32 * 1024 / 4096 + 8 - 5 - 4 * 32 / 4096)


def test_loss_buffers_10_and_12_bytes_per_logit():
    setup = TrainingSetup(method="full", seq_len=2048)
    assert loss_forward_bytes(LLAMA, setup) == 10 * 2048 * V
    assert loss_backward_bytes(LLAMA, setup) == 12 * 2048 * V == 3_152_019_456


def test_gemma2_softcapping_adds_logit_buffers():
    gemma = resolve_model("gemma-2-2b")
    setup = TrainingSetup(method="full", seq_len=512)
    assert loss_backward_bytes(gemma, setup) == 14 * 512 * gemma.vocab_size


def test_cublas_workspace_hopper_vs_older():
    assert workspace_bytes("9.0") == 64 * 2**20
    assert workspace_bytes("8.6") == 2 * (8 * 2**20 + 128 * 2**10)
