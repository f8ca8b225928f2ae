"""Streamlit what-if page: change a setup, see at once whether it fits, where the memory goes, on
which GPUs, what would make it fit, and how far to trust the number.

    pip install -e ".[app]" && streamlit run app.py

A thin page: every number comes from `vramplan.whatif`, which calls the public API (no torch).
"""

import time

import pandas as pd
import streamlit as st

from gpu_catalog import list_gpus
from vramplan import whatif
from vramplan.errors import VramplanError
from vramplan.models import list_models
from vramplan.report.units import gib
from vramplan.specs import ATTNS, DTYPES, OPTIMIZERS, PARALLELS, QUANTS
from vramplan.specs.setup import MAX_BATCH_SIZE, MAX_GPUS, MAX_LORA_RANK, MAX_SEQ_LEN, STACKS

D = whatif.Inputs()  # the defaults every widget starts from
COMPARE_DEFAULT = ["a100-40gb", "a100-80gb"]


@st.cache_data(show_spinner="predicting every shipped run with a calibration fitted on the others…")
def accuracy() -> whatif.Accuracy:
    return whatif.accuracy()


def apply_training_config() -> None:
    """on_change of the training-config upload: write what the file sets into the widgets' state."""
    upload = st.session_state.get("training_config")
    st.session_state["config_notes"], st.session_state["config_problem"] = (), None
    if upload is None:
        return
    try:
        values, notes = whatif.config_values(upload.getvalue(), upload.name, D)
    except VramplanError as exc:
        st.session_state["config_problem"] = f"cannot use {upload.name}: {exc}"
        return
    if "model" in values:
        st.session_state["model_source"] = "catalog"
    for key, value in values.items():
        st.session_state[key] = float(value) if key == "lora_dropout" else value
    st.session_state["config_notes"] = notes


def sidebar() -> tuple[whatif.Inputs | None, str | None, list[str]]:
    """The setup from the sidebar widgets; (None, message, ...) when the uploaded config is unusable."""
    sb = st.sidebar
    sb.header("setup")
    sb.file_uploader("fill from a training config", type=["yml", "yaml", "json"], key="training_config",
                     on_change=apply_training_config,
                     help="--from-config: an Axolotl or LLaMA-Factory YAML, a TrainingArguments/SFTConfig JSON or a PEFT "
                          "adapter_config.json; read as data, nothing in it is executed")  # fmt: skip
    if st.session_state.get("config_problem"):
        sb.error(st.session_state["config_problem"])
    for note in st.session_state.get("config_notes", ()):
        sb.caption(note)
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
    stack = sb.selectbox("software stack", STACKS, key="stack",
                         help="--stack: hf (transformers Trainer + PEFT + bitsandbytes), trl (TRL SFTTrainer), unsloth")  # fmt: skip
    liger = sb.checkbox("Liger kernels", D.liger, key="liger", disabled=stack == "unsloth",
                        help="--liger: use_liger_kernel=True (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE)")  # fmt: skip
    packing = sb.checkbox("packed sequences", D.packing, key="packing",
                          help="--packing: sequences packed into each row without padding")  # fmt: skip

    sb.header("hardware")
    gpus = {g.id: g for g in list_gpus()}
    label = lambda gid: f"{gid} ({gpus[gid].memory_bytes / 2**30:.0f} GiB)"  # noqa: E731
    gpu = sb.selectbox("GPU", list(gpus), index=list(gpus).index(D.gpu), format_func=label, key="gpu", help="--gpu")
    num_gpus = sb.number_input("GPU count", 1, MAX_GPUS, D.num_gpus, key="num_gpus", help="--num-gpus")
    parallel = sb.selectbox("parallel strategy", PARALLELS, key="parallel", disabled=num_gpus == 1, help="--parallel")
    headroom = sb.slider("headroom", 0.0, 0.5, D.headroom, 0.01, key="headroom", help="--headroom: fraction kept free")
    compare = sb.multiselect("lines on the chart for", list(gpus), COMPARE_DEFAULT, key="compare")

    sb.header("plan")
    max_gpus = sb.number_input("most GPUs per option", 1, MAX_GPUS, D.max_gpus, key="max_gpus", help="--max-gpus")
    tokens = sb.number_input("dataset tokens", 1, None, None, 1_000_000, key="dataset_tokens", placeholder="for time and cost",
                             help="--dataset-tokens: tokens per epoch")  # fmt: skip
    examples = sb.number_input("dataset examples", 1, None, None, 1000, key="dataset_examples", placeholder="or examples",
                               help="--dataset-examples: examples per epoch, seq-len tokens each")  # fmt: skip
    epochs = sb.number_input("epochs", 0.0, None, None, 1.0, key="epochs", placeholder="1", help="--epochs")
    sort = sb.radio("rank options by", ["cost", "time", "memory"], horizontal=True, key="sort", help="--sort")
    if model is None:
        return None, problem, []
    inputs = whatif.Inputs(
        model=model, method=method, lora_rank=int(rank), lora_alpha=alpha, lora_dropout=float(dropout),
        lora_targets=targets, quant=quant, double_quant=double_quant, seq_len=int(seq_len), batch_size=int(batch),
        grad_accum=int(accum), grad_ckpt=grad_ckpt, optimizer=optimizer, dtype=dtype, attn=attn,
        expandable_segments=expandable, stack=stack, liger=liger, packing=packing, num_gpus=int(num_gpus), parallel=parallel, gpu=gpu,
        headroom=float(headroom), max_gpus=int(max_gpus), dataset_tokens=None if tokens is None else int(tokens),
        dataset_examples=None if examples is None else int(examples), epochs=epochs, sort=sort,
    )  # fmt: skip
    return inputs, None, [gpu, *compare]


def where(inputs: whatif.Inputs) -> str:
    """'rtx-4090' or '4× h100-sxm (fsdp)'."""
    return inputs.gpu if inputs.num_gpus == 1 else f"{inputs.num_gpus}× {inputs.gpu} ({inputs.parallel})"


def verdict(e, inputs: whatif.Inputs) -> None:
    v, m = e.verdict, whatif.shown_memory(e)
    per_gpu = "" if inputs.num_gpus == 1 else " per GPU"
    if v.fits:
        st.success(f"**Fits** on {where(inputs)}, {v.gpu_name}: device peak{per_gpu} {gib(m.device_peak_bytes)} of "
                   f"{gib(v.usable_bytes)} usable, {gib(v.headroom_bytes)} headroom")  # fmt: skip
    else:
        st.error(f"**Does not fit** on {where(inputs)}, {v.gpu_name}: device peak{per_gpu} {gib(m.device_peak_bytes)} > "
                 f"{gib(v.usable_bytes)} usable, short by {gib(m.device_peak_bytes - v.usable_bytes)}")  # fmt: skip
    cols = st.columns(4)
    raw = e.memory.device_peak_bytes
    cols[0].metric(f"device peak{per_gpu} (nvidia-smi)", gib(m.device_peak_bytes), help=f"raw model {gib(raw)}; "
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
LINE_COLOR = "#cb181d"


def term_colors(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(terms, colours) in stacking order, each group taking the next shade of its ramp."""
    used: dict[str, int] = {}
    colors = []
    for r in rows:
        ramp = PALETTES[r["group"]]
        colors.append(ramp[used.get(r["group"], 0) % len(ramp)])
        used[r["group"]] = used.get(r["group"], 0) + 1
    return [r["term"] for r in rows], colors


def memory_chart(e, gpu_ids: list[str], headroom: float) -> dict:
    """Vega-Lite: one stacked bar (the breakdown at the peak, up to the device peak) and a dashed line
    per GPU at its usable memory; labels alternate above and below their line so neighbours stay legible.
    A plain spec, not altair: building and validating an altair chart costs ~80 ms per rerun."""
    m = whatif.shown_memory(e)
    rows = whatif.chart_rows(m)
    terms, colors = term_colors(rows)
    lines = whatif.capacity_lines(gpu_ids, headroom)
    gib_axis = {"field": "GiB", "type": "quantitative"}
    bar = {
        "data": {"values": [{**r, "bar": "device peak"} for r in rows]},
        "mark": {"type": "bar", "size": 110},
        "encoding": {
            "x": {"field": "bar", "type": "nominal", "title": f"breakdown at the peak phase: {m.peak_phase}",
                  "axis": {"labels": False, "ticks": False}},  # fmt: skip
            "y": {**gib_axis, "aggregate": "sum", "stack": "zero", "title": "GiB on the GPU"},
            "color": {"field": "term", "type": "nominal", "title": "memory term", "sort": terms,
                      "scale": {"domain": terms, "range": colors}},  # fmt: skip
            "order": {"field": "order", "type": "quantitative"},
            "tooltip": [{"field": "term"}, {"field": "group"}, {**gib_axis, "format": ".2f"}],
        },
    }
    rule = {
        "data": {"values": lines},
        "mark": {"type": "rule", "strokeDash": [6, 4], "strokeWidth": 2, "color": LINE_COLOR},
        "encoding": {"y": gib_axis, "tooltip": [{"field": "label"}]},
    }
    labels = [
        {
            "data": {"values": lines[parity::2]},
            "mark": {"type": "text", "align": "left", "dx": 4, "dy": dy, "color": LINE_COLOR, "fontWeight": "bold"},
            "encoding": {"y": gib_axis, "x": {"value": 0}, "text": {"field": "label"}},
        }
        for parity, dy in ((0, -7), (1, 12))
    ]
    return {"height": 440, "layer": [bar, rule, *labels]}


def accuracy_chart(rows: list[dict]) -> dict:
    """Vega-Lite scatter of predicted vs measured device peak, with the y = x diagonal."""
    top = max((r["measured device GiB"] or 0 for r in rows), default=1)
    x = {"field": "measured device GiB", "type": "quantitative"}
    y = {"field": "predicted device GiB", "type": "quantitative"}
    diagonal = {
        "data": {"values": [{"measured device GiB": 0, "predicted device GiB": 0},
                            {"measured device GiB": top, "predicted device GiB": top}]},  # fmt: skip
        "mark": {"type": "line", "color": "gray", "strokeDash": [4, 4]},
        "encoding": {"x": x, "y": y},
    }
    dots = {
        "data": {"values": rows},
        "mark": {"type": "circle", "size": 60},
        "encoding": {"x": x, "y": y, "color": {"field": "model", "type": "nominal"},
                     "tooltip": [{"field": "model"}, {"field": "setup"}, {"field": "device error %"}]},  # fmt: skip
    }
    return {"height": 380, "layer": [diagonal, dots]}


def fit_panel(inputs: whatif.Inputs, fits: bool) -> None:
    st.subheader(f"largest that fit on {where(inputs)}")
    for solve, label in (("batch-size", f"micro-batch at seq {inputs.seq_len}"),
                         ("seq-len", f"sequence length at batch {inputs.batch_size}")):  # fmt: skip
        r = whatif.largest(inputs, solve)
        value = "none" if r.value is None else f"{r.value:,}"
        st.metric(label, value, help="the search limit (max_position_embeddings)" if r.value == r.limit else None)
    if not fits:
        st.subheader("what would make it fit")
        rows = whatif.suggestions(inputs)
        if not rows:
            st.write("no single change saves memory; try a GPU with more memory")
        st.markdown("\n".join(f"- `{s.change}`: saves {gib(s.saves_bytes)}" + (" — **fits**" if s.fits else "") for s in rows))


PLAN_COLUMNS = {
    "fits": st.column_config.CheckboxColumn("fits"),
    "$/GPU-hour": st.column_config.NumberColumn("$/GPU-hour", format="$%.2f"),
    "cost $": st.column_config.NumberColumn("cost", format="$%.2f"),
}


def plan_table(rows: list[dict], drop: tuple[str, ...] = ()) -> None:
    """A plan table without the given columns and without columns that are empty in every row
    (time and cost without a dataset size, `why not` when everything fits)."""
    empty = {"time h", "cost $", "why not"} & {k for k in (rows[0] if rows else {}) if all(r[k] is None for r in rows)}
    table = pd.DataFrame(rows).drop(columns=[*drop, *empty], errors="ignore")
    st.dataframe(table, hide_index=True, column_config=PLAN_COLUMNS)


def plan_tables(inputs: whatif.Inputs) -> None:
    count = "one GPU" if inputs.num_gpus == 1 else f"{inputs.num_gpus} GPUs, {inputs.parallel}"
    st.subheader(f"every catalog GPU ({count})")
    if inputs.dataset_tokens is None and inputs.dataset_examples is None:
        st.caption("give a dataset size in the sidebar for training time and cost")
    plan_table(whatif.gpu_table(inputs), drop=("GPUs", "parallel", "why not"))
    st.subheader(f"best options, 1 to {max(inputs.max_gpus, inputs.num_gpus)} GPUs, by {inputs.sort}")
    plan_table(whatif.best_options(inputs))


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
        st.vega_lite_chart(spec=accuracy_chart(acc.rows), width="stretch")
        st.dataframe(pd.DataFrame(acc.rows), hide_index=True)
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
            verdict(e, inputs)
            left, right = st.columns([3, 2])
            left.vega_lite_chart(spec=memory_chart(e, chart_gpus, inputs.headroom), width="stretch")
            with right:
                fit_panel(inputs, e.verdict.fits)
            plan_tables(inputs)
            with st.expander("assumptions"):
                st.markdown("\n".join(f"- {a}" for a in e.assumptions))
            st.caption(f"updated in {1000 * (time.perf_counter() - started):.0f} ms")
    except VramplanError as exc:
        st.error(str(exc))
    accuracy_panel()


main()
