"""The predicted allocation sequence of a training run, built from the estimator's terms.

Loading, the PEFT wrap, then steps 0 and 1 (forward layer by layer, the loss chain, backward layer by
layer, the optimizer step, zero_grad), as an ordered list of allocations and frees. Each phase of
vramplan.estimator passes through exactly the bytes the estimator counts for it, and no moment holds
more than the largest of them, so the most live bytes over the sequence is the estimator's peak
allocated (tests/test_allocator_sequence.py checks it on every shipped run's setup); replayed through
CachingAllocator it gives the reserved peak.

Where each step comes from:
* start: vramplan/trainer/cuda_start.py makes and frees a 4-byte tensor before anything else, so the process's first
  segment is a 2 MiB small-pool one, cached and unused (the recorded histories start after it).
* load, full / LoRA: ``from_config`` under ``torch.device("cuda")`` (vramplan/trainer/build.py) creates
  every parameter in module order; a tied lm_head is created and freed when post_init ties it (measured:
  load peak - after load = V*h*2 on every tied model's run).
* load, QLoRA: ``from_pretrained`` -> transformers modeling_utils.py::caching_allocator_warmup allocates one
  tensor of the weights' byte count (quantized weights at 0.5 / 1 byte per element,
  ``HfQuantizer.param_element_size``; the rest bf16; tied weights once) less the reserved bytes no tensor uses
  (``memory_reserved - memory_allocated``: start_cuda's segment) and frees it; then each bf16
  weight is loaded and quantized (the bf16 copy freed); then peft prepare_model_for_kbit_training casts
  every non-quantized parameter to fp32 (new tensor, old freed).
* PEFT wrap: lora_A, lora_B per target module, in module order, first in the base layer's dtype, then each replaced by
  its fp32 copy (PEFT's cast_adapter_dtype).
* training start: Trainer._inner_training_loop calls accelerator.free_memory(), whose torch.cuda.empty_cache()
  releases every cached segment the load left unused (history r-l1-full: right after the tied lm_head copy's free).
* DDP (stack_steps.py): after free_memory(), the construction's broadcast of the parameters through flat copies of
  250 MiB buckets, two in flight (ddp_broadcast.py), then the Reducer's gradient buckets.
* forward: the rotary embedding's cos and sin, kept to the end of the layers' backward, and the forward thread's cuBLAS
  workspace at the first matmul, the rotary embedding's freqs (the autograd thread's comes with the first
  backward matmul); per layer the saved tensors (or, with checkpointing, the
  layer input kept and the layer's tensors freed at its end; its output, the next layer's input, made while its
  residual and MLP output are alive; layer 0's input, the embedding's output, before any matmul), and without checkpointing each LoRA target's
  transients around its saved ones (lora_chain.py: base output, fp32 input copy, dropout output, lora_B output), and a
  checkpointed QLoRA layer's fp32 MLP each tensor freed when its forward drops it (lora_chain.CheckpointedMlp: the
  recorded 8B QLoRA histories r-l8-qlora-*), its adapters' autocast copies made where each is first used, and its
  residual sum and second norm made after the attention's pieces are freed; then the final norm's tensors and the loss
  chain of memory/loss.py: bf16 logits, fp32 upcast, log_softmax (10 N V), the upcast freed, accelerate's
  fp32 copy of the logits replacing the bf16 ones, dropped by Trainer.compute_loss.
* backward: the nll gradient and log_softmax backward (12 N V with the saved 4 N V), the bf16 logits
  gradient; lm_head's gradient (full FT); then per layer from the last: the recompute (checkpointing), the
  backward transients, the layer's gradients (a checkpointed QLoRA layer's adapters': each target's as autograd
  reaches it, before its base weight is dequantized; LoRA otherwise: every adapter's in the last layer's, as the
  estimator's layer_backward counts them), the layer's activations freed; the embedding's gradient. Recorded patterns
  instead: a checkpointed full FT Llama-family / Qwen3 layer (ckpt_backward_layer.py), Unsloth's compiled Gemma 3
  LoRA / QLoRA layer (unsloth_gemma3_layer.py: each adapter's gradient where autograd reaches it).
* optimizer step: the states at step 0 (torch optimizers create them lazily in the first step()), the
  step's temporaries; zero_grad(set_to_none=True) frees the gradients.

Other stacks (memory/stacks): the profile gives the kernels' saved activations, the adapters' dtype and whether
QLoRA upcasts the frozen weights (TRL: no prepare_model_for_kbit_training, bf16 weights and adapters); a head that
owns the lm_head (TRL's tiled head, Liger's FLCE) makes the buffers its terms list (stacks/heads.py HeadBytes:
saved for backward, forward's, backward's, the last of these the lm_head weight's gradient in full FT), and a
tied gradient is accumulated in place.
"""

from __future__ import annotations

from functools import partial

from ...models.params import linear_shapes
from ...specs import ModelSpec, TrainingSetup
from ..activations import rotary_tables
from ..adapters import adapter_pairs, lora_targets
from ..constants import BYTES_PER_DTYPE, NF4_BLOCKSIZE
from ..stacks import stack_profile
from ..trainable import trainable_groups
from ..transients import (
    dequant_transient_bytes,
    expert_grad_transient_bytes,
    expert_lora_transient_bytes,
)
from ..weights import lm_head_params
from .ckpt_backward_layer import ckpt_backward_applies, ckpt_backward_patterns, ckpt_backward_sizes
from .layer_patterns import LayerPatterns
from .load_steps import START_CUDA_TENSOR_BYTES, LoadSteps
from .lora_chain import checkpointed_mlp, lora_chains
from .lora_no_grad_layer import lora_no_grad_pattern, lora_no_grad_sizes
from .no_grad_layer import no_grad_layer_sizes, no_grad_pattern
from .ops import EMPTY_CACHE, Repeats, Sequence, live_peaks, live_peaks_by_stretch  # noqa: F401  (re-exported: replay, tests, scripts)
from .fsdp_steps import FsdpSteps, fsdp_layer_profile
from .optimizer_steps import OptimizerSteps
from .qlora_steps import CheckpointedQloraSteps
from .rules import block_bytes
from .stack_steps import StackSteps
from .tensors import (
    activation_anchors,
    activation_tensors,
    grad_tensor,
    grouped_by_layer,
    layer_adapter_copies,
    layer_weight_tensors,
    lora_target_pieces,
    pieces_bytes,
    quantization_steps,
    quantized_pieces,
    spread,
)
from .unsloth_gemma3_layer import carried_out, unsloth_gemma3_pattern, unsloth_gemma3_sizes
from .zero3_offload import Zero3OffloadSteps
from .zero3_steps import Zero3Steps
from .zero_steps import ZeroSteps, zero_engine_applies, zero_plan

BF16, FP32 = 2, 4
#: ZeRO-3 with offloaded parameters: the coordinator's step 1 and step 2 are the same, but the all-gather stream's pool
#: still grows in step 2 on Qwen2.5-3B (2,572 -> 3,166 MiB, as its run recorded) and in none after it (6 steps tried on
#: 7 models: zero3_offload.gather_phases)
OFFLOADED_ZERO3_STEPS = 3


def training_sequence(model: ModelSpec, setup: TrainingSetup, t, steps: int | None = None, fsdp=None) -> Sequence:
    """The allocation sequence of loading and `steps` optimizer steps for one GPU (default 2: from step 1 on each step
    is the one before it; ZeRO-3 with offloaded parameters 3, OFFLOADED_ZERO3_STEPS); `t` is estimator._Terms. `fsdp`
    (fsdp_steps.FsdpPlan): one rank of FSDP2, `setup` and `t` then the one-GPU setup's (the layers run as on one GPU).

    A checkpointed QLoRA layer's backward makes its adapters' gradients as autograd reaches each target (_Builder.
    backward); where that would hold fewer bytes at once than the estimator's layer_backward, which counts every
    adapter's gradient in the last layer's backward (its peak allocated), they are all made there instead. That order
    is built only when it could hold more (_all_at_once_cannot_peak_higher)."""
    if steps is None:
        steps = OFFLOADED_ZERO3_STEPS if setup.parallel == "zero3" and setup.offload == "all" else 2
    seq, b = _training_sequence(model, setup, t, steps, layer_grads=True, fsdp=fsdp)
    if not b.layer_grads:  # no choice between orders below, whose live peaks include the workspaces
        seq.workspace = tuple(b.workspace)
    elif not _all_at_once_cannot_peak_higher(seq, b.grad_stretches, b.layer_grad_bytes()):
        whole, _ = _training_sequence(model, setup, t, steps, layer_grads=False, fsdp=fsdp)
        if whole.live_peak() > seq.live_peak():
            return whole
    return seq


def _all_at_once_cannot_peak_higher(seq: Sequence, grad_stretches: list[tuple[int, int]], grad_bytes: int) -> bool:
    """Whether the all-at-once gradient order cannot hold more bytes at once than `seq` (the per-layer order).

    The two orders differ only inside the decoder layers' backward passes that make the gradients (`grad_stretches`,
    op ranges): the same tensors, the adapters' gradients made at the last layer instead of each in its own. Each layer's
    backward holds the same recompute, transients and dequantized weights in both, and by then the per-layer order
    has made no more of the gradients, so at any point of those passes the all-at-once order holds at most
    `grad_bytes` (all of them) more than the per-layer stretch's peak; elsewhere the same bytes at each allocation
    but in a later micro-batch's backward, whose layers dequantize their weights one at a time in another order, to
    the same peak (tests/test_allocator_sequence_build.py checks the bound and the choice against both orders)."""
    peak, within = live_peaks(seq, grad_stretches)
    return all(top + grad_bytes <= peak for top in within)


def _training_sequence(
    model: ModelSpec, setup: TrainingSetup, t, steps: int, layer_grads: bool, repeat_layers: bool = True, fsdp=None
) -> tuple[Sequence, _Builder]:
    """The sequence and its builder; `repeat_layers` False builds every decoder layer's ops anew (ops.Repeats)."""
    seq = Sequence()
    b = _Builder(model, setup, t, seq, layer_grads, repeat_layers, fsdp)
    seq.mark("start_cuda")
    seq.free(seq.alloc(START_CUDA_TENSOR_BYTES))
    seq.mark("load")
    b.load()
    # Trainer._inner_training_loop begins with accelerator.free_memory() (transformers trainer.py; accelerate
    # utils/memory.py::release_memory -> clear_device_cache -> torch.cuda.empty_cache()): the segments the load
    # left cached and unused go back (history r-l1-full: the tied lm_head copy's 501 MiB segment, then this)
    seq.empty_cache()
    b.ddp_buckets()
    b.fsdp_prepare()  # FSDP2 (fsdp_steps.py): accelerate's upcast, fully_shard's shards
    if b.zero is not None:
        b.zero_init()
    for step in range(steps):
        for micro in range(setup.grad_accum):
            seq.mark(f"step{step}.forward" if micro == 0 else f"step{step}.micro{micro}.forward")
            b.forward(first=step == 0 and micro == 0)
            if step == 0 and micro == 0 and b.profile.empties_cache_before_first_backward:
                seq.empty_cache()
            seq.mark(f"step{step}.backward" if micro == 0 else f"step{step}.micro{micro}.backward")
            b.fsdp_sync = micro == setup.grad_accum - 1  # FSDP: no_sync before the last micro-step (fsdp_steps.py)
            b.backward(first_micro=micro == 0)
        seq.mark(f"step{step}.optimizer")
        if b.zero is not None:
            b.zero_step(first=step == 0)
        else:
            b.optimizer_step(first=step == 0)
        seq.mark(f"step{step}.zero_grad")
        b.zero_grad()
    return seq, b


class _Builder(
    LoadSteps, CheckpointedQloraSteps, OptimizerSteps, StackSteps, LayerPatterns, ZeroSteps, Zero3Steps, Zero3OffloadSteps,
    FsdpSteps,
):
    def __init__(
        self, model: ModelSpec, setup: TrainingSetup, t, seq: Sequence, layer_grads: bool = False, repeat_layers: bool = True,
        fsdp=None,
    ):
        self.m, self.s, self.t, self.seq = model, setup, t, seq
        self.fsdp = fsdp  # one rank of FSDP2 (fsdp_steps.FsdpPlan), or None
        self.L = model.num_layers
        # the stack's kernels, adapter dtype and QLoRA upcast (memory/stacks); hf: the setup's own eager activations
        # (an FSDP rank's layers: FSDP2's copy-out gives LoRA bf16 adapters, fsdp_steps.fsdp_layer_profile)
        self.profile = profile = fsdp_layer_profile(setup) if fsdp is not None else stack_profile(setup)
        act_setup = profile.activation_setup(setup)
        unit = setup.batch_size * setup.seq_len * model.hidden_size
        act = profile.activations(model, setup)
        self.saved_layer = activation_tensors(model, act_setup, act, unit, t.one_layer)
        self.final = pieces_bytes(act.final_units, 4.0, unit, t.final)
        i_units = (4 if act_setup.method == "qlora" else 2) * model.intermediate_size / model.hidden_size
        # backward transients: activation-sized pieces, and whole-tensor ones (memory/transients.py) one at a time:
        # each quantized weight dequantized to bf16 for its matmul (the largest is the estimator's term),
        # MoE expert gradient / expert LoRA materialisations
        self.layers = layer_weight_tensors(model, setup, profile.kbit_fp32_upcast)
        self.dequant = [[bf16 for _, pieces, bf16 in layer if len(pieces) > 1] for layer in self.layers]
        # where each dequantized weight is made in a layer's forward: right before its matmul's output, freed
        # after it (MatMul4Bit.forward: linear(A, dequantize_4bit(B).t())), as (piece index, bytes)
        # a non-checkpointed forward's LoRA transients (lora_chain.py); a checkpointed forward frees the layer's
        # tensors at its end anyway (its chains, tried, moved the recorded 8B QLoRA s4096 history off its segments)
        self.lora_chains = {} if setup.grad_ckpt else lora_chains(
            model, act_setup, act, unit, profile.adapter_itemsize, profile.kbit_fp32_upcast
        )
        anchors = activation_anchors(model, setup, act)
        self.dequant_fwd = []
        for k, layer in enumerate(self.layers):  # (a layer like the one before it has its slots)
            same = k and layer == self.layers[k - 1]
            self.dequant_fwd.append(self.dequant_fwd[-1] if same else _dequant_slots(layer, anchors, len(self.saved_layer)))
        # a checkpointed QLoRA layer's MLP as its forward runs it, keeping nothing (lora_chain.CheckpointedMlp): from
        # the first MLP target's saved piece on; the attention's pieces are freed before it, the second norm's after
        self.ckpt_mlp = None if profile.liger else checkpointed_mlp(model, act_setup, unit, profile.kbit_fp32_upcast)
        # the adapters' gradients made in each layer's backward, as autograd reaches each target (training_sequence)
        self.layer_grads = layer_grads and self.ckpt_mlp is not None
        if self.ckpt_mlp is not None:
            _, a_end, m0 = anchors
            mlp_lora = [at for x, at in lora_target_pieces(model, act_setup, act) if x.role == "mlp"]
            self.mlp_at, self.attn_end = min(mlp_lora, default=m0), a_end
        self.quant_steps = {  # (pieces, their bytes) -> the quantization's allocations, per Linear kind
            (len(p), sum(p)): quantization_steps(x.out_features, x.in_features, setup)
            for x in linear_shapes(model) if x.role != "lm_head"
            for p in [quantized_pieces(x.out_features, x.in_features, setup)]
        } if setup.method == "qlora" else {}  # fmt: skip
        whole = [expert_grad_transient_bytes(model, setup, BYTES_PER_DTYPE[setup.dtype]),
                 expert_lora_transient_bytes(model, setup)]  # fmt: skip
        self.whole_bwd = [x for x in whole if x]
        units_bytes = t.t_bwd - sum(whole) - dequant_transient_bytes(model, setup)
        # the gradient of the hidden state (b, s, h in the residual dtype) is carried from one layer's backward
        # into the next one's; it is part of the estimator's transient, the rest is the layer's own
        carry = profile.residual_bytes(setup) * unit
        self.carry = carry if units_bytes >= 2 * carry else 0
        units_bytes -= self.carry
        self.t_bwd = pieces_bytes(units_bytes / unit, i_units, unit, units_bytes) if units_bytes > 0 else []
        groups = trainable_groups(model, setup, adapter_itemsize=profile.adapter_itemsize)
        self.layer_groups, self.head_groups = grouped_by_layer(groups, self.L)
        #: each layer's gradients' bytes, in layer_groups' order
        self.layer_grad_sizes = [[grad_tensor(g) for g in gs] for gs in self.layer_groups]
        #: Unsloth's compiled Gemma 3 LoRA / QLoRA: its recorded layer backward (unsloth_gemma3_layer.py), its kinds'
        #: bytes and the token that makes the gradient carried on; or None. Its backward makes each layer's gradients,
        #: so no order of them is built; the gradient carried in from the head is the pattern's [n, h]. The terms have
        #: its peaks exactly where it applies (estimator._unsloth_gemma3)
        g3 = t.unsloth_gemma3 is not None
        self.unsloth_g3 = unsloth_gemma3_pattern(model, setup) if g3 else None
        if g3:
            self.unsloth_g3_sizes = unsloth_gemma3_sizes(model, setup)
            self.unsloth_g3_out = carried_out(self.unsloth_g3)
            self.layer_grads = False
            self.carry = self.unsloth_g3_sizes["X"]
        self.grads: list[int] = []
        self.param_groups: tuple[list, list] | None = None  # the optimizer's (OptimizerSteps._param_groups)
        #: op ranges of the decoder layers' backward passes that make gradients (training_sequence's bound)
        self.grad_stretches: list[tuple[int, int]] = []
        self.workspace: list[int] = []
        #: a checkpointed full FT Llama-family layer's no-grad forward (no_grad_layer.py): its kinds' bytes, or empty
        self.no_grad = no_grad_pattern(model, setup, profile.liger)
        self.no_grad_sizes = no_grad_layer_sizes(model, setup) if self.no_grad else {}
        #: and its recorded backward, each layer's pattern (ckpt_backward_layer.py), or None
        #: DeepSpeed ZeRO-2 / ZeRO-3 on one GPU where the layers run the recorded backward as without the engine
        #: (zero_steps.py: zero_sequence_applies, from the builder's own groups)
        engine = zero_engine_applies(setup)
        applies = ckpt_backward_applies(model, setup.model_copy(update={"parallel": None}) if engine else setup, profile)
        self.ckpt_bwd = ckpt_backward_patterns(model, self.layer_groups, self.head_groups) if applies else None
        #: a DeepSpeed engine's LoRA layer: its recorded no-grad forward in the first step, and in the later ones (ZeRO-3
        #: fetches lora_A's weight as a copy in the first only: lora_no_grad_layer.py); forward() picks the step's. The
        #: engine is modelled where its layers run as recorded, as zero_steps.zero_sequence_applies decides
        fsdp_lora = self.fsdp_lora  # an FSDP rank's bf16 adapters run the ZeRO-2 chain
        self.lora_no_grad_first = (
            lora_no_grad_pattern(model, setup, profile.liger, True, fsdp=fsdp_lora) if engine or fsdp_lora else None
        )
        zero = engine and (self.ckpt_bwd is not None or self.lora_no_grad_first is not None)
        self.ckpt_bwd_sizes = ckpt_backward_sizes(model, setup) if self.ckpt_bwd else {}
        #: the engine's plan, and the hook each gradient goes to (None: kept as a tensor of self.grads)
        self.zero = zero_plan(model, setup) if zero else None
        self.grad_hook = self.zero_hook if zero else None
        if self.lora_no_grad_first:
            self.lora_no_grad_later = lora_no_grad_pattern(model, setup, profile.liger, False, fsdp=fsdp_lora)
            self.no_grad, self.no_grad_sizes = self.lora_no_grad_first, lora_no_grad_sizes(model, setup)
        #: a decoder layer like the last one recorded of its kind appends that one's ops again (ops.Repeats); not
        #: with DeepSpeed's hooks, whose state runs across the layers
        #: (nor with an untied model's FSDP tail, gathered inside the last layer's forward: fsdp_steps.py)
        self.repeated = Repeats(seq, repeat_layers and not zero and not (fsdp is not None and fsdp.embed is not None))
        # Unsloth's offloaded checkpoints (_staging_buffers): the staging buffers, and whether a backward has run yet
        self.staging: list[int] = []
        self.first_pass, self.double_buffered = True, False
        lm_copy = block_bytes(lm_head_params(model) * BF16) if t.autocast_cache_fwd else 0
        per_layer_cache = t.autocast_cache_fwd - lm_copy
        # autocast's bf16 copy of each fp32 Linear weight, made at its first use in the forward
        self.cache_layer: list[list[int]] = [[] for _ in range(self.L)]
        if per_layer_cache > 0:
            for x in linear_shapes(model):
                if x.role != "lm_head":
                    for layer, n in zip(self.cache_layer, spread(x.count, self.L)):
                        layer.extend([x.in_features * x.out_features * BF16] * n)
            self.cache_layer[0].append(per_layer_cache - sum(map(sum, self.cache_layer)))  # 0 unless a kind is missing
        self.cache_lm = lm_copy
        # with checkpointing: autocast's copies of the adapters, made in each layer's forward, dropped when autocast
        # exits after the loss (its recompute makes them again, saved until the layer's backward)
        self.adapter_copies = layer_adapter_copies(model, setup) if t.adapter_copies_fwd and not zero else [[]] * self.L
        # a checkpointed QLoRA MLP's adapters are cast where each is used (lora_chain.CheckpointedMlp): MLP leaf ->
        # index of its lora_A copy in a layer's copies (lora_B's follows); the other targets' at the layer's start
        self.mlp_copies: dict[str, int] = {}
        if self.ckpt_mlp is not None and t.adapter_copies_fwd:
            pairs = adapter_pairs(model, setup.lora)[: len(lora_targets(model, setup.lora))]
            if all(p.count == self.L for p in pairs):
                mlp = [(j, p.name.rsplit(".", 1)[-1]) for j, p in enumerate(pairs) if p.name.startswith("mlp.")]
                self.mlp_copies = {leaf: 2 * j for j, leaf in mlp}
        #: indices of those copies (lora_A's and lora_B's) in a layer's copies: not made at the layer's start
        self.copies_at_use = {j for i in self.mlp_copies.values() for j in (i, i + 1)}

    # ------------------------------------------------------------------ one micro-step
    def forward(self, first: bool) -> None:
        s, t, seq = self.s, self.t, self.seq
        if self.lora_no_grad_first:
            self.no_grad = self.lora_no_grad_first if first else self.lora_no_grad_later
        self.gathers("fwd", "pre")  # ZeRO-3's offloaded parameters' copies (zero3_offload.py), FSDP's units (fsdp_steps.py)
        # with checkpointing each layer keeps its input: the embedding's output for layer 0, made before any matmul
        self.ckpt: list[int | None] = [seq.alloc(t.one_checkpoint)] if s.grad_ckpt else []
        self.fsdp_after_embedding()
        self.rotary = self._rotary_tables(first)
        self.quant = seq.alloc(t.quant_state)
        offloads = self.profile.offloaded(s, t.one_checkpoint)
        if offloads:
            self._staging_buffers()
        if first:
            self._stack_buffers()
        self.saved: list[list[int]] = []
        self.cache: list[list[int]] = []
        self.copies: list[int] = []
        self.final_ids: list[int] = []
        self.gathers("fwd", "pre", end=True)
        for k in range(self.L):
            made_of = (self.cache_layer[k], self.adapter_copies[k], self.dequant_fwd[k], self.layers[k])
            self.gathers("fwd", k)
            cache, copies, kept = self.repeated(("forward", k == self.L - 1), made_of, [], partial(self._forward_layer, k))
            self.gathers("fwd", k, end=True)
            self.cache.append(cache)
            self.copies += copies
            if offloads and (self.first_pass or k < self.L - 1):  # its input went to host memory: freed on return
                seq.free(self.ckpt[k])
                self.ckpt[k] = None
            if not s.grad_ckpt:
                self.saved.append(kept)
            elif k < self.L - 1:
                self.ckpt += kept
            else:
                self.final_ids = kept
        if not s.grad_ckpt:
            self.final_ids = [seq.alloc(x) for x in self.final]
        if self.zero is not None and self.zero.stage == 3 and self.zero.adapters:
            # ZeRO-3's LinearFunctionForZeroStage3 saves the frozen lm_head's input (the final norm's bf16 output),
            # which torch's linear does not for a frozen weight: kept to the head's backward (history o-l1-zero3-lora-gc-x1)
            self.final_ids.append(seq.alloc(s.batch_size * s.seq_len * self.m.hidden_size * BF16))
        self.gathers("fwd", "head")
        self.lm_cache = seq.alloc(self.cache_lm)
        self._loss_forward()
        self.gathers("fwd", "head", end=True)
        if s.grad_ckpt:  # autocast's per-layer weight copies are not saved through checkpointing
            seq.free(*[i for ids in self.cache for i in ids])
            self.cache = []

    def _rotary_tables(self, first: bool) -> list[int]:
        """The rotary embedding's cos and sin (activations.rotary_tables), kept to the end of the layers' backward, and at
        step 0 the forward thread's cuBLAS workspace, made by the forward's first matmul (the recorded runs' transformers
        5.17 computes freqs as ``inv_freq_expanded @ position_ids_expanded``; the autograd thread's workspace comes with
        the first backward matmul). As recorded (h-q7-qlora-r64-gc-s4096, s-h200-l8-lora-gc), per rotary embedding:
        freqs (fp32, half the width), the workspace, emb = cat(freqs, freqs), cos and sin each as emb.cos() and its
        ``* attention_scaling`` (the first freed), each cast to the hidden states' dtype unless they are fp32, then freqs,
        the fp32 cos and sin and emb freed (gpt-oss's emb is freqs itself: its transients are modelled the same)."""
        seq, t = self.seq, self.t
        itemsize = self.profile.residual_bytes(self.s)
        kept: list[int] = []
        for table in rotary_tables(self.m, self.s, itemsize)[::2]:
            fp32 = table * FP32 // itemsize
            freqs = seq.alloc(fp32 // 2)
            if first and not self.workspace:
                self.workspace = [seq.alloc(t.workspace // 2)]
            emb = seq.alloc(fp32)
            made = []
            for _ in ("cos", "sin"):
                raw = seq.alloc(fp32)
                made.append(seq.alloc(fp32))
                seq.free(raw)
            cast = [seq.alloc(table) for _ in made] if fp32 != table else made  # .to(dtype=x.dtype)
            seq.free(freqs, *[i for i in made if i not in cast], emb)
            kept += cast
        if first and not self.workspace:  # no rotary embedding: the first Linear's matmul
            self.workspace = [seq.alloc(t.workspace // 2)]
        return kept

    def _forward_layer(self, k: int) -> tuple[list[int], list[int], list[int]]:
        """Layer k's forward: (autocast's copies of its fp32 weights, autocast's copies of its adapters, what it keeps:
        its saved tensors, or with checkpointing its output, the next layer's input, after the last layer the final
        norm's tensors)."""
        seq = self.seq
        cache = [seq.alloc(x) for x in self.cache_layer[k]]
        copies = [seq.alloc(x) for j, x in enumerate(self.adapter_copies[k]) if j not in self.copies_at_use]
        if not self.s.grad_ckpt:
            return cache, copies, self._layer_forward(k, copies)
        if self.no_grad_sizes:  # a full FT Llama-family layer: its recorded no-grad forward (no_grad_layer.py)
            return cache, copies, self._no_grad_layer(k)
        # the layer's tensors, as its recompute holds them, then freed
        # (keeping only a few alive at once, as a bare forward would, disagreed with the LoRA runs)
        seq.free(*self._layer_forward(k, copies))
        return cache, copies, self._checkpointed_layer_output(k)

    def _checkpointed_layer_output(self, k: int) -> list[int]:
        """A checkpointed layer's end, as its no-grad forward runs it (every recorded checkpointed history): its output
        `residual + mlp_out` is made while both (residual-sized) are alive, then they are freed. The output is the
        next layer's kept input, or after the last layer the final norm's (the estimator's `final` tensors)."""
        seq, one = self.seq, self.t.one_checkpoint
        residual, mlp_out = seq.alloc(one), seq.alloc(one)
        out = [seq.alloc(one)] if k < self.L - 1 else [seq.alloc(x) for x in self.final]
        seq.free(residual, mlp_out)
        return out

    def _layer_forward(self, k: int, copies: list[int]) -> list[int]:
        """Layer k's saved tensors; bitsandbytes gemm_4bit dequantizes each 4-bit weight for its matmul, alive
        while the matmul's output is made. A checkpointed QLoRA MLP adds the adapter copies it makes to `copies`."""
        seq, slots, saved = self.seq, self.dequant_fwd[k], self.saved_layer
        ids: list[int] = []
        n = 0
        mlp = self.ckpt_mlp is not None
        if mlp:  # the attention's pieces, then (below) o_proj, the pieces after it and the MLP as the forward runs them
            slots, saved = [x for x in slots if x[0] < self.mlp_at], saved[: self.attn_end]
        while n < len(saved):
            weights = [self._dequantize(w) for at, w in slots if at == n]
            chain = self.lora_chains.get(n)
            if chain is None:
                ids.append(seq.alloc(saved[n]))
                seq.free(*weights)
                n += 1
                continue
            ids += self._lora_target(chain, saved[n : n + chain.pieces], weights)
            n += chain.pieces
        for at, w in slots:
            if at >= len(self.saved_layer):
                seq.free(self._dequantize(w))
        if mlp:  # o_proj's matmul (its weight dequantized), the attention's pieces freed, then the residual sum
            # behind it and the second norm's pieces (freed at the layer's end) are made in the space they left
            for at, w in slots:
                if at >= self.attn_end:
                    seq.free(self._dequantize(w))
            seq.free(*ids)
            ids = [seq.alloc(x) for x in self.saved_layer[self.attn_end : self.mlp_at]]
            weights = [bf16 for name, pieces, bf16 in self.layers[k] if len(pieces) > 1 and name.startswith("mlp.")]
            self._checkpointed_mlp(dict(zip(("gate_proj", "up_proj", "down_proj"), weights)), k, copies)
        return ids

    def _lora_target(self, chain, pieces: list[int], weights: list[int]) -> list[int]:
        """One LoRA target's forward in the recorded order (lora_chain.py): its saved pieces (the input's bf16 copy,
        the dropout mask, lora_A's output) and the transients around them; `weights`: its dequantized 4-bit weight."""
        seq = self.seq
        cast = seq.alloc(chain.input_cast)
        base = seq.alloc(chain.base_out)
        seq.free(cast, *weights)
        copy = seq.alloc(chain.input_copy)
        ids = [seq.alloc(pieces[1])] if len(pieces) == 3 else []  # the dropout mask
        dropped = seq.alloc(chain.dropout_out)
        ids += [seq.alloc(pieces[0]), seq.alloc(pieces[-1])]  # the dropout output's bf16 copy, lora_A's output
        seq.free(dropped)
        lora_b = seq.alloc(chain.lora_out)
        scaled = seq.alloc(chain.lora_out)
        seq.free(lora_b, scaled, base, copy)
        return ids

    def _dequantize(self, bf16: int) -> int:
        """bitsandbytes functional.py::dequantize_4bit: with double quantization the absmax is first dequantized
        to an fp32 tensor (nblocks x 4 bytes), freed once the bf16 weight is made."""
        seq = self.seq
        if not self.s.double_quant or self.s.quant == "int8":
            return seq.alloc(bf16)
        absmax = seq.alloc(block_bytes(-(-(bf16 // 2) // NF4_BLOCKSIZE) * 4))
        w = seq.alloc(bf16)
        seq.free(absmax)
        return w

    def _loss_forward(self) -> None:
        t, seq = self.t, self.seq
        nv4 = t.logits_fp32
        # memory/loss.py's chain when the model's own lm_head forward makes the logits; a head that owns the lm_head
        # (StackProfile.owns_lm_head: TRL's tiled head, Liger's FLCE) makes the buffers its terms list (HeadBytes)
        hf_loss = not self.profile.owns_lm_head(self.m)
        if hf_loss and nv4 and t.loss_fwd >= 10 * nv4 // 4 and t.loss_bwd >= 3 * nv4:
            saved_extra = t.loss_bwd - 3 * nv4
            bf16 = seq.alloc(nv4 // 2)
            extra_saved = seq.alloc(saved_extra)  # softcapping: tanh output saved
            extra_tmp = seq.alloc(t.loss_fwd - 10 * nv4 // 4 - saved_extra)
            upcast = seq.alloc(nv4)
            self.logsm = seq.alloc(nv4)  # log_softmax output, saved for backward
            seq.free(extra_tmp, upcast)
            seq.free(*self.copies)  # autocast exits: its cache is cleared
            self.fsdp_after_logits()
            # accelerate convert_outputs_to_fp32 (not for a DeepSpeed engine: accelerate's _prepare_deepspeed does not
            # wrap its forward; h-q05-zero2-full-gc-x1 frees the bf16 logits right after the log_softmax; nor under
            # FSDP2: fc-l1-fsdp-full-gc-x2 and fc-l1-fsdp-lora-gc-x2 make no fp32 copy)
            fp32_copy = seq.alloc(nv4) if self.zero is None and self.fsdp is None else None
            seq.free(bf16)
            if fp32_copy is not None:
                seq.free(fp32_copy)  # Trainer.compute_loss drops outputs before backward
            self.loss_saved = [self.logsm, extra_saved]
        else:  # an owned head: its saved buffers and forward transients (one buffer each when it lists none)
            self.head_saved = [seq.alloc(x) for x in t.loss_saved]
            if self.ckpt_bwd:  # the final norm's output: the head keeps its own copy (s-l1-trl-full-gc: freed here)
                seq.free(self.final_ids[3])
            seq.free(*[seq.alloc(x) for x in t.loss_fwd_tmp or (t.loss_fwd - sum(t.loss_saved),)])
            seq.free(*self.copies)
            self.loss_saved = []

    def backward(self, first_micro: bool) -> None:
        s, t, seq = self.s, self.t, self.seq
        full = s.method == "full"
        new_grads = first_micro
        self.gathers("bwd", "head")
        if self.loss_saved:
            nv4 = t.logits_fp32
            nll_grad, lsm_grad = seq.alloc(nv4), seq.alloc(nv4)
            seq.free(nll_grad, *self.loss_saved)
            logits_grad = seq.alloc(nv4 // 2)  # ToCopyBackward to bf16
            seq.free(lsm_grad)
            self.fsdp_backward_start()
        else:  # the head's backward buffers; the lm_head weight's gradient is the last of them (full FT)
            head = [seq.alloc(x) for x in self._head_backward(new_grads)]
            self._autograd_workspace()
        tied = self.m.tie_word_embeddings
        if full and new_grads:  # lm_head backward: lm_head's (tied: the embedding's) gradient, the final norm's
            for g in self.head_groups:
                if self.ckpt_bwd and g.name == "norms":  # made in the final norm's backward (_ckpt_final_norm_backward)
                    continue
                if g.name != "embed_tokens" or tied:
                    grad = seq.alloc(grad_tensor(g))
                    if g.name == "embed_tokens":
                        self.tied_grad_id = grad
                    if self.grad_hook is None:
                        self.grads.append(grad)
                    elif g.name != "embed_tokens":  # (a tied weight's hook runs on the sum: _ckpt_embedding_backward)
                        self.grad_hook(grad)
                if g.name == self._head_weight() and not self.loss_saved:  # the owned head ends with its weight's gradient
                    seq.free(*head, *self.head_saved)
            self._autograd_workspace()
        if not self.loss_saved and not (full and new_grads):
            seq.free(*head, *self.head_saved)
        if self.ckpt_bwd:  # the gradient of the last hidden state, then the final norm's recorded backward
            carry = self._ckpt_final_norm_backward([logits_grad] if self.loss_saved else [], new_grads)
            self.fsdp_tail_reduce()
        elif self.fsdp_lora and self.loss_saved:  # its frozen final norm (layer_patterns.py)
            carry = self._frozen_final_norm_backward([logits_grad])
        else:
            carry = seq.alloc(self.carry)  # lm_head backward: the gradient of the last hidden state
            self._autograd_workspace()
            seq.free(*([logits_grad] if self.loss_saved else []), *self.final_ids)
            self.fsdp_tail_reduce()
        if s.grad_ckpt:  # estimator: no autocast copy through a checkpointed backward
            seq.free(self.lm_cache)
        layers_start = len(seq.ops)
        self.first_pass = False
        self.gathers("bwd", "head", end=True)
        for k in reversed(range(self.L)):
            kept = [x for x in self.ckpt[k : k + 1] if x is not None] if s.grad_ckpt else self.saved[k]
            cache = self.cache[k] if self.cache else []
            made_of = (self.adapter_copies[k], self.dequant[k], self.layers[k], self.layer_groups[k])
            if self.ckpt_bwd:  # its recorded backward; the carried gradient is added into in place
                inputs = [*self.rotary, *kept] if k == 0 else kept  # layer 0 drops the rotary tables' last reference
                self.gathers("bwd", k)
                (grads,) = self.repeated(("ckpt_backward", k == 0, new_grads), made_of, inputs,
                                         partial(self._ckpt_backward_layer, k, inputs, new_grads))  # fmt: skip
                self.gathers("bwd", k, end=True)
            else:  # Unsloth's Gemma 3: its recorded backward (unsloth_gemma3_layer.py); else the summary
                layer = self._backward_layer if self.unsloth_g3 is None else self._unsloth_gemma3_backward_layer
                self.gathers("bwd", k)
                (carry,), grads = self.repeated(("backward", k == self.L - 1, new_grads), made_of, [carry, *kept, *cache],
                                                partial(layer, k, carry, kept, cache, new_grads))  # fmt: skip
                self.gathers("bwd", k, end=True)
            if self.fsdp is not None:  # reduce-scattered after the layer's backward (fsdp_steps.py)
                self.fsdp_reduce(k, grads)
            else:
                self.grads += grads
        if new_grads:
            self.grad_stretches.append((layers_start, len(seq.ops)))
        if self.ckpt_bwd:
            self.gathers("bwd", "embed")
            self._ckpt_embedding_backward(carry, new_grads)
            self.fsdp_reduce_root()
            seq.free(self.quant)
            if self.zero is not None:
                self.zero_backward_end()
            self.gathers("bwd", "embed", end=True)
            return
        seq.free(*self.rotary)  # layer 0's backward drops the last reference (activations.rotary_tables)
        self.gathers("bwd", "embed")
        seq.free(carry)  # consumed by the embedding's backward
        self.fsdp_reduce_root()
        if self.zero is not None:
            self.zero_backward_end()
        self.gathers("bwd", "embed", end=True)  # (ZeRO-3: the embedding's release, the coordinator's leftovers)
        if not s.grad_ckpt:
            seq.free(self.lm_cache)
        if full and new_grads:
            embed = next(g for g in self.head_groups if g.name == "embed_tokens")
            if tied and self.profile.owns_lm_head(self.m):  # the owned head's gradient is contiguous: added in place
                seq.free(seq.alloc(t.tied_grad))
            elif tied:  # AccumulateGrad: the embedding's own gradient, then grad + it as a new tensor, old ones freed
                grad_bytes = seq.sizes[self.tied_grad_id]
                own = seq.alloc(t.tied_grad - grad_bytes)  # (estimator: tied_grad = both, 4 bytes per element)
                total = seq.alloc(grad_bytes)
                seq.free(own, self.tied_grad_id)
                self.grads[self.grads.index(self.tied_grad_id)] = self.tied_grad_id = total
            else:
                self.grads.append(seq.alloc(grad_tensor(embed)))
        seq.free(self.quant)

    def _backward_layer(self, k: int, carry: int, kept: list[int], cache: list[int], new_grads: bool):
        """Layer k's backward from the gradient of its output (`carry`); what its forward kept and its weights' autocast
        copies (`cache`) are freed at its end: ([the gradient of its input], the gradients it made)."""
        s, seq = self.s, self.seq
        recompute = seq.alloc_all([*self.adapter_copies[k], *self.saved_layer]) if s.grad_ckpt else ()
        tmp = seq.alloc_all(self.t_bwd)
        grads: list[int] = []
        if new_grads and self.grad_hook is not None:  # DeepSpeed's LoRA: each adapter's gradient to its hook
            for x in self.layer_grad_sizes[k][::-1]:  # (fp32 sizes: PEFT's adapters; ZeRO-2's engine makes them bf16)
                self.grad_hook(seq.alloc(x // FP32 * self.zero.grad_itemsize))
        elif new_grads and not self.layer_grads:  # full FT: this layer's; LoRA: every adapter's at once
            if s.method == "full":  # backward reaches the layer's modules last to first: down_proj's gradient first
                sizes = self.layer_grad_sizes[k][::-1]
            else:  # (estimator's layer_backward)
                sizes = [x for xs in self.layer_grad_sizes for x in xs] if k == self.L - 1 else []
            grads = list(seq.alloc_all(sizes))
        whole = seq.alloc_all(self.whole_bwd)
        if self.layer_grads:
            grads = self._layer_grads_and_dequant(k, new_grads)
        else:
            for x in self.dequant[k]:
                seq.free(self._dequantize(x))
        seq.free(*whole, *tmp, *recompute)
        carry_in, carry = carry, seq.alloc(self.carry)  # this layer's input gradient replaces its output's
        seq.free(carry_in)
        seq.free(*kept)
        seq.free(*cache)
        return [carry], grads

    def _autograd_workspace(self) -> None:
        """The autograd thread's cuBLAS workspace, made by the first backward matmul right after its first output
        (every recorded history: lm_head's weight gradient in full FT, else the last hidden state's gradient; inside
        an owned head's backward), once per process; until then only the forward thread's exists."""
        if len(self.workspace) == 1:
            t = self.t
            self.workspace.append(self.seq.alloc(t.workspace - t.workspace // 2))

    def _head_backward(self, new_grads: bool) -> list[int]:
        """An owned head's backward buffers, less the lm_head weight's gradient when it is made as a gradient here."""
        t = self.t
        pieces = list(t.loss_bwd_tmp or (t.loss_bwd - sum(t.loss_saved),))
        grad = self._owned_head_grad() if new_grads else 0
        if grad:
            pieces[-1] -= grad  # the weight's gradient (0 left but for block rounding)
        return [x for x in pieces if x > 0]

    def _owned_head_grad(self) -> int:
        """Full FT with a head that owns the lm_head: the lm_head weight's gradient (the embedding's when tied), made
        inside the head's backward (heads.py: TRL's grad_weight cast, Liger's grad_weight), part of t.loss_bwd."""
        if self.s.method != "full" or not self.profile.owns_lm_head(self.m):
            return 0
        return sum(grad_tensor(g) for g in self.head_groups if g.name == self._head_weight())

    def _head_weight(self) -> str:
        """The trainable group that holds the lm_head weight."""
        return "embed_tokens" if self.m.tie_word_embeddings else "lm_head"

    def layer_grad_bytes(self) -> int:
        """The gradients the decoder layers' backward makes (the adapters' under LoRA / QLoRA)."""
        return sum(map(sum, self.layer_grad_sizes))


def _dequant_slots(layer: list[tuple[str, list[int], int]], anchors: tuple[int, int, int], n_pieces: int):
    """(index of the saved piece made while it is alive, bf16 bytes) for each 4-bit weight of a layer: q, k, v at
    the attention's first pieces, o_proj at the residual sum after it, gate / up at the MLP's first pieces,
    down_proj after the layer's last piece."""
    a0, a_end, m0 = anchors
    out = []
    for role, start, last in (("self_attn", a0, a_end), ("mlp", m0, n_pieces)):
        ws = [bf16 for name, pieces, bf16 in layer if len(pieces) > 1 and name.startswith(role)]
        out += [(min(start + j, last), w) for j, w in enumerate(ws[:-1])] + [(last, w) for w in ws[-1:]]
    other = [bf16 for name, pieces, bf16 in layer if len(pieces) > 1 and not name.startswith(("self_attn", "mlp"))]
    return out + [(n_pieces, w) for w in other]

