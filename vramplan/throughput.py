"""Training speed: FLOPs per token by method, step time on a GPU, and its check against measured runs.

step time (one optimizer step, per GPU) =
    FLOPs of the step / (dense peak x efficiency[method family])          GPU-bound matmuls and attention
  + grad_accum x layers x (layer_overhead_s + recompute_layer_overhead_s if checkpointing)
  + grad_accum x LoRA modules x adapter_overhead_s                        kernel launches, Python hooks
  + grad_accum x layers x passes x (norm modules x norm_overhead_s + experts x expert_overhead_s)
  + step_overhead_s + bnb optimizer time + optimizer memory traffic / bandwidth
  + exposed communication (multi-GPU)
FLOPs per token (N = matmul weights a token passes through, lm_head included; experts by top_k / E):
  full  6N (forward 2N, backward 4N: input and weight gradients);
  LoRA / QLoRA 4N (no weight gradients for the frozen base) + 6 x active adapter params;
  checkpointing recomputes the decoder layers' forward (+2N without lm_head);
  attention: forward 4 x s_ctx x q_width per layer (QK^T and AV), backward 2x that, recomputed too;
  s_ctx = s/2 for causal flash/SDPA kernels, s for eager. QLoRA's dequantization is not a FLOP: it is in
  efficiency_qlora (fitted separately).
The ten constants are fitted (bounded least squares on relative error) from the measured H100 and H200 runs and shipped in
calibration_data/throughput.json; `python -m vramplan.throughput` refits it and prints the leave-one-out error.
"""

import re
import statistics
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import VramplanError
from .memory.adapters import adapter_pairs
from .memory.parallel import packed_4bit_bytes
from .memory.trainable import trainable_groups
from .models.params import linear_shapes, param_counts
from .specs import Calibration, GpuSpec, MeasuredRun, ModelSpec, TrainingSetup

THROUGHPUT_FILE = "throughput.json"

#: constant -> (prior, low, high). Efficiency: fraction of the dense peak; overheads in seconds.
PRIORS: dict[str, tuple[float, float, float]] = {
    "efficiency_full": (0.5, 0.05, 0.8),
    "efficiency_lora": (0.5, 0.05, 0.8),
    "efficiency_qlora": (0.3, 0.05, 0.8),
    "layer_overhead_s": (0.003, 0.0, 0.02),  # per decoder layer per micro-batch (forward + backward)
    "recompute_layer_overhead_s": (0.003, 0.0, 0.02),  # per checkpointed layer per micro-batch
    "adapter_overhead_s": (0.0007, 0.0, 0.005),  # per LoRA-wrapped module per micro-batch
    "norm_overhead_s": (0.0005, 0.0, 0.01),  # per norm module per pass (forward, backward, recompute) per micro-batch
    "expert_overhead_s": (0.00003, 0.0, 0.002),  # per MoE expert per layer per pass per micro-batch
    "step_overhead_s": (0.02, 0.0, 0.2),  # per optimizer step (Trainer loop, grad clipping, zero_grad)
    "bnb_optimizer_s_per_gparam": (0.02, 0.0, 0.2),  # bitsandbytes optimizers, per 1e9 trainable params
}
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
#: optimizer-step memory traffic per trainable param, in units of the param itemsize: read p, g and the clipping
#: norm's read of g, write p (4) + exp_avg/exp_avg_sq read and write (4 x state itemsize)
OPTIMIZER_PARAM_PASSES = 4
STATE_ITEMSIZE = {"adamw_torch_fused": None, "adamw_torch": None, "adamw_8bit": 1, "paged_adamw_8bit": 1,
                  "paged_adamw_32bit": 4, "adafactor": 0, "sgd": 0}  # fmt: skip  (None: the param itemsize)
#: NCCL reaches about this fraction of the link rate as bus bandwidth (nccl-tests busbw vs NVLink/PCIe peak)
NCCL_BUS_EFFICIENCY = 0.8
#: PCIe x16 rate per direction in GB/s by generation (PCI-SIG: 8/16/32 GT/s per lane, 128b/130b)
PCIE_X16_GBPS = {3: 15.75, 4: 31.5, 5: 63.0}
#: backward share of a micro-batch's compute: the window DDP overlaps gradient all-reduce with (4N of 6N)
BACKWARD_SHARE = 2 / 3


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step on each GPU, by cause; tokens counts every GPU's micro-batches."""

    compute_s: float
    overhead_s: float
    optimizer_s: float
    communication_s: float
    tokens_per_step: int

    @property
    def total_s(self) -> float:
        return self.compute_s + self.overhead_s + self.optimizer_s + self.communication_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.total_s


def flops_per_token(model: ModelSpec, setup: TrainingSetup) -> dict[str, float]:
    """Training FLOPs per token by part (see the module docstring); their sum is the total."""
    counts = param_counts(model)
    body = sum(s.count * s.in_features * s.out_features for s in linear_shapes(model) if s.role != "lm_head")
    if model.moe is not None:
        body += counts["experts"] * model.moe.top_k / model.moe.num_experts
    head = model.vocab_size * model.hidden_size
    s_ctx = setup.seq_len if setup.attn == "eager" else setup.seq_len / 2
    attention_fwd = 4 * s_ctx * model.q_width * model.num_layers
    full = setup.method == "full"
    parts = {
        "forward": 2 * (body + head),
        "backward": (4 if full else 2) * (body + head),
        "attention": 3 * attention_fwd,
        "recompute": 2 * body + attention_fwd if setup.grad_ckpt else 0.0,
        "adapters": 6 * _active_adapter_params(model, setup),
    }
    return parts


def _active_adapter_params(model: ModelSpec, setup: TrainingSetup) -> float:
    if setup.lora is None:
        return 0.0
    total = 0.0
    for p in adapter_pairs(model, setup.lora):
        share = model.moe.top_k / model.moe.num_experts if model.moe and "experts" in p.name else 1.0
        total += p.params * share
    return total


def peak_flops(gpu: GpuSpec, setup: TrainingSetup) -> float | None:
    """Dense tensor-core FLOP/s for the compute dtype (fp16 autocast for fp16 weights, else bf16); None if unknown."""
    tflops = gpu.fp16_tflops if setup.dtype == "fp16" else gpu.bf16_tflops
    return tflops * 1e12 if tflops else None


def link_gbps(gpu: GpuSpec) -> float:
    """GPU-to-GPU bandwidth per direction: NVLink from the catalog, else the host PCIe generation (x16)."""
    if gpu.gpu_gpu_gbps:
        return gpu.gpu_gpu_gbps
    match = re.search(r"PCIe (\d)\.0", gpu.interconnect)
    return PCIE_X16_GBPS.get(int(match.group(1)) if match else 4, PCIE_X16_GBPS[4])


@dataclass(frozen=True)
class StepWork:
    """What one GPU does per optimizer step, independent of the GPU it runs on."""

    flops: float
    #: overhead feature -> multiplier of its constant
    overheads: dict[str, float]
    optimizer_bytes: int
    grad_bytes: int
    trainable_params: int
    #: bytes an all-gather of every parameter moves (bf16; QLoRA's quantized weights packed)
    gathered_bytes: int


def step_work(model: ModelSpec, setup: TrainingSetup) -> StepWork:
    """FLOPs, launch-overhead counts and bytes of one GPU's optimizer step."""
    groups = trainable_groups(model, setup)
    trainable = sum(g.params for g in groups)
    micro = setup.grad_accum
    # small-batch steps are launch-bound: eager norms launch several kernels each (RMSNorm: cast, pow, mean, rsqrt,
    # mul, mul and their backward), an eager MoE block a few per expert; so kernels, and time, grow with their count
    passes = 3 if setup.grad_ckpt else 2
    norms = model.norms_per_layer + (2 if model.qk_norm else 0)
    overheads = {
        "layer_overhead_s": micro * model.num_layers,
        "norm_overhead_s": micro * model.num_layers * norms * passes,
        "expert_overhead_s": micro * model.num_layers * model.moe.num_experts * passes if model.moe else 0.0,
        "recompute_layer_overhead_s": micro * model.num_layers if setup.grad_ckpt else 0.0,
        "adapter_overhead_s": micro * sum(p.count for p in adapter_pairs(model, setup.lora)) if setup.lora else 0.0,
        "step_overhead_s": 1.0,
        "bnb_optimizer_s_per_gparam": trainable / 1e9 if setup.optimizer in BNB_OPTIMIZERS else 0.0,
    }
    state = STATE_ITEMSIZE[setup.optimizer]
    optimizer_bytes = sum(
        g.params * (OPTIMIZER_PARAM_PASSES * g.itemsize + 4 * (g.itemsize if state is None else state)) for g in groups
    )
    total = sum(param_counts(model).values())
    gathered = 2 * total
    if setup.method == "qlora":
        quantized = sum(s.count * s.in_features * s.out_features for s in linear_shapes(model) if s.role != "lm_head")
        gathered = packed_4bit_bytes(model) + 2 * (total - quantized)
    return StepWork(
        flops=setup.batch_size * setup.seq_len * micro * sum(flops_per_token(model, setup).values()),
        overheads=overheads,
        optimizer_bytes=optimizer_bytes,
        grad_bytes=sum(g.params * g.itemsize for g in groups),
        trainable_params=trainable,
        gathered_bytes=gathered,
    )


def _value(constants: dict[str, float], name: str) -> float:
    """Multiplier per feature unit: 1/efficiency for the efficiencies, the constant itself otherwise."""
    v = constants.get(name, PRIORS[name][0])
    return 1.0 / v if name.startswith("efficiency_") else v


def step_time(
    model: ModelSpec,
    setup: TrainingSetup,
    gpu: GpuSpec,
    constants: dict[str, float] | None = None,
    work: StepWork | None = None,
) -> StepTime | None:
    """Predicted seconds per optimizer step on each of setup.num_gpus GPUs; None when the GPU's peak is unknown.
    `work` (step_work(model, setup)) may be passed in to time one setup on many GPUs."""
    peak = peak_flops(gpu, setup)
    if peak is None:
        return None
    constants = constants if constants is not None else throughput_constants()
    work = work or step_work(model, setup)
    compute_s = work.flops / peak * _value(constants, f"efficiency_{setup.method}")
    overhead_s = sum(x * _value(constants, k) for k, x in work.overheads.items())
    n = setup.num_gpus
    optimizer_s = work.optimizer_bytes / (gpu.bandwidth_gbps * 1e9)
    comm_s = 0.0
    if n > 1:
        optimizer_s /= 1 if setup.parallel == "ddp" else n
        comm_s = communication_s(work, setup, gpu, compute_s / setup.grad_accum)
    tokens = n * setup.batch_size * setup.seq_len * setup.grad_accum
    return StepTime(compute_s, overhead_s, optimizer_s, comm_s, tokens)


def communication_s(work: StepWork, setup: TrainingSetup, gpu: GpuSpec, micro_compute_s: float) -> float:
    """Exposed collective time per optimizer step (ring algorithms, bus bandwidth = link x NCCL_BUS_EFFICIENCY).

    ddp: all-reduce of the gradients, 2(n-1)/n x G, once per step (no_sync while accumulating), overlapped with
         the last micro-batch's backward. zero2: reduce-scatter bf16 gradients + all-gather bf16 parameters, same.
    fsdp/zero3: per micro-batch all-gather of every parameter in forward and in backward plus reduce-scatter of the
         bf16 gradients, (n-1)/n x (2W + G), prefetched under the whole micro-batch's compute.
    """
    n = setup.num_gpus
    bus = link_gbps(gpu) * 1e9 * NCCL_BUS_EFFICIENCY
    ring = (n - 1) / n
    if setup.parallel == "ddp":
        return max(0.0, 2 * ring * work.grad_bytes / bus - BACKWARD_SHARE * micro_compute_s)
    if setup.parallel == "zero2":
        return max(0.0, ring * 4 * work.trainable_params / bus - BACKWARD_SHARE * micro_compute_s)
    per_micro = ring * (2 * work.gathered_bytes + 2 * work.trainable_params) / bus
    return setup.grad_accum * max(0.0, per_micro - micro_compute_s)


# --- calibration: fit, leave-one-out, shipped file ------------------------------------------------------------


def throughput_path() -> Path:
    return Path(str(resources.files("vramplan") / "calibration_data" / THROUGHPUT_FILE))


@lru_cache(maxsize=1)
def throughput_constants() -> dict[str, float]:
    """The shipped fitted constants (priors where the file lacks one or does not exist)."""
    constants = {k: v[0] for k, v in PRIORS.items()}
    path = throughput_path()
    if path.is_file():
        constants.update(Calibration.model_validate_json(path.read_text()).constants)
    return constants


def measured_step_s(run: MeasuredRun) -> float | None:
    """Mean of the steady steps (>= 1; step 0 creates optimizer states and warms kernels)."""
    steady = run.measurements.step_times_s[1:]
    return statistics.fmean(steady) if steady else None


def speed_runs(runs: list[MeasuredRun]) -> list[MeasuredRun]:
    """Single-GPU runs with steady step times, not OOM, not under a memory cap, on a catalog GPU with a peak
    (DeepSpeed runs at world size 1 are left out: offload steps are host-bound, not in this model; so are
    Unsloth's: its compiled blocks and fused kernels ran 8-58 % faster than this model of the hf/TRL step on
    the H200, and one stack's six runs cannot fit a factor of its own)."""
    from gpu_catalog import find_gpu

    out = []
    for r in runs:
        m = r.measurements
        if (m.oom or m.memory_cap_bytes is not None or measured_step_s(r) is None or r.setup.num_gpus != 1
                or r.setup.parallel or r.setup.stack == "unsloth"):
            continue
        try:
            gpu = find_gpu(r.environment.gpu_id or r.environment.gpu_name or "")
        except VramplanError:  # an unknown GPU cannot calibrate speed
            continue
        if peak_flops(gpu, r.setup):
            out.append(r)
    return out


@dataclass(frozen=True)
class _Row:
    run_id: str
    features: dict[str, float]
    fixed_s: float
    measured_s: float


def _rows(runs: list[MeasuredRun]) -> list[_Row]:
    from gpu_catalog import find_gpu

    from .models import resolve_model

    rows = []
    for r in speed_runs(runs):
        gpu = find_gpu(r.environment.gpu_id or r.environment.gpu_name or "")
        peak = peak_flops(gpu, r.setup) or 0.0
        work = step_work(resolve_model(r.model_source or r.model), r.setup)
        features = {f"efficiency_{r.setup.method}": work.flops / peak, **work.overheads}
        fixed = work.optimizer_bytes / (gpu.bandwidth_gbps * 1e9)
        rows.append(_Row(r.run_id, features, fixed, measured_step_s(r) or 0.0))
    return rows


def fit_throughput(runs: list[MeasuredRun], *, version: str | None = None) -> Calibration:
    """Bounded least squares of the relative step-time error over the runs; constants without data keep priors."""
    rows = _rows(runs)
    constants = _fit_rows(rows)
    return Calibration(
        version=version or f"throughput-{len(rows)}runs",
        constants=constants,
        bounds={k: (lo, hi) for k, (_, lo, hi) in PRIORS.items()},
        fitted_on=tuple(r.run_id for r in rows),
        notes="step time = FLOPs / (peak x efficiency) + overheads; fitted by vramplan.throughput.fit_throughput",
    )


def _fit_rows(rows: list[_Row]) -> dict[str, float]:
    names = list(PRIORS)
    # the model is linear in x = (1/efficiency, overheads): minimise sum((a.x + fixed) / measured - 1)^2
    a = [[r.features.get(k, 0.0) / r.measured_s for k in names] for r in rows]
    b = [1.0 - r.fixed_s / r.measured_s for r in rows]
    bounds = [(1 / hi, 1 / lo) if k.startswith("efficiency_") else (lo, hi) for k, (_, lo, hi) in PRIORS.items()]
    start = [_value({}, k) for k in names]
    x = _bounded_least_squares(a, b, bounds, start)
    return {k: (1.0 / v if k.startswith("efficiency_") else v) for k, v in zip(names, x)}


def _bounded_least_squares(a: list[list[float]], b: list[float], bounds, start: list[float], sweeps: int = 3000):
    """min |a x - b|^2 with lo <= x <= hi by cyclic coordinate descent on the normal equations (convex, small)."""
    n = len(start)
    gram = [[sum(row[i] * row[j] for row in a) for j in range(n)] for i in range(n)]
    rhs = [sum(row[i] * bi for row, bi in zip(a, b)) for i in range(n)]
    x = list(start)
    for _ in range(sweeps):
        moved = 0.0
        for i in range(n):
            if gram[i][i] <= 0.0:
                continue  # no run informs this constant: keep its prior
            lo, hi = bounds[i]
            r = rhs[i] - sum(gram[i][j] * x[j] for j in range(n) if j != i)
            new = min(max(r / gram[i][i], lo), hi)
            moved = max(moved, abs(new - x[i]) / max(abs(x[i]), 1e-12))
            x[i] = new
        if moved < 1e-10:
            break
    return x


@dataclass(frozen=True)
class StepTimeCheck:
    run_id: str
    measured_s: float
    predicted_s: float

    @property
    def error(self) -> float:
        return self.predicted_s / self.measured_s - 1.0


def leave_one_out_step_times(runs: list[MeasuredRun]) -> list[StepTimeCheck]:
    """Each usable run predicted with constants fitted on all the other runs."""
    rows = _rows(runs)
    checks = []
    for i, row in enumerate(rows):
        constants = _fit_rows(rows[:i] + rows[i + 1 :])
        predicted = row.fixed_s + sum(x * _value(constants, k) for k, x in row.features.items())
        checks.append(StepTimeCheck(row.run_id, row.measured_s, predicted))
    return checks


def median_abs_error(checks: list[StepTimeCheck]) -> float:
    return statistics.median(abs(c.error) for c in checks)


if __name__ == "__main__":  # refit the shipped constants and report the leave-one-out error
    import json

    from .runs import load_runs, shipped_runs_dir

    shipped = load_runs([shipped_runs_dir()])
    timed = speed_runs(shipped)
    families = sorted({r.environment.gpu_id or "unknown" for r in timed})
    cal = fit_throughput(shipped, version=f"throughput-{'+'.join(families)}-{len(timed)}runs")
    throughput_path().write_text(json.dumps(cal.model_dump(mode="json"), indent=2) + "\n")
    loo = leave_one_out_step_times(shipped)
    print(json.dumps(cal.constants, indent=2))
    print(f"leave-one-out median |step time error| over {len(loo)} runs: {median_abs_error(loo):.1%}")
