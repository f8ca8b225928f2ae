"""Streamlit what-if page: change a setup, see at once whether it fits, where the memory goes, on
which GPUs, what would make it fit, and how far to trust the number.

    pip install -e ".[app]" && streamlit run app.py

A thin page: every number comes from `vramplan.whatif`, which calls the public API (no torch).
"""

import time

import altair as alt
import pandas as pd
import streamlit as st

from gpu_catalog import list_gpus
from vramplan import whatif
from vramplan.errors import VramplanError
from vramplan.models import list_models
from vramplan.report.units import gib
from vramplan.specs import ATTNS, DTYPES, OPTIMIZERS, PARALLELS, QUANTS
from vramplan.specs.setup import MAX_BATCH_SIZE, MAX_GPUS, MAX_LORA_RANK, MAX_SEQ_LEN

D = whatif.Inputs()  # the defaults every widget starts from
COMPARE_DEFAULT = ["a100-40gb", "a100-80gb"]


@st.cache_data(show_spinner="predicting every shipped run with a calibration fitted on the others…")
def accuracy() -> whatif.Accuracy:
    return whatif.accuracy()


def sidebar() -> tuple[whatif.Inputs | None, str | None, list[str]]:
    """The setup from the sidebar widgets; (None, message, ...) when the uploaded config is unusable."""
    sb = st.sidebar
    sb.header("setup")
    problem = None
    model: str | None = D.model
    source = sb.radio("model from", ["catalog", "config.json"], horizontal=True, key="model_source")
    if source == "catalog":
        names = [m.name for m in list_models()]
        model = sb.selectbox("model", names, index=names.index(D.model), key="model", help="--model")
    else:
        upload = sb.file_uploader("config.json of a Hugging Face causal LM", type=["json"], key="upload",
                                  help="read for its shapes only: nothing in it is executed (auto_map is ignored)")  # fmt: skip
        if upload is None:
            model, problem = None, "upload a config.json in the sidebar, or pick a catalog model"
        else:
            try:
                model = whatif.stage_upload(upload.getvalue(), upload.name)
            except VramplanError as exc:
                model, problem = None, f"cannot use {upload.name}: {exc}"

    method = sb.radio("method", ["qlora", "lora", "full"], horizontal=True, key="method", help="--method")
    no_lora, no_quant = method == "full", method != "qlora"
    with sb.expander("LoRA / QLoRA", expanded=not no_lora):
        rank = st.number_input("rank", 1, MAX_LORA_RANK, D.lora_rank, key="lora_rank", disabled=no_lora, help="--lora-rank")
        alpha = st.number_input("alpha", 0.0, None, None, key="lora_alpha", placeholder="2 × rank", disabled=no_lora,
                                help="--lora-alpha (no effect on memory)")  # fmt: skip
        dropout = st.number_input("dropout", 0.0, 0.99, D.lora_dropout, 0.05, key="lora_dropout", disabled=no_lora,
                                  help="--lora-dropout (0 removes the dropout masks)")  # fmt: skip
        targets = st.text_input("targets", D.lora_targets, key="lora_targets", disabled=no_lora,
                                help="--lora-targets: all-linear or a comma list such as q_proj,v_proj")  # fmt: skip
        quant = st.selectbox("quantization", QUANTS, key="quant", disabled=no_quant, help="--quant")
        double_quant = st.checkbox("double quantization", D.double_quant, key="double_quant", disabled=no_quant,
                                   help="--double-quant")  # fmt: skip
    seq_len = sb.number_input("sequence length", 1, MAX_SEQ_LEN, D.seq_len, 256, key="seq_len", help="--seq-len")
    batch = sb.number_input("micro-batch size", 1, MAX_BATCH_SIZE, D.batch_size, key="batch_size", help="--batch-size")
    accum = sb.number_input("gradient accumulation", 1, 65536, D.grad_accum, key="grad_accum", help="--grad-accum")
    grad_ckpt = sb.checkbox("gradient checkpointing", D.grad_ckpt, key="grad_ckpt", help="--grad-ckpt")
    optimizer = sb.selectbox("optimizer", OPTIMIZERS, key="optimizer", help="--optimizer")
    dtype = sb.selectbox("weights dtype", DTYPES, key="dtype", help="--dtype")
    attn = sb.selectbox("attention", ATTNS, key="attn", help="--attn")
    expandable = sb.checkbox("expandable segments", D.expandable_segments, key="expandable_segments",
                             help="--expandable-segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)")  # fmt: skip
    stack = sb.selectbox("software stack", ["hf"], key="stack", help="--stack: transformers Trainer + PEFT + bitsandbytes")

    sb.header("hardware")
    gpus = {g.id: g for g in list_gpus()}
    label = lambda gid: f"{gid} ({gpus[gid].memory_bytes / 2**30:.0f} GiB)"  # noqa: E731
    gpu = sb.selectbox("GPU", list(gpus), index=list(gpus).index(D.gpu), format_func=label, key="gpu", help="--gpu")
    num_gpus = sb.number_input("GPU count", 1, MAX_GPUS, D.num_gpus, key="num_gpus", help="--num-gpus")
    parallel = sb.selectbox("parallel strategy", PARALLELS, key="parallel", disabled=num_gpus == 1, help="--parallel")
    headroom = sb.slider("headroom", 0.0, 0.5, D.headroom, 0.01, key="headroom", help="--headroom: fraction kept free")
    compare = sb.multiselect("lines on the chart for", list(gpus), COMPARE_DEFAULT, key="compare")
    if model is None:
        return None, problem, []
    inputs = whatif.Inputs(
        model=model, method=method, lora_rank=int(rank), lora_alpha=alpha, lora_dropout=float(dropout),
        lora_targets=targets, quant=quant, double_quant=double_quant, seq_len=int(seq_len), batch_size=int(batch),
        grad_accum=int(accum), grad_ckpt=grad_ckpt, optimizer=optimizer, dtype=dtype, attn=attn,
        expandable_segments=expandable, stack=stack, num_gpus=int(num_gpus), parallel=parallel, gpu=gpu,
        headroom=float(headroom),
    )  # fmt: skip
    return inputs, None, [gpu, *compare]


def verdict(e) -> None:
    v, m = e.verdict, whatif.shown_memory(e)
    if v.fits:
        st.success(f"**Fits** on {v.gpu} ({v.gpu_name}): device peak {gib(m.device_peak_bytes)} of "
                   f"{gib(v.usable_bytes)} usable, {gib(v.headroom_bytes)} headroom")  # fmt: skip
    else:
        st.error(f"**Does not fit** on {v.gpu} ({v.gpu_name}): device peak {gib(m.device_peak_bytes)} > "
                 f"{gib(v.usable_bytes)} usable, short by {gib(m.device_peak_bytes - v.usable_bytes)}")  # fmt: skip
    cols = st.columns(4)
    raw = e.memory.device_peak_bytes
    cols[0].metric("device peak (nvidia-smi)", gib(m.device_peak_bytes), help=f"raw model {gib(raw)}; "
                   f"calibration {e.calibration_version or 'none'}")  # fmt: skip
    cols[1].metric("peak reserved", gib(m.peak_reserved_bytes), help="torch max_memory_reserved()")
    cols[2].metric("peak allocated", gib(m.peak_allocated_bytes), help="torch max_memory_allocated()")
    cols[3].metric("trainable / total params", f"{count(e.params.trainable)} / {count(e.params.total)}")


def count(n: int) -> str:
    """'41.9 M', '8.03 B'."""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


#: colour ramps per chart group (whatif.GROUPS): a term's colour says what kind of memory it is
PALETTES = {
    "weights": ["#08306b", "#2171b5", "#4292c6", "#6baed6", "#9ecae1", "#c6dbef"],
    "gradients & optimizer": ["#00441b", "#238b45", "#74c476", "#c7e9c0"],
    "activations & transients": ["#7f2704", "#d94801", "#fd8d3c", "#fdae6b", "#fdd0a2", "#a50f15", "#ef3b2c"],
    "runtime": ["#525252", "#969696", "#bdbdbd", "#d9d9d9"],
}


def term_colors(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(terms, colours) in stacking order, each group taking the next shade of its ramp."""
    used: dict[str, int] = {}
    colors = []
    for r in rows:
        ramp = PALETTES[r["group"]]
        colors.append(ramp[used.get(r["group"], 0) % len(ramp)])
        used[r["group"]] = used.get(r["group"], 0) + 1
    return [r["term"] for r in rows], colors


def memory_chart(e, gpu_ids: list[str], headroom: float) -> alt.LayerChart:
    """One stacked bar (the breakdown at the peak, up to the device peak) and a dashed line per GPU
    at its usable memory; labels alternate above and below their line so neighbours stay legible."""
    m = whatif.shown_memory(e)
    rows = whatif.chart_rows(m)
    terms, colors = term_colors(rows)
    bars = pd.DataFrame(rows).assign(bar="device peak")
    lines = pd.DataFrame(whatif.capacity_lines(gpu_ids, headroom))
    bar = (
        alt.Chart(bars)
        .mark_bar(size=110)
        .encode(
            x=alt.X("bar:N", title=f"breakdown at the peak phase: {m.peak_phase}", axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("sum(GiB):Q", title="GiB on the GPU", stack="zero"),
            color=alt.Color("term:N", title="memory term", sort=terms, scale=alt.Scale(domain=terms, range=colors)),
            order=alt.Order("order:Q"),
            tooltip=["term:N", "group:N", alt.Tooltip("GiB:Q", format=".2f")],
        )
    )
    rule = alt.Chart(lines).mark_rule(strokeDash=[6, 4], strokeWidth=2, color="#cb181d").encode(y="GiB:Q", tooltip=["label:N"])
    layers = [bar, rule]
    for parity, dy in ((0, -7), (1, 12)):
        text = alt.Chart(lines.iloc[parity::2]).mark_text(align="left", dx=4, dy=dy, color="#cb181d", fontWeight="bold")
        layers.append(text.encode(y="GiB:Q", x=alt.value(0), text="label:N"))
    return alt.layer(*layers).properties(height=440)


def fit_panel(inputs: whatif.Inputs) -> None:
    st.subheader(f"largest that fit on {inputs.gpu}")
    batch, seq = whatif.largest_batch(inputs), whatif.largest_seq(inputs)
    st.metric(f"micro-batch at seq {inputs.seq_len}", "none" if batch is None else f"{batch}")
    st.metric(f"sequence length at batch {inputs.batch_size}", "none" if seq is None else f"{seq:,}")
    if not whatif.fits(inputs):
        st.subheader("what would make it fit")
        rows = whatif.suggestions(inputs)
        if not rows:
            st.write("no single change saves memory; try a GPU with more memory")
        st.markdown("\n".join(f"- {s.change}: saves {gib(s.saves_bytes)}" + (" — **fits**" if s.fits else "") for s in rows))


def gpu_table(inputs: whatif.Inputs) -> None:
    st.subheader("every catalog GPU")
    st.dataframe(
        pd.DataFrame(whatif.gpu_table(inputs)),
        hide_index=True,
        column_config={"fits": st.column_config.CheckboxColumn("fits"),
                       "$/GPU-hour": st.column_config.NumberColumn("$/GPU-hour", format="$%.2f")},  # fmt: skip
    )


def accuracy_panel() -> None:
    st.subheader("how accurate is this?")
    acc = accuracy()
    st.caption("Each shipped measured run (vramplan/runs/shipped) predicted with a calibration fitted on all the "
               "other runs (leave-one-out). Error = predicted / measured − 1; negative is an under-prediction.")  # fmt: skip
    cols = st.columns(3)
    for col, total in zip(cols, ("device", "reserved", "allocated")):
        s = acc.stats[total]
        if s["runs"]:
            col.metric(f"{total}: median |error| ({s['runs']} runs)", f"{s['median_abs']:.1%}",
                       f"worst {s['worst_abs']:.1%}, worst under {min(s['worst_under'], 0.0):+.1%}",
                       delta_color="off")  # fmt: skip
    with st.expander(f"predicted vs measured, all {len(acc.rows)} runs"):
        df = pd.DataFrame(acc.rows)
        diag = alt.Chart(pd.DataFrame({"GiB": [0, float(df["measured device GiB"].max() or 1)]})).mark_line(
            color="gray", strokeDash=[4, 4]).encode(x=alt.X("GiB:Q", title="measured device GiB"), y=alt.Y("GiB:Q", title="predicted device GiB"))  # fmt: skip
        dots = alt.Chart(df).mark_circle(size=60).encode(
            x=alt.X("measured device GiB:Q"), y=alt.Y("predicted device GiB:Q"), color="model:N",
            tooltip=["model", "setup", "device error %"])  # fmt: skip
        st.altair_chart(diag + dots, width="stretch")
        st.dataframe(df, hide_index=True)
        if acc.skipped:
            st.caption("skipped: " + "; ".join(f"{r} ({why})" for r, why in acc.skipped))


def main() -> None:
    st.set_page_config(page_title="vramplan what-if", layout="wide")
    st.title("vramplan — will this fine-tuning job fit?")
    started = time.perf_counter()
    inputs, problem, chart_gpus = sidebar()
    try:
        if inputs is None:
            st.error(problem)
        else:
            e = whatif.estimate(inputs)
            st.caption(f"{e.model} · {e.method} · calibrated with {e.calibration_version or 'no calibration'}")
            verdict(e)
            left, right = st.columns([3, 2])
            left.altair_chart(memory_chart(e, chart_gpus, inputs.headroom), width="stretch")
            with right:
                fit_panel(inputs)
            gpu_table(inputs)
            with st.expander("assumptions"):
                st.markdown("\n".join(f"- {a}" for a in e.assumptions))
            st.caption(f"updated in {1000 * (time.perf_counter() - started):.0f} ms")
    except VramplanError as exc:
        st.error(str(exc))
    accuracy_panel()


main()
