"""estimate(model, setup) -> Estimate: sum the terms per phase and take the peak.

Phases (steady state: optimizer states exist from the first step on; memory_model.md section 8):
* forward      weights + states (+ grads when accumulating) + saved activations + loss buffers
* loss_backward  the same with the 12 N V loss-gradient buffers instead of the 10 N V forward ones
* layer_backward the last layer's recompute (checkpointing) or the first layer's grads, plus transients
* first_layer_backward, embedding_backward  full FT: every gradient but the embedding's exists while layer 0's
               backward runs, then the embedding's (a tied one summed out of place)
* optimizer    weights + states + gradients + optimizer-step temporaries
A checkpointed full FT Llama-family layer runs its recorded backward (allocator/ckpt_backward_layer.py): its three
backward phases come from the pattern's bytes instead of the fitted transients, and embedding_partial_sums adds the
embedding backward's partial sums and the carried gradient (_recorded_backward_phases). Unsloth's compiled Gemma 3
LoRA / QLoRA layer runs its recorded backward too (allocator/unsloth_gemma3_layer.py): the last layer's and layer 0's
backward phases are the pattern's excursion over the carried gradient (_unsloth_gemma3_backward_phases).
The step-0 optimizer step creates the states while gradients exist; its total equals `optimizer`.
Reserved is the larger of the fragmentation rule (peak allocated x (1 + f) + f_logits x 4 N V) and, for
large-pool optimizer states, the steady-step loss-segment rule (memory.allocator.steady_loss_reserved).
"""

from dataclasses import dataclass, field, replace

from .assumptions import estimate_assumptions
from .errors import VramplanError
from .memory.activations import rotary_tables
from .memory.adapters import adapter_autocast_copy_bytes, adapter_bytes, check_lora_supported, lora_param_count
from .memory.allocator import block_bytes, reserved_from_allocated, steady_loss_reserved, workspace_bytes
from .memory.allocator.ckpt_backward_layer import CkptBackwardPeaks, ckpt_backward_applies, ckpt_backward_peaks
from .memory.allocator.fsdp_steps import (
    FSDP_QLORA_NOTE,
    FSDP_RULES_NOTE,
    FSDP_SIMULATED_NOTE,
    fsdp_layer_profile,
    one_gpu_setup,
)
from .memory.allocator.simulated import (
    RESERVED_BY_SIMULATION,
    SIMULATED_ASSUMPTION,
    resolve_reserved_rule,
    simulated_memory,
)
from .memory.constants import (
    BYTES_PER_DTYPE,
    PRIOR_CUDA_CONTEXT_BYTES,
    PRIOR_FRAGMENTATION,
    PRIOR_FRAGMENTATION_EXPANDABLE,
    PRIOR_FRAGMENTATION_LOGITS,
    PRIOR_FRAGMENTATION_LOGITS_EXPANDABLE,
    PRIOR_T_BWD_CONST_UNITS,
    PRIOR_T_BWD_I_FACTOR,
)
from .memory.allocator.tensors import grad_tensor, grouped_by_layer
from .memory.allocator.unsloth_gemma3_layer import UnslothGemma3Peaks, unsloth_gemma3_applies, unsloth_gemma3_peaks
from .memory.optimizer import gradient_bytes, optimizer_state_bytes, optimizer_step_transient_bytes
from .memory.parallel import check_parallel_supported, parallel_terms, zero_simulated_assumptions
from .memory.stacks import check_stack_supported, stack_profile
from .memory.trainable import trainable_groups, trainable_params
from .memory.transients import (
    compute_dtype_adapter_saving_bytes,
    dequant_transient_bytes,
    expert_grad_transient_bytes,
    expert_lora_transient_bytes,
    int8_training_state_bytes,
    tied_embedding_grad_bytes,
)
from .memory.weights import lm_head_params, tied_lm_head_load_bytes, weight_bytes
from .models.params import linear_shapes, param_counts, total_params
from .specs import (
    Calibration,
    Estimate,
    GpuSpec,
    GpuVerdict,
    MemoryBreakdown,
    ModelSpec,
    ParamCounts,
    TrainingSetup,
)

DEFAULT_HEADROOM = 0.05
#: GPU memory the allocator simulation assumes without --gpu (sizes expandable segments' address space only)
SIMULATED_DEFAULT_TOTAL_BYTES = 80 * 1024**3

#: MemoryBreakdown.reserved_rule: what set the reserved peak
RESERVED_BY_FRAGMENTATION = "fragmentation"  # peak allocated x (1 + f) + f_logits x 4 N V
RESERVED_BY_STEADY_LOSS = "steady_loss_segments"  # step 0's persistent bytes + the next loss in new segments

#: constants the calibration file may override, with their priors
CALIBRATED_DEFAULTS: dict[str, float] = {
    "cuda_context_bytes": float(PRIOR_CUDA_CONTEXT_BYTES),
    "fragmentation": PRIOR_FRAGMENTATION,
    "fragmentation_expandable": PRIOR_FRAGMENTATION_EXPANDABLE,
    "fragmentation_logits": PRIOR_FRAGMENTATION_LOGITS,
    "fragmentation_logits_expandable": PRIOR_FRAGMENTATION_LOGITS_EXPANDABLE,
    "t_bwd_i_factor": PRIOR_T_BWD_I_FACTOR,
    "t_bwd_const_units": PRIOR_T_BWD_CONST_UNITS,
}


#: constants that enter _terms (the others only turn allocated into reserved and device totals)
TERM_CONSTANTS = ("t_bwd_i_factor", "t_bwd_const_units")


@dataclass(frozen=True)
class _Terms:
    """Every term in bytes, before they are combined into phases."""

    weights: dict[str, int]
    states: int
    managed_states: int
    grads: int
    opt_transient: int
    workspace: int
    saved_layers: int
    one_layer: int
    one_checkpoint: int
    final: int
    loss_fwd: int
    loss_bwd: int
    t_bwd: int
    autocast_cache_fwd: int
    autocast_cache_bwd: int
    quant_state: int
    #: the largest single loss buffer (hf: the fp32 logits, 4 N V) and every loss buffer of one step
    logits_fp32: int
    loss_chain: int
    embedding_grad: int
    tied_grad: int
    #: bytes of the largest single trainable tensor (its optimizer states are tensors of that size)
    largest_state: int = 0
    #: an owned head's buffers one tensor each (stacks/heads.py HeadBytes): saved for backward, forward's, backward's
    loss_saved: tuple[int, ...] = ()
    loss_fwd_tmp: tuple[int, ...] = ()
    loss_bwd_tmp: tuple[int, ...] = ()
    #: the tied lm_head's own weight, made at load and freed when post_init ties it (the "load" phase)
    tied_load: int = 0
    #: autocast's bf16 copies of the LoRA weights with checkpointing: every layer's (forward), one layer's (recompute)
    adapter_copies_fwd: int = 0
    adapter_copies_layer: int = 0
    #: the rotary embedding's cos and sin, from the forward's start to the end of the layers' backward
    rotary_tables: int = 0
    #: multi-GPU terms (memory/parallel.py): every phase / forward / backward / reduce phases, and outside torch
    parallel_persistent: dict[str, int] = field(default_factory=dict)
    parallel_gather_fwd: dict[str, int] = field(default_factory=dict)
    parallel_gather_bwd: dict[str, int] = field(default_factory=dict)
    parallel_reduce: dict[str, int] = field(default_factory=dict)
    parallel_outside: int = 0
    #: device memory the stack itself takes outside torch's allocator (StackProfile.outside_allocator)
    stack_outside: int = 0
    parallel_fragmentation: float = 0.0
    parallel_stream_pools: dict[str, int] = field(default_factory=dict)
    parallel_init: dict[str, int] = field(default_factory=dict)
    parallel_init_reserved: int = 0
    #: a checkpointed full FT Llama-family setup: its recorded backward patterns' terms (allocator/ckpt_backward_layer.py)
    ckpt_backward: CkptBackwardPeaks | None = None
    #: the decoder layers' gradients (all layers; with ckpt_backward only)
    layer_grads: int = 0
    #: Unsloth's compiled Gemma 3 LoRA / QLoRA: its recorded layer backward's terms (allocator/unsloth_gemma3_layer.py)
    unsloth_gemma3: UnslothGemma3Peaks | None = None


def estimate(
    model: ModelSpec,
    setup: TrainingSetup,
    gpu: GpuSpec | None = None,
    *,
    headroom: float = DEFAULT_HEADROOM,
    calibration: Calibration | None = None,
    assumptions: tuple[str, ...] = (),
    reserved_rule: str = "auto",
) -> Estimate:
    """Predict peak memory of one training step on one GPU. Raises VramplanError for unsupported setups.

    The reserved peak ("auto", the default) is simulated wherever the simulation covers the setup (one GPU, no
    DeepSpeed): the predicted allocation sequence replayed through the caching-allocator model
    (memory/allocator/simulated.py); elsewhere, and for reserved_rule "rules", the closed-form reserved rules."""
    _check_supported(model, setup, headroom)
    auto = reserved_rule == "auto"
    reserved_rule = resolve_reserved_rule(reserved_rule, setup, model)
    constants = dict(CALIBRATED_DEFAULTS)
    terms = _terms(model, setup, gpu, constants)
    raw = _memory(terms, setup, constants)
    calibrated = None
    if calibration is not None:
        fitted = {k: v for k, v in calibration.constants.items() if k in constants}
        term_constants_changed = any(fitted.get(k, constants[k]) != constants[k] for k in TERM_CONSTANTS)
        constants.update(fitted)
        if term_constants_changed:  # only the backward-transient constants change the terms themselves
            terms = _terms(model, setup, gpu, constants)
        calibrated = _memory(terms, setup, constants)
    total = gpu.memory_bytes if gpu else SIMULATED_DEFAULT_TOTAL_BYTES
    if reserved_rule == RESERVED_BY_SIMULATION and not _beyond_simulation(raw, gpu if auto else None):
        # an FSDP rank runs the one-GPU layers: its sequence is built from the one-GPU setup's terms (fsdp_steps.py)
        sim_terms = fsdp_rank_terms(model, setup, gpu, constants) if setup.parallel == "fsdp" else terms
        raw = simulated_memory(model, setup, sim_terms, raw, total)
        calibrated = simulated_memory(model, setup, sim_terms, calibrated, total) if calibrated else None
        assumptions = (*assumptions, SIMULATED_ASSUMPTION)
    setup_notes = estimate_assumptions(model, setup, gpu)
    if raw.reserved_rule == RESERVED_BY_SIMULATION and setup.parallel in ("zero2", "zero3"):
        setup_notes = zero_simulated_assumptions(setup_notes, setup)
    if setup.parallel == "fsdp" and setup.num_gpus > 1:
        setup_notes += (FSDP_SIMULATED_NOTE if raw.reserved_rule == RESERVED_BY_SIMULATION else FSDP_RULES_NOTE,)
        if "engine_init" in raw.phases and setup.method == "qlora":
            setup_notes += (FSDP_QLORA_NOTE.format(gib=raw.phases["engine_init"] / 2**30),)
    shown = calibrated or raw
    verdict = _verdict(gpu, shown.device_peak_bytes, headroom) if gpu else None
    profile = stack_profile(setup)
    return Estimate(
        model=model.name,
        method=setup.method,
        stack=profile.name,
        stack_versions=dict(profile.versions),
        params=_params(model, setup),
        memory=raw,
        calibrated=calibrated,
        calibration_version=calibration.version if calibration else None,
        assumptions=tuple(assumptions) + setup_notes,
        verdict=verdict,
    )


#: "auto" skips the simulation where the allocated peak alone exceeds this many times the GPU's memory: the setup
#: cannot fit whatever the fragmentation, and the replay would model segments beyond any device (fit's search
#: probes batch sizes and lengths up to its limits); the closed-form rules give its reserved peak
AUTO_SIMULATION_MAX_OVERSUBSCRIPTION = 2
#: the most bytes a replay may allocate: the modelled device address space (allocator/addresses.py TOP_ADDRESS)
#: with room for fragmentation
SIMULATION_MAX_ALLOCATED_BYTES = 1 << 44


def _beyond_simulation(memory: MemoryBreakdown, gpu: GpuSpec | None) -> bool:
    """Whether the setup is not replayed: more allocated than the modelled address space holds, or (`gpu`: "auto" on
    a given GPU) more than AUTO_SIMULATION_MAX_OVERSUBSCRIPTION times its memory."""
    if memory.peak_allocated_bytes > SIMULATION_MAX_ALLOCATED_BYTES:
        return True
    return gpu is not None and memory.peak_allocated_bytes > AUTO_SIMULATION_MAX_OVERSUBSCRIPTION * gpu.memory_bytes


def _check_supported(model: ModelSpec, setup: TrainingSetup, headroom: float) -> None:
    if not 0.0 <= headroom < 1.0:
        raise VramplanError(f"--headroom {headroom} is out of range; accepted: 0 <= headroom < 1 (e.g. 0.05)")
    check_parallel_supported(setup)
    check_stack_supported(model, setup)
    if setup.lora is not None:
        check_lora_supported(model, setup.lora)
    if setup.method == "qlora" and setup.dtype == "fp32":
        raise VramplanError("--method qlora with --dtype fp32 is not a supported combination; accepted: --dtype bf16|fp16")


def fsdp_rank_terms(model: ModelSpec, setup: TrainingSetup, gpu: GpuSpec | None, constants: dict[str, float]) -> _Terms:
    """The terms an FSDP rank's layers run with (fsdp_steps.py): the one-GPU setup's with its layers' profile
    (fsdp_layer_profile: LoRA's adapters in bf16 as FSDP2's mixed precision gathers them, so no autocast copies)."""
    return _terms(model, one_gpu_setup(setup), gpu, constants, fsdp_rank=True)


def _terms(
    model: ModelSpec, setup: TrainingSetup, gpu: GpuSpec | None, constants: dict[str, float], fsdp_rank: bool = False
) -> _Terms:
    profile = fsdp_layer_profile(setup) if fsdp_rank else stack_profile(setup)
    bf16_adapters = fsdp_rank and setup.method == "lora"
    weights = weight_bytes(model, setup, kbit_fp32_upcast=profile.kbit_fp32_upcast) | profile.buffers(model, setup)
    if setup.lora is not None:
        weights["weights.adapters"] = adapter_bytes(model, setup.lora, itemsize=profile.adapter_itemsize)
    groups = trainable_groups(model, setup, adapter_itemsize=profile.adapter_itemsize)
    states, managed = optimizer_state_bytes(groups, setup)
    unit = setup.batch_size * setup.seq_len * model.hidden_size  # bytes per "unit"
    act = profile.activations(model, setup)
    layer = int(act.layer_units * unit)
    ckpt = int(act.checkpoint_units * unit)
    saved_layers = profile.checkpoint_copies(model.num_layers, setup, ckpt) * ckpt if setup.grad_ckpt else model.num_layers * layer
    weights |= profile.checkpoint_buffers(setup, ckpt)
    head = profile.head_bytes(model, setup)
    i_ratio = model.intermediate_size / model.hidden_size
    t_bwd_units = constants["t_bwd_i_factor"] * i_ratio + constants["t_bwd_const_units"]
    t_bwd_units += profile.backward_transient_units(model, setup)
    itemsize = BYTES_PER_DTYPE[setup.dtype]
    # the bf16-adapter saving is of the LoRA chain's buffers, inside the activation-sized part: it never takes away
    # the dequantized weight or the expert materialisations (allocator/sequence.py holds those as whole tensors)
    t_bwd = (
        max(0, int(t_bwd_units * unit) - compute_dtype_adapter_saving_bytes(model, setup, profile.adapter_itemsize))
        + dequant_transient_bytes(model, setup)
        + expert_grad_transient_bytes(model, setup, itemsize)
        + expert_lora_transient_bytes(model, setup)
    )
    owns_head = profile.owns_lm_head(model)
    rotary = sum(rotary_tables(model, setup, profile.residual_bytes(setup)))
    ckpt_bwd, layer_grads = None, 0
    if ckpt_backward_applies(model, setup, profile):
        layer_groups, head_groups = grouped_by_layer(groups, model.num_layers)
        ckpt_bwd = ckpt_backward_peaks(model, setup, layer_groups, head_groups, ckpt, rotary)
        layer_grads = gradient_bytes(groups) - sum(grad_tensor(g) for g in head_groups)  # (the rest is the layers')
    unsloth_g3 = _unsloth_gemma3(model, setup, profile, groups, ckpt)
    cache_fwd, cache_bwd = _autocast_cache_bytes(model, setup, profile.lm_head_fp32(setup) and not owns_head)
    copies_fwd, copies_layer = (0, 0) if bf16_adapters else adapter_autocast_copy_bytes(model, setup)
    terms = _Terms(
        weights=weights,
        states=states,
        managed_states=managed,
        grads=gradient_bytes(groups),
        opt_transient=optimizer_step_transient_bytes(groups, setup),
        workspace=workspace_bytes(gpu.compute_capability if gpu else None),
        saved_layers=saved_layers,
        one_layer=layer,
        one_checkpoint=ckpt,
        final=int(act.final_units * unit) + (ckpt_bwd.final_rsqrt if ckpt_bwd else 0),
        loss_fwd=head.forward,
        loss_bwd=head.backward,
        t_bwd=t_bwd,
        autocast_cache_fwd=cache_fwd,
        autocast_cache_bwd=cache_bwd,
        quant_state=int8_training_state_bytes(model, setup),
        logits_fp32=head.largest,
        loss_chain=head.chain,
        embedding_grad=block_bytes(model.vocab_size * model.hidden_size * itemsize) if setup.method == "full" else 0,
        tied_grad=tied_embedding_grad_bytes(model, setup, in_place=owns_head),
        largest_state=max((g.numel * g.itemsize for g in groups), default=0),
        adapter_copies_fwd=copies_fwd,
        adapter_copies_layer=copies_layer,
        rotary_tables=rotary,
        tied_load=tied_lm_head_load_bytes(model, setup, weights, from_pretrained=profile.loads_checkpoint),
        loss_saved=head.saved,
        loss_fwd_tmp=head.forward_tmp,
        loss_bwd_tmp=head.backward_tmp,
        stack_outside=profile.outside_allocator(model, setup, ckpt),
        ckpt_backward=ckpt_bwd,
        layer_grads=layer_grads,
        unsloth_gemma3=unsloth_g3,
    )
    # DeepSpeed ZeRO runs (and offloads) at world size 1 too; DDP/FSDP on one GPU change nothing
    if setup.parallel is None or (setup.num_gpus == 1 and setup.parallel not in ("zero2", "zero3")):
        return terms
    p = parallel_terms(model, setup, weights, groups, terms.grads, terms.embedding_grad, terms.opt_transient)
    return replace(
        terms, weights=p.weights, states=p.states, managed_states=p.managed_states, grads=p.grads,
        embedding_grad=p.embedding_grad, opt_transient=p.opt_transient, parallel_persistent=p.persistent,
        parallel_gather_fwd=p.gather_forward, parallel_gather_bwd=p.gather_backward, parallel_reduce=p.reduce,
        parallel_outside=p.outside_allocator_bytes, parallel_fragmentation=p.extra_fragmentation,
        parallel_stream_pools=p.stream_pools, parallel_init=p.engine_init, parallel_init_reserved=p.engine_init_reserved,
    )  # fmt: skip


def _unsloth_gemma3(model: ModelSpec, setup: TrainingSetup, profile, groups, checkpoint: int) -> UnslothGemma3Peaks | None:
    """The recorded Unsloth Gemma 3 layer backward's terms where the setup runs it (unsloth_gemma3_applies), else None."""
    if profile.name != "unsloth":
        return None
    layer_groups, _ = grouped_by_layer(groups, model.num_layers)
    offloaded = profile.offloaded(setup, checkpoint)
    if not unsloth_gemma3_applies(model, setup, profile, offloaded, [g.name for g in layer_groups[0]]):
        return None
    return unsloth_gemma3_peaks(model, setup, layer_groups)


def _autocast_cache_bytes(model: ModelSpec, setup: TrainingSetup, lm_head_fp32: bool) -> tuple[int, int]:
    """bf16 copies autocast makes of fp32 weights, held by saved tensors (forward end, backward start).

    `lm_head_fp32` is False when the stack's loss casts the lm_head weight itself (StackProfile.owns_lm_head:
    the cast is in its head term, per tile or per chunk).

    fp32 weights (full/LoRA): every Linear weight is cast once per forward and cached until autocast exits;
    without checkpointing the copies stay saved for backward. QLoRA: prepare_model_for_kbit_training makes
    lm_head fp32, and its bf16 copy is saved for backward (memory_model.md 1.3: V*h*2 bytes).
    """
    if setup.parallel == "fsdp" and setup.num_gpus > 1:
        # FSDP2's MixedPrecisionPolicy (param_dtype bf16, accelerate) gathers every parameter in bf16: autocast finds
        # no fp32 weight to copy (fake ranks fl-l1/fl-l8-fsdp-qlora-gc-x2: the fp32 lm_head's copy is not there)
        return 0, 0
    lm_head_copy = block_bytes(lm_head_params(model) * 2) if lm_head_fp32 else 0
    if setup.method == "qlora":
        return lm_head_copy, lm_head_copy
    if setup.dtype != "fp32":
        return 0, 0
    linear_params = sum(s.count * s.in_features * s.out_features for s in linear_shapes(model) if s.role != "lm_head")
    cache = linear_params * 2 + lm_head_copy
    return cache, (lm_head_copy if setup.grad_ckpt else cache)


def _load_phase(t: _Terms) -> dict[str, dict[str, int]]:
    """Loading a tied model: every base weight and the tied lm_head's own copy (no adapters, states or workspace yet)."""
    if not t.tied_load:
        return {}
    base = {k: v for k, v in t.weights.items() if k != "weights.adapters"}
    return {"load": {**base, "tied_lm_head_at_load": t.tied_load}}


def _memory(t: _Terms, setup: TrainingSetup, constants: dict[str, float]) -> MemoryBreakdown:
    accum_grads = t.grads if setup.grad_accum > 1 else 0
    full = setup.method == "full"
    common = {**t.weights, "optimizer_states": t.states, "cuda_workspace": t.workspace, **t.parallel_persistent}
    fwd_extra, bwd_extra = t.parallel_gather_fwd, {**t.parallel_gather_bwd, **t.parallel_reduce}
    if accum_grads:
        common["gradients"] = accum_grads
    activations = "activations.checkpoints" if setup.grad_ckpt else "activations.layers"
    phase_terms: dict[str, dict[str, int]] = {
        **_load_phase(t),
        **({"engine_init": {**t.weights, **t.parallel_init}} if t.parallel_init else {}),
        "forward": {
            **common,
            activations: t.saved_layers,
            "activations.final": t.final,
            "logits_loss": t.loss_fwd,
            "autocast_weight_copies": t.autocast_cache_fwd,
            "autocast_adapter_copies": t.adapter_copies_fwd,
            "rotary_tables": t.rotary_tables,
            "int8_matmul_state": t.quant_state,
            **fwd_extra,
        },
        "loss_backward": {
            **common,
            activations: t.saved_layers,
            "activations.final": t.final,
            "logits_loss": t.loss_bwd,
            "autocast_weight_copies": t.autocast_cache_bwd,
            "rotary_tables": t.rotary_tables,
            "int8_matmul_state": t.quant_state,
            **fwd_extra,
        },
        "layer_backward": {
            **common,
            activations: t.saved_layers,
            "activations.recompute": t.one_layer if setup.grad_ckpt else 0,
            "backward_transients": t.t_bwd,
            "gradients": t.grads if not full else accum_grads,
            "autocast_weight_copies": t.autocast_cache_bwd if not setup.grad_ckpt else 0,
            "autocast_adapter_copies": t.adapter_copies_layer,
            "rotary_tables": t.rotary_tables,
            "int8_matmul_state": t.quant_state,
            **bwd_extra,
        },
        "optimizer": {**common, "gradients": t.grads, "optimizer_step_temporaries": t.opt_transient},
    }
    if full:
        # layer 0's backward: its saved (or recomputed) activations alive, every gradient made except the
        # embedding's (for tied embeddings that one already exists, from lm_head)
        first_layer = t.one_layer + (t.one_checkpoint if setup.grad_ckpt else 0)
        before_embedding = t.grads - (0 if t.tied_grad else t.embedding_grad)
        phase_terms["first_layer_backward"] = {
            **common,
            "gradients": before_embedding,
            "activations.first_layer": first_layer,
            "backward_transients": t.t_bwd,
            "rotary_tables": t.rotary_tables,
            **bwd_extra,
        }
        phase_terms["embedding_backward"] = {
            **common,
            "gradients": t.grads,
            "tied_embedding_grad_accumulation": t.tied_grad,
            **bwd_extra,
        }
    if t.ckpt_backward is not None:
        phase_terms |= _recorded_backward_phases(t, setup, common, bwd_extra)
    if t.unsloth_gemma3 is not None:
        phase_terms |= _unsloth_gemma3_backward_phases(t, setup, common, bwd_extra)
    phases = {name: sum(v for v in terms.values()) for name, terms in phase_terms.items()}
    peak_phase = max(phases, key=lambda p: phases[p])
    breakdown = {k: v for k, v in phase_terms[peak_phase].items() if v}
    peak_alloc = phases[peak_phase]
    if setup.expandable_segments:
        frag, frag_logits = constants["fragmentation_expandable"], constants["fragmentation_logits_expandable"]
    else:
        frag, frag_logits = constants["fragmentation"], constants["fragmentation_logits"]
    frag += t.parallel_fragmentation
    reserved = reserved_from_allocated(peak_alloc, frag, t.logits_fp32, frag_logits)
    reserved_rule = RESERVED_BY_FRAGMENTATION
    steady = 0
    if not setup.expandable_segments:  # expandable segments map pages into one range: nothing is stranded
        steady = steady_loss_reserved(
            phases["optimizer"] - t.opt_transient, t.loss_chain, t.logits_fp32, t.states, t.largest_state
        )
        if steady > reserved:
            reserved, reserved_rule = steady, RESERVED_BY_STEADY_LOSS
    reserved = max(reserved, t.parallel_init_reserved)  # what DeepSpeed's init left cached
    reserved += sum(t.parallel_stream_pools.values())  # side streams' cached segments (DeepSpeed offload)
    context = int(constants["cuda_context_bytes"])
    outside = t.managed_states + t.parallel_outside + t.stack_outside
    device = reserved + context + outside
    return MemoryBreakdown(
        peak_allocated_bytes=peak_alloc,
        peak_reserved_bytes=reserved,
        device_peak_bytes=device,
        peak_phase=peak_phase,
        breakdown=breakdown,
        phases=phases,
        fragmentation_bytes=reserved - peak_alloc,
        reserved_rule=reserved_rule,
        steady_loss_reserved_bytes=steady,
        cuda_context_bytes=context,
        outside_allocator_bytes=outside,
    )


def _recorded_backward_phases(t: _Terms, setup: TrainingSetup, common: dict, bwd_extra: dict) -> dict[str, dict]:
    """The backward phases of a setup whose layers run the recorded patterns (allocator/ckpt_backward_layer.py), in
    place of the fitted backward transients: the last layer's backward (every checkpoint, the head's gradients), layer
    0's (every gradient but the embedding's), and the embedding's: its own gradient (a tied one: the new gradient, then
    the sum) with the partial sums' buffer and the carried gradient. A later micro-step adds into the gradients the
    first made (common holds them all)."""
    pk = t.ckpt_backward
    accum = setup.grad_accum > 1
    before_embedding = t.grads - (0 if t.tied_grad else t.embedding_grad)  # (a tied one exists from lm_head's on)
    head = before_embedding - t.layer_grads  # lm_head's (or the tied embedding's), the final norm's
    layers = {"rotary_tables": t.rotary_tables, "carried_gradient": pk.carry, "int8_matmul_state": t.quant_state}
    tied_sum = t.tied_grad and t.tied_grad != t.embedding_grad  # the gradient made, then the sum (not in place)
    own = t.embedding_grad if accum else (t.tied_grad - (t.embedding_grad if tied_sum else 0))
    return {
        "layer_backward": {
            **common, "activations.checkpoints": t.saved_layers, "gradients": t.grads if accum else head,
            "backward_layer": pk.top_layer, **layers, **bwd_extra,
        },
        "first_layer_backward": {
            **common, "activations.first_layer": t.one_checkpoint,
            "gradients": t.grads if accum else before_embedding - pk.first_layer_grads,
            "backward_layer": pk.first_layer, **layers, **bwd_extra,
        },
        "embedding_backward": {
            **common, "gradients": t.grads, "tied_embedding_grad_accumulation": t.tied_grad if tied_sum and not accum else 0,
            **bwd_extra,
        },
        "embedding_partial_sums": {
            **common, "gradients": t.grads, ("tied_embedding_grad_accumulation" if t.tied_grad and not accum else
                                              "embedding_grad_accumulation"): own,
            "embedding_partial_sums": pk.embedding_partials,
            "carried_gradient": pk.carry, **bwd_extra,
        },
    }  # fmt: skip


def _unsloth_gemma3_backward_phases(t: _Terms, setup: TrainingSetup, common: dict, bwd_extra: dict) -> dict[str, dict]:
    """The backward phases of a setup whose layers run Unsloth's recorded Gemma 3 pattern
    (allocator/unsloth_gemma3_layer.py), in place of the recompute and the fitted backward transients: the last layer's
    backward (its kept input, the checkpoint; no gradient yet) and layer 0's (every other layer's gradients); each
    with the carried gradient and the pattern's excursion (its own gradients among them). A later micro-step adds into
    the gradients the first made (common holds them all)."""
    pk = t.unsloth_gemma3
    accum = setup.grad_accum > 1
    layers = {"rotary_tables": t.rotary_tables, "carried_gradient": pk.carry, "int8_matmul_state": t.quant_state,
              "backward_layer": pk.layer, **bwd_extra}  # fmt: skip
    return {
        "layer_backward": {**common, "activations.checkpoints": t.saved_layers, **layers},
        "first_layer_backward": {**common, "gradients": t.grads if accum else t.grads - pk.first_layer_grads, **layers},
    }


def _params(model: ModelSpec, setup: TrainingSetup) -> ParamCounts:
    counts = param_counts(model)
    by_role = {k: v for k, v in counts.items() if v}
    adapters = lora_param_count(model, setup.lora) if setup.lora is not None else 0
    total = total_params(model)
    trainable = total if setup.method == "full" else adapters
    assert setup.method != "full" or trainable == trainable_params(trainable_groups(model, setup))
    return ParamCounts(total=total, trainable=trainable, adapters=adapters, by_role=by_role)


def _verdict(gpu: GpuSpec, device_peak_bytes: int, headroom: float) -> GpuVerdict:
    usable = int(gpu.memory_bytes * (1.0 - headroom))
    return GpuVerdict(
        gpu=gpu.id,
        gpu_name=gpu.name,
        capacity_bytes=gpu.memory_bytes,
        usable_bytes=usable,
        headroom_fraction=headroom,
        fits=device_peak_bytes <= usable,
        headroom_bytes=gpu.memory_bytes - device_peak_bytes,
    )
