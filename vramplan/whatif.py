"""What the Streamlit what-if page (app.py) shows, as plain functions: no streamlit, no torch.

The page turns its widgets into `Inputs`, then asks this module for the estimate on the chosen GPU,
the chart rows, the catalog table, the largest batch and sequence that fit, suggestions and the
measured evidence. Everything goes through the public API (`vramplan.api`, `vramplan.models`,
`gpu_catalog`, `vramplan.calibration`). When the planner (`vramplan.api.plan_for` / `fit_for`) is
not there, the catalog table, the inverse queries and the suggestions are computed here from
`estimate_for` alone. Estimates are memoized: one interaction re-runs ~70 estimates of ~1 ms each.
"""

import hashlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from pathlib import Path

from gpu_catalog import find_gpu, list_gpus

from . import api
from .calibration import leave_one_out
from .cli_options import build_setup
from .errors import ConfigError, VramplanError
from .models import parse_config
from .runs import load_runs, shipped_runs_dir
from .specs import Estimate, MemoryBreakdown, TrainingSetup
from .specs.setup import MAX_BATCH_SIZE, MAX_SEQ_LEN
from .validation import TOTALS

GIB = 1024**3
#: an uploaded config.json larger than this is refused (real ones are a few KiB)
MAX_UPLOAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Inputs:
    """Every setup input of `vramplan estimate`, as the page's sidebar holds them (CLI defaults,
    except gradient checkpointing, on as in the README's headline example)."""

    model: str = "llama-3.1-8b"
    method: str = "qlora"
    lora_rank: int = 16
    lora_alpha: float | None = None
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    quant: str = "nf4"
    double_quant: bool = True
    seq_len: int = 2048
    batch_size: int = 1
    grad_accum: int = 1
    grad_ckpt: bool = True
    optimizer: str = "adamw_torch_fused"
    dtype: str = "bf16"
    attn: str = "sdpa"
    expandable_segments: bool = False
    stack: str = "hf"
    num_gpus: int = 1
    parallel: str | None = None
    gpu: str = "rtx-4090"
    headroom: float = 0.05

    def setup(self) -> TrainingSetup:
        """The validated TrainingSetup. Raises VramplanError naming the bad input."""
        fields = asdict(self)
        for key in ("model", "gpu", "headroom"):
            fields.pop(key)
        if self.method != "qlora":
            fields["quant"] = None
        if self.num_gpus == 1:
            fields["parallel"] = None
        return build_setup(**fields)

    def with_(self, **changes: object) -> "Inputs":
        return Inputs(**{**asdict(self), **changes})


# --- estimates ----------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _estimate(model: str, setup: TrainingSetup, gpu: str | None, headroom: float) -> Estimate:
    return api.estimate_for(model, setup, gpu=gpu, headroom=headroom)


def estimate(inputs: Inputs) -> Estimate:
    """The estimate of `inputs` on their GPU, with its verdict. Raises VramplanError."""
    return _estimate(inputs.model, inputs.setup(), inputs.gpu, inputs.headroom)


def shown_memory(e: Estimate) -> MemoryBreakdown:
    """The calibrated prediction when a calibration applies, else the raw one (as the CLI shows)."""
    return e.calibrated or e.memory


def fits(inputs: Inputs) -> bool:
    """Whether `inputs` fit their GPU; an unsupported setup (VramplanError) does not fit."""
    try:
        verdict = estimate(inputs).verdict
    except VramplanError:
        return False
    return verdict is not None and verdict.fits


# --- chart --------------------------------------------------------------------------------------


#: chart groups of the breakdown terms (anything else is "activations & transients")
_STATE_TERMS = ("optimizer_states", "gradients", "optimizer_step_temporaries", "tied_embedding_grad_accumulation")
_RUNTIME_TERMS = ("cuda_workspace", "allocator fragmentation", "outside allocator (paged states)", "CUDA context")
GROUPS = ("weights", "gradients & optimizer", "activations & transients", "runtime")


def term_group(term: str) -> str:
    """Which of GROUPS a breakdown term belongs to (for the chart's colours)."""
    if term.startswith("weights"):
        return "weights"
    if term in _STATE_TERMS:
        return "gradients & optimizer"
    if term in _RUNTIME_TERMS:
        return "runtime"
    return "activations & transients"


def chart_rows(memory: MemoryBreakdown) -> list[dict]:
    """Stacked-bar rows (term, group, GiB, order) that add up to the device peak: the allocated terms
    at the peak, then allocator fragmentation, memory outside the allocator and the CUDA context."""
    terms = list(memory.breakdown.items())
    terms.append(("allocator fragmentation", memory.fragmentation_bytes))
    if memory.outside_allocator_bytes:
        terms.append(("outside allocator (paged states)", memory.outside_allocator_bytes))
    terms.append(("CUDA context", memory.cuda_context_bytes))
    terms = [(name, nbytes) for name, nbytes in terms if nbytes]
    terms.sort(key=lambda t: GROUPS.index(term_group(t[0])))  # stable: keeps the estimator's order in a group
    return [{"term": name, "group": term_group(name), "GiB": nbytes / GIB, "order": i} for i, (name, nbytes) in enumerate(terms)]


def capacity_lines(gpu_ids: list[str], headroom: float) -> list[dict]:
    """One row per GPU: its usable memory (capacity x (1 - headroom)) in GiB, for a horizontal rule."""
    rows = []
    for gid in dict.fromkeys(gpu_ids):
        g = find_gpu(gid)
        usable_gib = g.memory_bytes * (1 - headroom) / GIB
        rows.append({"gpu": g.id, "label": f"{g.id}: {usable_gib:.1f} GiB usable", "GiB": usable_gib})
    return sorted(rows, key=lambda r: r["GiB"])


# --- the catalog table --------------------------------------------------------------------------


def gpu_table(inputs: Inputs) -> list[dict]:
    """Every catalog GPU with the setup's device peak on it, fit and headroom (GiB) and its price,
    fitting GPUs first, then by memory. Raises VramplanError when the setup itself is invalid."""
    setup = inputs.setup()
    rows = []
    for g in list_gpus():
        v = _estimate(inputs.model, setup, g.id, inputs.headroom)
        assert v.verdict is not None
        rows.append({
            "gpu": g.id,
            "name": g.name,
            "memory GiB": round(g.memory_bytes / GIB, 1),
            "device peak GiB": round(shown_memory(v).device_peak_bytes / GIB, 2),
            "fits": v.verdict.fits,
            "headroom GiB": round(v.verdict.headroom_bytes / GIB, 2),
            "$/GPU-hour": g.price_usd_per_hour,
        })  # fmt: skip
    rows.sort(key=lambda r: (not r["fits"], r["memory GiB"], r["gpu"]))
    return rows


# --- inverse queries ----------------------------------------------------------------------------


def largest_fitting(inputs: Inputs, field: str, upper: int) -> int | None:
    """The largest value of `field` (an integer input) in 1..upper with which the setup fits its
    GPU, by binary search (memory grows with batch and sequence); None when even 1 does not fit."""
    if not fits(inputs.with_(**{field: 1})):
        return None
    lo, hi = 1, upper  # fits(lo) holds; find the last fitting value
    if fits(inputs.with_(**{field: hi})):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(inputs.with_(**{field: mid})):
            lo = mid
        else:
            hi = mid
    return lo


def largest_batch(inputs: Inputs) -> int | None:
    return largest_fitting(inputs, "batch_size", MAX_BATCH_SIZE)


def largest_seq(inputs: Inputs) -> int | None:
    return largest_fitting(inputs, "seq_len", MAX_SEQ_LEN)


# --- suggestions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    change: str
    saves_bytes: int
    fits: bool


def _candidates(i: Inputs) -> list[tuple[str, Inputs]]:
    """One-change alternatives, smallest change first."""
    out: list[tuple[str, Inputs]] = []
    if not i.grad_ckpt:
        out.append(("turn on gradient checkpointing", i.with_(grad_ckpt=True)))
    if not i.expandable_segments:
        out.append(("turn on expandable segments (PYTORCH_CUDA_ALLOC_CONF)", i.with_(expandable_segments=True)))
    if i.batch_size > 1:
        out.append((f"micro-batch 1 with grad-accum {i.grad_accum * i.batch_size} (same effective batch)",
                    i.with_(batch_size=1, grad_accum=i.grad_accum * i.batch_size)))  # fmt: skip
    for opt in ("adamw_8bit", "paged_adamw_8bit"):
        if i.optimizer != opt:
            out.append((f"optimizer {opt}", i.with_(optimizer=opt)))
    if i.method == "full":
        out.append(("LoRA r16 instead of full fine-tuning", i.with_(method="lora", lora_rank=16)))
    if i.method != "qlora":
        out.append(("QLoRA (nf4) r16", i.with_(method="qlora", quant="nf4", lora_rank=min(i.lora_rank, 16))))
    if i.method != "full" and i.lora_targets == "all-linear":
        out.append(("LoRA on q_proj,v_proj only", i.with_(lora_targets="q_proj,v_proj")))
    if i.seq_len > 256:
        out.append((f"sequence length {i.seq_len // 2}", i.with_(seq_len=i.seq_len // 2)))
    return out


def suggestions(inputs: Inputs) -> list[Suggestion]:
    """What to change so the setup fits: each one-change alternative that saves memory, smallest
    change first, with the device-peak bytes it saves and whether that change alone makes it fit."""
    base = shown_memory(estimate(inputs)).device_peak_bytes
    out = []
    for change, alt in _candidates(inputs):
        try:
            peak = shown_memory(estimate(alt)).device_peak_bytes
        except VramplanError:
            continue
        if peak < base:
            out.append(Suggestion(change, base - peak, fits(alt)))
    return out


# --- uploads ------------------------------------------------------------------------------------


@cache
def upload_dir() -> Path:
    """Where accepted uploads are written for `estimate_for` to read as config paths: a private
    temporary folder (mode 0700), one per process."""
    return Path(tempfile.mkdtemp(prefix="vramplan-app-uploads-"))


def stage_upload(data: bytes, filename: str) -> str:
    """Check an uploaded config.json (JSON object of a supported causal LM, read by parse_config:
    shapes only, nothing executed, auto_map ignored) and write it where `estimate_for` reads config
    paths. Returns that path. Raises ConfigError with a one-line reason."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ConfigError(f"{filename}: {len(data)} bytes is too large for a config.json (limit {MAX_UPLOAD_BYTES})")
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{filename}: not UTF-8 text; upload a Hugging Face config.json") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{filename}: not valid JSON ({err.msg} at line {err.lineno})") from None
    stem = Path(filename).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem if stem and stem != "config" else "uploaded")[:64]
    spec = parse_config(config, name=name, source=f"upload: {filename}")
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = upload_dir() / digest / (spec.name or "uploaded") / "config.json"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return str(target)


# --- measured evidence --------------------------------------------------------------------------


@dataclass(frozen=True)
class Accuracy:
    """Leave-one-out predicted vs measured over the shipped runs (device/reserved/allocated totals)."""

    rows: list[dict]
    stats: dict[str, dict]
    skipped: list[tuple[str, str]]


def accuracy() -> Accuracy:
    """Each shipped run predicted with a calibration fitted on the other runs. Takes ~2 s: cache it."""
    v = leave_one_out(load_runs(shipped_runs_dir()))
    rows = []
    for c in v.comparisons:
        rows.append({
            "model": c.model,
            "setup": c.summary,
            "measured device GiB": round((c.measured["device"] or 0) / GIB, 2) or None,
            "predicted device GiB": round(c.predicted["device"] / GIB, 2),
            **{f"{t} error %": None if (e := c.error(t)) is None else round(100 * e, 1) for t in reversed(TOTALS)},
        })  # fmt: skip
    return Accuracy(rows=rows, stats={t: v.stats(t) for t in TOTALS}, skipped=list(v.skipped))
