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
