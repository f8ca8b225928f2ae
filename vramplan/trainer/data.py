"""Training data for measurement runs: fixed-length synthetic tokens, or a local JSONL file.

Synthetic batches are what the calibration runs use: every sample is exactly ``seq_len`` random
token ids below the vocabulary size, ``labels = input_ids``, no padding and no
``attention_mask`` key, so SDPA takes its causal no-mask path (transformers 5.23
``masking_utils.py::_ignore_causal_mask_sdpa`` returns no mask, then
``integrations/sdpa_attention.py`` ~L159 sets ``is_causal = q_length > 1 and attention_mask is None``)
and memory depends on shapes only. (Sliding-window models such as Gemma-2 may still build a mask.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .errors import MeasurementError


class SyntheticTokens(Dataset):
    """``num_samples`` samples of ``seq_len`` random ids in ``[0, vocab_size)``; deterministic per index."""

    def __init__(self, vocab_size: int, seq_len: int, num_samples: int, seed: int = 0) -> None:
        if vocab_size <= 0 or seq_len <= 0 or num_samples <= 0:
            raise MeasurementError(
                f"synthetic data needs positive sizes, got vocab_size={vocab_size}, "
                f"seq_len={seq_len}, num_samples={num_samples}"
            )
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_samples = num_samples
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        ids = torch.randint(0, self.vocab_size, (self.seq_len,), generator=gen, dtype=torch.long)
        return {"input_ids": ids, "labels": ids.clone()}


class JsonlText(Dataset):
    """``{"text": ...}`` lines tokenized with a local tokenizer, truncated/padded to ``seq_len``.

    Padding positions get ``attention_mask = 0`` and label -100. Lines are reused cyclically when
    the file has fewer than ``num_samples`` lines.
    """

    def __init__(self, path: str | Path, tokenizer_dir: str | Path, seq_len: int, num_samples: int) -> None:
        from transformers import AutoTokenizer

        path = Path(path)
        texts: list[str] = []
        try:
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        texts.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise MeasurementError(f"{path}:{lineno}: expected a JSON object with a 'text' key") from exc
        except OSError as exc:
            raise MeasurementError(f"cannot read data file {path}: {exc}") from exc
        if not texts:
            raise MeasurementError(f"{path}: no {{'text': ...}} lines")
        try:
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        except Exception as exc:  # transformers raises OSError/ValueError variants
            raise MeasurementError(f"cannot load a tokenizer from {tokenizer_dir}: {exc}") from exc
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.encoded = tok(texts, max_length=seq_len, truncation=True, padding="max_length", return_tensors="pt")
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = index % self.encoded["input_ids"].shape[0]
        ids = self.encoded["input_ids"][i]
        mask = self.encoded["attention_mask"][i]
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_dataset(
    vocab_size: int,
    seq_len: int,
    num_samples: int,
    *,
    data: str | Path | None = None,
    tokenizer: str | Path | None = None,
) -> Dataset:
    """Synthetic tokens, or ``data`` (JSONL) tokenized with the local ``tokenizer`` folder."""
    if data is None:
        return SyntheticTokens(vocab_size, seq_len, num_samples)
    if tokenizer is None:
        raise MeasurementError("a --data file needs --tokenizer (a local tokenizer folder)")
    return JsonlText(data, tokenizer, seq_len, num_samples)
