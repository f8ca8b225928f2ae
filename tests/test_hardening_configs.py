"""Absurd or broken model configs are refused with one line naming what is wrong (issue 14, part 1)."""

import json
import os

import pytest

from vramplan.errors import ConfigError, VramplanError
from vramplan.models import resolve_model

LLAMA = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
}  # fmt: skip
GEMMA2 = {
    "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
}  # fmt: skip


def _write(tmp_path, text: str):
    path = tmp_path / "config.json"
    path.write_text(text)
    return str(path)


def _refusal(path: str) -> str:
    with pytest.raises(ConfigError) as err:
        resolve_model(path)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_deeply_nested_json_is_refused_in_one_line(tmp_path):
    assert "nested too deeply" in _refusal(_write(tmp_path, "[" * 100_000 + "]" * 100_000))


def test_an_integer_of_thousands_of_digits_is_refused_in_one_line(tmp_path):
    text = json.dumps(LLAMA).replace("4096", "9" * 5000, 1)
    assert "too long" in _refusal(_write(tmp_path, text))


@pytest.mark.parametrize(
    "key, value",
    [("hidden_size", 32_000_000_000), ("num_hidden_layers", 100_000), ("num_attention_heads", 1 << 20),
     ("vocab_size", 10**9), ("intermediate_size", 10**8)],
)  # fmt: skip
def test_shapes_no_real_model_has_are_refused(tmp_path, key, value):
    config = {**LLAMA, key: value}
    if key == "num_attention_heads":
        config["num_key_value_heads"] = value
    message = _refusal(_write(tmp_path, json.dumps(config)))
    assert key in message and "larger than any real model" in message


def test_absurd_expert_count_is_refused(tmp_path):
    config = {**LLAMA, "model_type": "mixtral", "num_local_experts": 10**7, "num_experts_per_tok": 2}
    assert "num_local_experts" in _refusal(_write(tmp_path, json.dumps(config)))


def test_real_upper_end_shapes_still_parse():
    spec = resolve_model("llama-3.1-405b")
    assert spec.hidden_size == 16384 and spec.num_layers == 126


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "0", "-5.0"])
def test_non_finite_or_non_positive_softcapping_is_refused(tmp_path, literal):
    text = json.dumps(GEMMA2).replace("50.0", literal)
    assert "attn_logit_softcapping" in _refusal(_write(tmp_path, text))


def test_gemma2_softcapping_parses():
    assert resolve_model("gemma-2-2b").final_logit_softcapping == 30.0


def test_a_symlink_loop_says_so(tmp_path):
    loop = tmp_path / "loop.json"
    os.symlink(loop, loop)
    assert "symbolic link loop" in _refusal(str(loop))


def test_a_dangling_symlink_says_so(tmp_path):
    link = tmp_path / "config.json"
    os.symlink(tmp_path / "gone.json", link)
    message = _refusal(str(tmp_path))
    assert "dangling symbolic link" in message and "gone.json" in message


def test_a_dangling_hf_cache_blob_says_so_not_unknown_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--acme--tiny"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    os.symlink("../../blobs/deadbeef", repo / "snapshots" / "abc123" / "config.json")
    with pytest.raises(VramplanError) as err:
        resolve_model("acme/tiny")
    assert "HF cache" in str(err.value) and "dangling" in str(err.value) and "unknown model" not in str(err.value)
