import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


FAKE_RANK_RECORDS = Path(__file__).resolve().parent.parent / "docs" / "allocator_traces" / "fake_rank" / "records"


def fake_holdout_compare(grid: str) -> str:
    """scripts/holdout.py compare of a multi-GPU grid's committed predictions against the fake-rank records: what it
    prints."""
    import contextlib
    import io
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import holdout

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        holdout.compare(holdout.PREDICTION_FILES[grid], FAKE_RANK_RECORDS, grid)
    return out.getvalue()
