"""Training speed: FLOPs per token by method, step time on a GPU, and its check against measured runs.

step time (one optimizer step, per GPU) =
    device + host - host_device_overlap x min(device, host)                  the two run side by side, in part
  + step_overhead_s + bnb optimizer time + optimizer memory traffic / bandwidth
  + exposed communication (multi-GPU)
device (what the GPU executes) =
    FLOPs of the step / (dense peak x efficiency_matmul)                     matmuls and attention
  + adapter elements x adapter_traffic_bytes / bandwidth                     LoRA's dropout, A, B, scale and add
  + dequantized weights x dequant_bytes_per_weight / bandwidth               QLoRA: bitsandbytes, per pass
host (what Python launches, per micro-batch) =
    layers x (layer_overhead_s + recompute_layer_overhead_s if checkpointing)
  + LoRA modules x adapter_overhead_s
  + layers x passes x (norm modules x norm_overhead_s + experts x expert_overhead_s)
FLOPs per token (N = matmul weights a token passes through, lm_head included; experts by top_k / E):
  full  6N (forward 2N, backward 4N: input and weight gradients);
  LoRA / QLoRA 4N (no weight gradients for the frozen base) + 6 x active adapter params;
  checkpointing recomputes the decoder layers' forward (+2N without lm_head);
  attention: forward 4 x s_ctx x q_width per layer (QK^T and AV), backward 2x that, recomputed too;
  s_ctx = s/2 for causal flash/SDPA kernels, s for eager.
One matmul efficiency for every method: LoRA's and QLoRA's matmuls are the same bf16 GEMMs as full fine-tuning's
(QLoRA's weights are dequantized to bf16 first); what makes them slower per FLOP is work that is not a FLOP:
the adapters' elementwise kernels read and write every adapter input and output element once per pass
(forward, backward, recompute), so they scale with tokens x (in + out) and with bandwidth; bitsandbytes
dequantizes every 4-bit weight once per pass, whatever the token count (an elementwise kernel: with its constant
fitted per GPU family, 2026-12-03, the H200's time per weight came out 0.64 of the H100's, their bandwidth ratio
0.70). The fit holds efficiency_matmul at its 0.8 bound: the time a step takes beyond its FLOPs at 80 % of the peak
is these memory-bound and launch-bound terms.
Eager PyTorch launches kernels asynchronously, so the host's launch time and the GPU's execution overlap;
host_device_overlap is the fraction of the smaller of the two that hides under the larger (0: in series, 1: the
step is the larger of the two).
The eleven constants are fitted (bounded least squares on relative error, Levenberg-Marquardt) from the measured
H100 and H200 runs and shipped in calibration_data/throughput.json; `python -m vramplan.throughput` refits it and
prints the leave-one-out error.
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
from .models.params import linear_shapes, param_counts, quantizable_params
from .specs import Calibration, GpuSpec, MeasuredRun, ModelSpec, TrainingSetup

THROUGHPUT_FILE = "throughput.json"

#: constant -> (prior, low, high). Efficiency: fraction of the dense peak; overheads in seconds.
PRIORS: dict[str, tuple[float, float, float]] = {
    # device: what the GPU executes
    "efficiency_matmul": (0.6, 0.05, 0.8),  # of the dense peak; 0.8 about what cuBLAS bf16 GEMMs reach
    "adapter_traffic_bytes": (20.0, 0.0, 200.0),  # per adapter input + output element per pass (bf16 r/w, masks)
    "dequant_bytes_per_weight": (20.0, 0.0, 300.0),  # memory traffic per 4-bit weight per pass (effective)
    # host: what Python launches
    "layer_overhead_s": (0.003, 0.0, 0.02),  # per decoder layer per micro-batch (forward + backward)
    "recompute_layer_overhead_s": (0.003, 0.0, 0.02),  # per checkpointed layer per micro-batch
    "adapter_overhead_s": (0.0007, 0.0, 0.005),  # per LoRA-wrapped module per micro-batch
    "norm_overhead_s": (0.0005, 0.0, 0.01),  # per norm module per pass (forward, backward, recompute) per micro-batch
    "expert_overhead_s": (0.00003, 0.0, 0.002),  # per MoE expert per layer per pass per micro-batch
    # in series with both
    "step_overhead_s": (0.02, 0.0, 0.2),  # per optimizer step (Trainer loop, grad clipping, zero_grad)
    "bnb_optimizer_s_per_gparam": (0.02, 0.0, 0.2),  # bitsandbytes optimizers, per 1e9 trainable params
    "host_device_overlap": (0.5, 0.0, 1.0),  # fraction of min(device, host) that runs concurrently
}
#: the constants of each part of the step (the rest of PRIORS: host_device_overlap)
DEVICE_TERMS = ("efficiency_matmul", "adapter_traffic_bytes", "dequant_bytes_per_weight")
HOST_TERMS = ("layer_overhead_s", "recompute_layer_overhead_s", "adapter_overhead_s", "norm_overhead_s",
              "expert_overhead_s")  # fmt: skip
SERIAL_TERMS = ("step_overhead_s", "bnb_optimizer_s_per_gparam")
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
    """Seconds per optimizer step on each GPU, by cause; tokens counts every GPU's micro-batches.
    compute_s: the GPU's execution; overhead_s: the host's launch time that does not hide under it, plus the
    per-step overheads (Trainer loop, bitsandbytes optimizer)."""

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
    return sum(p.params * _token_share(model, p) for p in adapter_pairs(model, setup.lora))


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
    #: overhead feature -> multiplier of its constant (HOST_TERMS and SERIAL_TERMS)
    overheads: dict[str, float]
    optimizer_bytes: int
    grad_bytes: int
    trainable_params: int
    #: bytes an all-gather of every parameter moves (bf16; QLoRA's quantized weights packed)
    gathered_bytes: int
    #: adapter input + output elements the step's passes touch (tokens x passes x sum of in + out)
    adapter_elements: float = 0.0
    #: 4-bit weights dequantized in the step (quantized weights x passes x micro-batches)
    dequantized_weights: float = 0.0


def _passes(setup: TrainingSetup) -> int:
    """Passes through the decoder layers per micro-batch: forward and backward, plus the recompute."""
    return 3 if setup.grad_ckpt else 2


def _adapter_elements_per_token(model: ModelSpec, setup: TrainingSetup) -> float:
    """Sum over the LoRA-wrapped modules a token passes through of in + out features (experts by top_k / E)."""
    if setup.lora is None:
        return 0.0
    return sum(p.count * _token_share(model, p) * (p.a_cols + p.b_rows) for p in adapter_pairs(model, setup.lora))


def _token_share(model: ModelSpec, pair) -> float:
    """The share of tokens an adapter pair sees: an MoE expert's top_k / E, every other module all of them."""
    return model.moe.top_k / model.moe.num_experts if model.moe and "experts" in pair.name else 1.0


def step_work(model: ModelSpec, setup: TrainingSetup) -> StepWork:
    """FLOPs, launch-overhead counts and bytes of one GPU's optimizer step."""
    groups = trainable_groups(model, setup)
    trainable = sum(g.params for g in groups)
    micro = setup.grad_accum
    # small-batch steps are launch-bound: eager norms launch several kernels each (RMSNorm: cast, pow, mean, rsqrt,
    # mul, mul and their backward), an eager MoE block a few per expert; so kernels, and time, grow with their count
    passes = _passes(setup)
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
    tokens = setup.batch_size * setup.seq_len * micro
    if setup.method == "qlora":
        gathered = packed_4bit_bytes(model) + 2 * (total - quantizable_params(model))
    return StepWork(
        flops=tokens * sum(flops_per_token(model, setup).values()),
        overheads=overheads,
        optimizer_bytes=optimizer_bytes,
        grad_bytes=sum(g.params * g.itemsize for g in groups),
        trainable_params=trainable,
        gathered_bytes=gathered,
        adapter_elements=tokens * passes * _adapter_elements_per_token(model, setup),
        dequantized_weights=micro * passes * quantizable_params(model) if setup.method == "qlora" else 0.0,
    )


def _value(constants: dict[str, float], name: str) -> float:
    """Multiplier per feature unit: 1/efficiency for the efficiencies, the constant itself otherwise."""
    v = constants.get(name, PRIORS[name][0])
    return 1.0 / v if name.startswith("efficiency_") else v


def _features(work: StepWork, peak: float, bandwidth_bps: float) -> dict[str, float]:
    """Feature -> multiplier of its constant's _value, for one step on one GPU (seconds = the products, summed by
    part in _parts and combined with the overlap in step_time and _Row.predicted_s)."""
    return {
        "efficiency_matmul": work.flops / peak,
        "adapter_traffic_bytes": work.adapter_elements / bandwidth_bps,
        "dequant_bytes_per_weight": work.dequantized_weights / bandwidth_bps,
        **work.overheads,
    }


def _parts(features: dict[str, float], constants: dict[str, float]) -> tuple[float, float, float]:
    """(device, host, serial) seconds of one step's features."""

    def part(names: tuple[str, ...]) -> float:
        return sum(features.get(k, 0.0) * _value(constants, k) for k in names)

    return part(DEVICE_TERMS), part(HOST_TERMS), part(SERIAL_TERMS)


def _hidden_s(device: float, host: float, constants: dict[str, float]) -> float:
    """Seconds of host launch time and device execution that run at the same time (not counted twice)."""
    return _value(constants, "host_device_overlap") * min(device, host)


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
    device_s, host_s, serial_s = _parts(_features(work, peak, gpu.bandwidth_gbps * 1e9), constants)
    overhead_s = host_s - _hidden_s(device_s, host_s, constants) + serial_s
    n = setup.num_gpus
    optimizer_s = work.optimizer_bytes / (gpu.bandwidth_gbps * 1e9)
    comm_s = 0.0
    if n > 1:
        optimizer_s /= 1 if setup.parallel == "ddp" else n
        comm_s = communication_s(work, setup, gpu, device_s / setup.grad_accum)
    tokens = n * setup.batch_size * setup.seq_len * setup.grad_accum
    return StepTime(device_s, overhead_s, optimizer_s, comm_s, tokens)


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
    """Mean of the steady steps (>= 1; step 0 creates optimizer states and warms kernels).

    The mean, not the median: a long run's wall clock is the sum of its steps, the slow ones included. Steps 1
    and 2 are not still warming up: over the 25 H200 runs with nine steady steps their mean over the median of
    steps 3-9 is 1.00 (median). Taking the median of the steady steps instead moved the leave-one-out error by
    less than 0.1 point, the minimum by 0.2 overall (H100 +0.8, H200 -0.5; 2026-12-03)."""
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

    def predicted_s(self, constants: dict[str, float]) -> float:
        device, host, serial = _parts(self.features, constants)
        return device + host - _hidden_s(device, host, constants) + serial + self.fixed_s


def _rows(runs: list[MeasuredRun]) -> list[_Row]:
    from gpu_catalog import find_gpu

    from .models import resolve_model

    rows = []
    for r in speed_runs(runs):
        gpu = find_gpu(r.environment.gpu_id or r.environment.gpu_name or "")
        peak = peak_flops(gpu, r.setup) or 0.0
        work = step_work(resolve_model(r.model_source or r.model), r.setup)
        bandwidth = gpu.bandwidth_gbps * 1e9
        rows.append(_Row(r.run_id, _features(work, peak, bandwidth), work.optimizer_bytes / bandwidth,
                         measured_step_s(r) or 0.0))  # fmt: skip
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
        notes="step time = device + host - overlap x min(device, host) + serial; fitted by "
        "vramplan.throughput.fit_throughput",
    )


def _fit_rows(rows: list[_Row]) -> dict[str, float]:
    """min sum((predicted / measured - 1)^2) within the bounds (_levenberg_marquardt over the _value of each
    constant: 1/efficiency, the others as they are)."""
    names = list(PRIORS)
    bounds = [(1 / hi, 1 / lo) if k.startswith("efficiency_") else (lo, hi) for k, (_, lo, hi) in PRIORS.items()]
    informed = [k == "host_device_overlap" or any(r.features.get(k, 0.0) for r in rows) for k in names]
    x = _levenberg_marquardt(rows, names, bounds, informed, [_value({}, k) for k in names])
    return {k: (1.0 / v if k.startswith("efficiency_") else v) for k, v in zip(names, x)}


def _residuals_and_jacobian(rows: list[_Row], names: list[str], x: list[float]):
    """Relative errors of the rows and their derivatives by each value in x (the model is linear in every value
    but the overlap, given which of device and host is the smaller)."""
    constants = {k: (1.0 / v if k.startswith("efficiency_") else v) for k, v in zip(names, x)}
    overlap = _value(constants, "host_device_overlap")
    kind = ["device" if k in DEVICE_TERMS else "host" if k in HOST_TERMS else "serial" if k in SERIAL_TERMS
            else "overlap" for k in names]  # fmt: skip
    residuals, jacobian = [], []
    for r in rows:
        device, host, serial = _parts(r.features, constants)
        device_smaller = device < host
        predicted = device + host - overlap * min(device, host) + serial + r.fixed_s
        residuals.append(predicted / r.measured_s - 1.0)
        row = []
        for k, how in zip(names, kind):
            f = r.features.get(k, 0.0)
            if how == "device":
                row.append(f * (1.0 - overlap * device_smaller) / r.measured_s)
            elif how == "host":
                row.append(f * (1.0 - overlap * (not device_smaller)) / r.measured_s)
            elif how == "serial":
                row.append(f / r.measured_s)
            else:
                row.append(-min(device, host) / r.measured_s)
        jacobian.append(row)
    return residuals, jacobian


def _levenberg_marquardt(rows: list[_Row], names: list[str], bounds, informed: list[bool], start: list[float],
                         iterations: int = 300) -> list[float]:  # fmt: skip
    """Projected Levenberg-Marquardt: damped Gauss-Newton steps on the values not held at a bound, clipped to the
    bounds; values no run informs keep their start (the prior)."""
    n = len(start)
    x = [min(max(v, lo), hi) for v, (lo, hi) in zip(start, bounds)]
    res, jac = _residuals_and_jacobian(rows, names, x)
    loss = sum(e * e for e in res)
    damping = 1e-3
    for _ in range(iterations):
        grad = [sum(row[i] * e for row, e in zip(jac, res)) for i in range(n)]
        gram = [[sum(row[i] * row[j] for row in jac) for j in range(n)] for i in range(n)]
        held = [(x[i] <= bounds[i][0] and grad[i] > 0) or (x[i] >= bounds[i][1] and grad[i] < 0) for i in range(n)]
        free = [i for i in range(n) if informed[i] and gram[i][i] > 0.0 and not held[i]]
        accepted = False
        while damping < 1e12:
            a = [[gram[i][j] + (damping * gram[i][i] if i == j else 0.0) for j in free] for i in free]
            step = _solve(a, [-grad[i] for i in free])
            trial = list(x)
            for i, d in zip(free, step):
                trial[i] = min(max(x[i] + d, bounds[i][0]), bounds[i][1])
            trial_res, trial_jac = _residuals_and_jacobian(rows, names, trial)
            trial_loss = sum(e * e for e in trial_res)
            if trial_loss < loss:
                accepted = True
                break
            damping *= 4.0
        if not accepted:
            break  # no step lowers the loss: a minimum within the bounds
        moved = max((abs(t - v) / max(abs(v), 1e-12) for t, v in zip(trial, x)), default=0.0)
        gain = loss - trial_loss
        x, res, jac, loss = trial, trial_res, trial_jac, trial_loss
        damping = max(damping / 3.0, 1e-12)
        if moved < 1e-10 or gain <= 1e-16 * max(loss, 1e-300):
            break
    return x


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """a x = b by Gaussian elimination with partial pivoting (a small, symmetric positive definite)."""
    n = len(b)
    m = [row[:] + [bi] for row, bi in zip(a, b)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        if m[c][c] == 0.0:
            continue
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            if f:
                for k in range(c, n + 1):
                    m[r][k] -= f * m[c][k]
    x = [0.0] * n
    for c in reversed(range(n)):
        if m[c][c] != 0.0:
            x[c] = (m[c][n] - sum(m[c][k] * x[k] for k in range(c + 1, n))) / m[c][c]
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
        checks.append(StepTimeCheck(row.run_id, row.measured_s, row.predicted_s(constants)))
    return checks


def median_abs_error(checks: list[StepTimeCheck]) -> float:
    return statistics.median(abs(c.error) for c in checks)


def leave_one_out_by(runs: list[MeasuredRun], checks: list[StepTimeCheck], key) -> dict[str, tuple[int, float]]:
    """Median |error| of the checks grouped by key(run): group -> (runs, median)."""
    by_id = {r.run_id: r for r in runs}
    groups: dict[str, list[StepTimeCheck]] = {}
    for c in checks:
        groups.setdefault(str(key(by_id[c.run_id])), []).append(c)
    return {k: (len(v), median_abs_error(v)) for k, v in sorted(groups.items())}


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
    for label, key in (("GPU", lambda r: r.environment.gpu_id), ("method", lambda r: r.setup.method),
                       ("stack", lambda r: r.setup.stack + (" --liger" if r.setup.liger else ""))):  # fmt: skip
        cells = ", ".join(f"{k} {m:.1%} ({n})" for k, (n, m) in leave_one_out_by(shipped, loo, key).items())
        print(f"  by {label}: {cells}")
