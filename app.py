"""Streamlit what-if page (first version): one estimate with its breakdown and a GPU verdict.

    pip install -e ".[app]" && streamlit run app.py

Uses the public API only (no torch).
"""

import streamlit as st

from gpu_catalog import list_gpus
from vramplan.api import estimate_for
from vramplan.errors import VramplanError
from vramplan.models import list_models
from vramplan.report.units import gib
from vramplan.specs import LoraSpec, TrainingSetup

st.set_page_config(page_title="vramplan", layout="wide")
st.title("vramplan — will this fine-tuning job fit?")

with st.sidebar:
    model = st.selectbox("model", [m.name for m in list_models()], index=None, placeholder="llama-3.1-8b")
    model = model or "llama-3.1-8b"
    method = st.radio("method", ["qlora", "lora", "full"], horizontal=True)
    rank = st.slider("LoRA rank", 1, 256, 16, disabled=method == "full")
    seq_len = st.select_slider("sequence length", [256, 512, 1024, 2048, 4096, 8192, 16384, 32768], 2048)
    batch = st.slider("micro-batch", 1, 32, 1)
    grad_ckpt = st.checkbox("gradient checkpointing", value=True)
    gpu_ids = [g.id for g in list_gpus()]
    gpu = st.selectbox("GPU", gpu_ids, index=gpu_ids.index("rtx-4090"))

try:
    lora = LoraSpec(rank=rank) if method != "full" else None
    setup = TrainingSetup(
        method=method, lora=lora, quant="nf4" if method == "qlora" else None,
        seq_len=seq_len, batch_size=batch, grad_ckpt=grad_ckpt,
    )  # fmt: skip
    result = estimate_for(model, setup, gpu=gpu)
except (VramplanError, ValueError) as exc:
    st.error(str(exc))
    st.stop()

m = result.calibrated or result.memory
v = result.verdict
cols = st.columns(4)
cols[0].metric("device peak", gib(m.device_peak_bytes))
cols[1].metric("peak reserved", gib(m.peak_reserved_bytes))
cols[2].metric("peak allocated", gib(m.peak_allocated_bytes))
cols[3].metric(f"fits {v.gpu}?", "yes" if v.fits else "no", gib(v.headroom_bytes) + " headroom")
st.subheader(f"breakdown at the peak ({m.peak_phase})")
st.bar_chart({name: nbytes / 2**30 for name, nbytes in m.breakdown.items()}, horizontal=True)
with st.expander("assumptions"):
    for a in result.assumptions:
        st.write("- " + a)
