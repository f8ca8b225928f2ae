"""What the Streamlit what-if page (app.py) shows, as plain functions: no streamlit, no torch.

The page turns its widgets into `Inputs`, then asks this module for the estimate on the chosen GPU,
the chart rows, the catalog table, the largest batch and sequence that fit, suggestions and the
measured evidence. Everything goes through the public API: `vramplan.api` (estimate_for, plan_for,
fit_for), `vramplan.models`, `gpu_catalog`, `vramplan.calibration`. Answers are memoized per input,
so moving a widget back and forth costs nothing; a fresh interaction takes ~0.1 s.
"""

import hashlib
import re
import tempfile
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from pathlib import Path

from gpu_catalog import find_gpu

from . import api
from .atomic import replace_atomically
from .calibration import leave_one_out
from .setup_flags import LORA_DEFAULTS, build_setup
from .errors import ConfigError, VramplanError
from .configs import read_config_bytes, resolve
from .models import list_models, parse_config, resolve_model
from .models.local import parse_json_text
from .planner import SINGLE, FitResult, Plan, PlanOption, Suggestion
from .runs import load_runs, shipped_runs_dir
from .specs import Estimate, MemoryBreakdown, TrainingSetup
from .validation import TOTALS

GIB = 1024**3
#: an uploaded config.json larger than this is refused (real ones are a few KiB)
MAX_UPLOAD_BYTES = 1024 * 1024


_PLAN_FIELDS = ("max_gpus", "dataset_tokens", "dataset_examples", "epochs", "sort")


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
    liger: bool = False
    packing: bool = False
    num_gpus: int = 1
    parallel: str | None = None
    gpu: str = "rtx-4090"
    headroom: float = 0.05
    #: `vramplan plan` inputs: options of 1, 2, 4 .. max_gpus GPUs, dataset size for time and cost, ranking
    max_gpus: int = 8
    dataset_tokens: int | None = None
    dataset_examples: int | None = None
    epochs: float | None = None
    sort: str = "cost"

    def setup(self) -> TrainingSetup:
        """The validated TrainingSetup. Raises VramplanError naming the bad input."""
        fields = asdict(self)
        for key in ("model", "gpu", "headroom", *_PLAN_FIELDS):
            fields.pop(key)
        if self.method != "qlora":
            fields["quant"] = None
        if self.method == "full":  # the LoRA widgets keep their values while hidden
            fields.update(LORA_DEFAULTS)
        if self.num_gpus == 1:
            fields["parallel"] = None
        if self.stack == "unsloth":
            fields["liger"] = False  # Unsloth brings its own kernels (the checkbox is disabled)
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


# --- chart --------------------------------------------------------------------------------------


#: chart groups of the breakdown terms (anything else is "activations & transients")
_STATE_TERMS = ("optimizer_states", "gradients", "optimizer_step_temporaries", "tied_embedding_grad_accumulation",
                "embedding_grad_accumulation")
_RUNTIME_TERMS = ("cuda_workspace", "allocator_whole_blocks", "allocator fragmentation",
                  "outside allocator (paged states)", "CUDA context")
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
    terms = _without_negative_terms(list(memory.breakdown.items()))
    terms.append(("allocator fragmentation", memory.fragmentation_bytes))
    if memory.outside_allocator_bytes:
        terms.append(("outside allocator (paged states)", memory.outside_allocator_bytes))
    terms.append(("CUDA context", memory.cuda_context_bytes))
    terms = [(name, nbytes) for name, nbytes in terms if nbytes]
    terms.sort(key=lambda t: GROUPS.index(term_group(t[0])))  # stable: keeps the estimator's order in a group
    return [{"term": name, "group": term_group(name), "GiB": nbytes / GIB, "order": i} for i, (name, nbytes) in enumerate(terms)]


def _without_negative_terms(terms: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The breakdown's terms with a negative one (a sharded rank whose simulated sequence holds less at its peak than the
    closed-form terms add up to: allocator_sharded_rank) spread over the others in proportion, so that the stacked bar
    keeps the allocated peak's height without a segment below zero."""
    short = -sum(n for _, n in terms if n < 0)
    if not short:
        return terms
    positive = [(name, n) for name, n in terms if n > 0]
    scale = 1 - short / sum(n for _, n in positive)
    return [(name, n * scale) for name, n in positive]


def capacity_lines(gpu_ids: list[str], headroom: float) -> list[dict]:
    """One row per GPU: its usable memory (capacity x (1 - headroom)) in GiB, for a horizontal rule."""
    rows = []
    for gid in dict.fromkeys(gpu_ids):
        g = find_gpu(gid)
        usable_gib = g.memory_bytes * (1 - headroom) / GIB
        rows.append({"gpu": g.id, "label": f"{g.id}: {usable_gib:.1f} GiB usable", "GiB": usable_gib})
    return sorted(rows, key=lambda r: r["GiB"])


# --- plan: the catalog table, the best options, suggestions ----------------------------------------


@lru_cache(maxsize=512)
def _plan(model: str, setup: TrainingSetup, gpus: str, max_gpus: int, tokens: int | None, examples: int | None,
          epochs: float | None, sort: str, headroom: float) -> Plan:  # fmt: skip
    return api.plan_for(model, setup, gpus=gpus, max_gpus=max_gpus, dataset_tokens=tokens, dataset_examples=examples,
                        epochs=epochs, sort=sort, headroom=headroom)  # fmt: skip


def plan(inputs: Inputs, gpus: str = "all") -> Plan:
    """`vramplan plan` for the inputs over `gpus` ("all" or a comma list), with 1, 2, 4 .. max(max_gpus,
    num_gpus) GPUs per option, best first. Raises VramplanError."""
    i = inputs
    return _plan(i.model, i.setup(), gpus, max(i.max_gpus, i.num_gpus), i.dataset_tokens, i.dataset_examples,
                 i.epochs, i.sort, i.headroom)  # fmt: skip


def option_row(o: PlanOption) -> dict:
    """One plan option as a table row (GiB, hours and dollars; None where unknown)."""
    return {
        "gpu": o.gpu.id,
        "GPUs": o.num_gpus,
        "parallel": o.parallel,
        "fits": o.fits,
        "memory GiB": round(o.gpu.memory_bytes / GIB, 1),
        "peak per GPU GiB": round(o.memory.device_peak_bytes / GIB, 2),
        "headroom GiB": round(o.headroom_bytes / GIB, 2),
        "tokens/s": None if o.tokens_per_s is None else round(o.tokens_per_s),
        "step s": None if o.step_time_s is None else round(o.step_time_s, 3),
        "time h": None if o.wall_time_s is None else round(o.wall_time_s / 3600, 2),
        "cost $": None if o.cost_usd is None else round(o.cost_usd, 2),
        "$/GPU-hour": o.gpu.price_usd_per_hour,
        "why not": o.why_not,
    }


def gpu_table(inputs: Inputs) -> list[dict]:
    """Every catalog GPU at the setup's own GPU count and strategy (fit, headroom, speed, time, cost),
    in the plan's order: fitting first, best by the chosen sort. Raises VramplanError."""
    parallel = inputs.parallel if inputs.num_gpus > 1 else SINGLE
    return [option_row(o) for o in plan(inputs).options if o.num_gpus == inputs.num_gpus and o.parallel == parallel]


def best_options(inputs: Inputs, limit: int = 10) -> list[dict]:
    """The plan's first `limit` options over every GPU, count and strategy. Raises VramplanError."""
    return [option_row(o) for o in plan(inputs).options[:limit]]


def suggestions(inputs: Inputs) -> tuple[Suggestion, ...]:
    """The planner's single changes that lower the peak on the chosen GPU, smallest change first (empty
    when the setup fits one such GPU). Raises VramplanError."""
    return plan(inputs, gpus=inputs.gpu).suggestions


# --- inverse queries ----------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _fit(model: str, setup: TrainingSetup, gpu: str, solve: str, headroom: float) -> FitResult:
    return api.fit_for(model, setup, gpu=gpu, solve=solve, headroom=headroom)


def largest(inputs: Inputs, solve: str) -> FitResult:
    """`vramplan fit --solve batch-size|seq-len|lora-rank` on the chosen GPU. Raises VramplanError."""
    return _fit(inputs.model, inputs.setup(), inputs.gpu, solve, inputs.headroom)


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
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{filename}: not UTF-8 text; upload a Hugging Face config.json") from None
    config = parse_json_text(text, filename)
    stem = Path(filename).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem if stem and stem != "config" else "uploaded")[:64]
    spec = parse_config(config, name=name, source=f"upload: {filename}")
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = upload_dir() / digest / (spec.name or "uploaded") / "config.json"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(target, text)  # a unique temporary name: concurrent uploads of one file do not collide
    return str(target)


#: Inputs fields a training config fills (each is the key of its sidebar widget)
CONFIG_FIELDS = ("method", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "quant", "double_quant",
                 "seq_len", "batch_size", "grad_accum", "grad_ckpt", "optimizer", "dtype", "attn", "stack", "liger",
                 "packing")  # fmt: skip


def config_values(data: bytes, filename: str, current: Inputs) -> tuple[dict[str, object], tuple[str, ...]]:
    """An uploaded training config (Axolotl / LLaMA-Factory YAML, TrainingArguments / SFTConfig JSON, PEFT
    adapter_config.json) -> (the Inputs fields it sets, with `model` when it names a catalog model; what
    reading it assumed). Fields the file leaves open keep `current`. Raises VramplanError (one line)."""
    reading = read_config_bytes(data, filename)
    resolved = resolve({**asdict(current), "model": None if reading.model else current.model}, (), readings=[reading])
    values: dict[str, object] = {k: resolved.params[k] for k in CONFIG_FIELDS if resolved.params[k] is not None}
    notes = list(resolved.assumptions)
    if reading.model:
        name = resolved.model if resolved.model in {m.name for m in list_models()} else _catalog_name(resolved.model)
        if name is not None:
            values["model"] = name
        else:
            notes.append(f"{filename} names {reading.model}, not in the catalog: the model chosen in the sidebar is used")
    return values, tuple(notes)


def _catalog_name(model: str) -> str | None:
    """The catalog name of a catalog name, alias or HF id; None for anything else."""
    try:
        spec = resolve_model(model)
    except VramplanError:
        return None
    return spec.name if spec.source.startswith("catalog") else None


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
