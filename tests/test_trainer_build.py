"""The built-in trainer's checkpoint for QLoRA and Unsloth runs (vramplan.trainer.build.ensure_checkpoint), on CPU."""

import json
from importlib.resources import files

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from vramplan.trainer.build import ensure_checkpoint  # noqa: E402


def test_a_gemma_3_checkpoint_saves_despite_its_cache_implementation(tmp_path):
    # gemma-3-1b-it's config names cache_implementation "hybrid"; with use_cache off transformers' save_pretrained
    # refused its generation config, so every Unsloth run of it failed before training (session 9's unsloth-gemma grid)
    raw = json.loads(files("vramplan.models").joinpath("configs", "google__gemma-3-1b-it.json").read_text())
    raw.update(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
               head_dim=32, vocab_size=256, use_cache=False, layer_types=["full_attention"])  # fmt: skip
    assert raw["cache_implementation"] == "hybrid"
    path = ensure_checkpoint(raw, tmp_path, name="tiny-gemma-3", device="cpu")
    assert any(path.glob("*.safetensors"))
    # transformers 5.17 (the GPU machine's) raises on the pair, 5.24 warns and saves it: the name is gone either way
    generation = json.loads((path / "generation_config.json").read_text())
    assert "cache_implementation" not in generation
    assert ensure_checkpoint(raw, tmp_path, name="tiny-gemma-3", device="cpu") == path  # built once


def test_the_fast_cpu_init_keeps_each_init_s_mean_and_spread_and_restores_torch():
    # an FSDP model built on the CPU (run.builds_on_cpu) is filled from one repeated random block: torch's own CPU draws
    # ran on one thread (Llama-3.2-1B spent 67 s there on the GPU machine, 8B past its timeout)
    import torch

    from vramplan.trainer.build import _FILL_BLOCK, fast_cpu_random_init

    normal, uniform = torch.Tensor.normal_, torch.Tensor.uniform_
    big = torch.empty(2 * _FILL_BLOCK + 1000, dtype=torch.bfloat16)
    small = torch.empty(300, 7)
    with fast_cpu_random_init():
        big.normal_(0.5, 0.02)
        torch.nn.init.uniform_(small, -3.0, 1.0)  # what nn.Linear.reset_parameters' kaiming_uniform_ reaches
        strided = torch.zeros(8, 8).t()
        strided.normal_()  # not contiguous: torch's own draw
    assert torch.Tensor.normal_ is normal and torch.Tensor.uniform_ is uniform
    b = big.float()
    assert abs(b.mean().item() - 0.5) < 1e-3 and abs(b.std().item() - 0.02) < 1e-3
    assert torch.equal(b[:1000], b[_FILL_BLOCK : _FILL_BLOCK + 1000])  # the block repeated
    assert abs(small.mean().item() + 1.0) < 0.1 and abs(small.std().item() - 4 / 12**0.5) < 0.1
    assert torch.isfinite(b).all() and strided.std().item() > 0.5
