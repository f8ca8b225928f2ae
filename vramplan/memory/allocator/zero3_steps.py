"""DeepSpeed ZeRO-3 on one GPU in the predicted sequence: the engine's init after the load, its gradient hooks and
its sub-group optimizer step (DeepSpeed 0.19.8, runtime/zero/stage3.py, bf16, the config of
vramplan/trainer/deepspeed_config.py: overlap_comm and contiguous_gradients on, HF's "auto" buckets and persistence
threshold; no offload, or the optimizer's).

Read from the recorded H200 history docs/allocator_traces/deepspeed/h-q15-zero3-full-gc-x1 (Qwen2.5-1.5B, each
allocation on its stream) and DeepSpeed's source:

* init: ``defragment`` (runtime/zero/utils.py:215-243) copies every parameter's partition (at world size 1 the
  whole parameter) to host memory, drops it on the GPU and calls ``empty_cache``; then the one flat bf16 buffer of
  all partitions comes back (``lp_param_buffer``, stage3.py:972). ``_create_fp32_partitions`` (:1170-1172) makes,
  per sub-group, ``converted = flat.to(device, fp32)`` (the previous sub-group's ``converted`` freed when the name is
  rebound, after the new one exists) and keeps its ``clone()``; the last ``converted`` is freed at its end.
  ``initialize_optimizer_states`` makes and frees fp32 zeros of the largest sub-group (:1304-1306). Then the IPG
  bucket (reduce_bucket_size bf16, kept, :780-784) and ``grad_partitions_flat_buffer`` (every trainable gradient in
  bf16, kept, :791-793). Sub-groups: each of the Trainer's param groups (weight decay, then none) cut where the
  partitions' sum first reaches sub_group_size (:1210-1233).
* after the init, every parameter above the persistence threshold is made and freed once, in module order (the
  history shows it at this point of every ZeRO-3 run; not read from the source);
* forward: the layers as without the engine. At world size 1 a fetch is no all-gather (memory/deepspeed.py
  zero3_gathers_copy): no allocation (the history's steady-step forward holds only activations);
* backward: each gradient's hook (__add_grad_to_ipg_bucket, :1621-1646) as ZeRO-2's (zero_steps.ZeroSteps.zero_hook):
  copied into the bucket and freed if it fits, else the bucket is reduced first; a gradient larger than the bucket
  stays until the next reduce. A reduce of a bucket holding more than one gradient concatenates them on the
  reduction stream (reduce_scatter_coalesced's ``torch.cat``, runtime/comm/coalesced_collectives.py:122, freed at
  once); partition_grads copies into the flat gradient buffer (no allocation). A tied embedding's own gradient is
  added in place into lm_head's, whose hook then runs;
* step (:2873-2931): the gradient norm's fp64 copy of each gradient in turn (get_grad_norm_direct, :2454-2456), then
  per sub-group the flattened bf16 gradients, their fp32 cast (the sub-group's ``.grad``), the bf16 copy freed, at
  step 0 fused AdamW's two states, the fp32 gradient freed (_release_sub_group).

With the optimizer offloaded (``offload_optimizer``, read from o-l1-zero3-full-gc-offopt-x1, Llama-3.2-1B): the fp32
partitions, initialize_optimizer_states' buffer and grad_partitions_flat_buffer are host memory (stage3.py:333,
:791-793), so the init makes only lp_param_buffer and the IPG bucket; a reduce runs each gradient's host round trip on
the reduction stream as with offloaded parameters (zero3_offload.Zero3OffloadSteps.zero3_offload_copies); the step
runs on the host.

One GPU, full fine-tuning whose layers run the recorded backward patterns or checkpointed LoRA whose layers run the
recorded no-grad forward (lora_no_grad_layer.py), one micro-step.
A mixin of sequence._Builder (it uses seq, zero, m, loaded_params, _param_groups and ZeroSteps' hook state and norm).
"""

from __future__ import annotations

from ...specs import ModelSpec
from ..deepspeed import SUB_GROUP_SIZE
from .rules import block_bytes
from .zero_steps import BF16, FP32, REDUCTION_STREAM, partition_bytes

#: transformers integrations/deepspeed.py trainer_config_finalize: "auto" stage3_param_persistence_threshold is
#: 10 * hidden_size; a parameter of at most that many elements stays gathered (parameter_offload.py
#: mark_persistent_parameters)
PERSISTENCE_FACTOR = 10


def sub_groups(numels: list[int], size: int = SUB_GROUP_SIZE) -> list[int]:
    """_create_fp16_sub_groups (stage3.py:1210-1233): a param group's partitions cut into sub-groups, each closed when
    its sum reaches `size` or at the group's last parameter; the elements of each."""
    if sum(numels) <= size:
        return [sum(numels)] if numels else []
    out, acc = [], 0
    for k, n in enumerate(numels):
        acc += n
        if acc >= size or k == len(numels) - 1:
            out.append(acc)
            acc = 0
    return out


def persistence_threshold(model: ModelSpec) -> int:
    return PERSISTENCE_FACTOR * model.hidden_size


class Zero3Steps:
    def zero3_partitioned_load(self, sizes: list[int], tied: int) -> list[int]:
        """The load under zero.Init (HF's from_config under a ZeRO-3 config) where the frozen weights' partitions stay
        (LoRA; full fine-tuning's defragment frees them all, so its load is the plain one): each parameter of `sizes`
        made, its partition (at world size 1 the whole tensor, partition_parameters.py:1836) made, the parameter freed,
        in module order, a tied lm_head's own weight (`tied` bytes) last; then every parameter made and freed once
        more (partition_parameters.py:2142) and the tied lm_head's partition freed (history o-l1-zero3-lora-gc-x1,
        Llama-3.2-1B, and the same run with Python stacks up to its crash in step 0's backward, not shipped). The
        partitions' ids, one per size (a 0-byte size's id makes nothing)."""
        seq, ranks = self.seq, self.zero.ranks
        parts, made = [], sizes + ([tied] if tied else [])
        self.zero3_full_sizes = list(sizes)
        for n in made:
            before = seq.alloc(n)
            parts.append(seq.alloc(partition_bytes(n, BF16, ranks)))  # rank 0's
            seq.free(before)
        for n in made:
            seq.free(seq.alloc(n))
        if tied:
            seq.free(parts.pop())
        return parts

    def _zero3_sub_groups(self) -> list[int]:
        """The engine's sub-groups' elements: the decay group's, then the no-decay group's (parameter order)."""
        out: list[int] = []
        ranks = self.zero.ranks
        for group in self._param_groups():  # each parameter's partition (ds_tensor: its elements / ranks, rounded up)
            out += sub_groups([-(-g.numel // ranks) for g in group for _ in range(g.count)])
        return out

    def zero3_init(self) -> None:
        """The engine's init after the Trainer's free_memory() (module docstring; offloaded parameters:
        zero3_offload.py). Under LoRA (history o-l1-zero3-lora-gc-x1, Llama-3.2-1B, read with Python stacks from the
        same run crashed in step 0's backward) the frozen weights keep their partitions; each of PEFT's fp32 adapters
        is partitioned (_convert_to_zero_parameters: a copy made, the adapter freed) and defragment frees the copies;
        lp_param_buffer holds them in fp32 (the engine casts no ZeRO-3 module to bf16), each sub-group's master is a
        clone alone (its ``.to(fp32)`` is the flat buffer itself), and no parameter pass follows."""
        seq, z = self.seq, self.zero
        if z.offload_params:
            return self.zero3_offload_init()
        subs = self._zero3_sub_groups()
        total = sum(subs)
        if z.adapters:  # (each adapter's partition: rank 0's elements of it, fp32)
            parts = [partition_bytes(seq.sizes[i], FP32, z.ranks) for i in self.adapter_ids]
            trainable = seq.replace_all(parts, self.adapter_ids)
            passed = []
        else:  # (over more ranks the load left rank 0's partitions: zero3_partitioned_load)
            trainable = [i for i, _ in self.loaded_params]
            passed = self.zero3_full_sizes if z.ranks > 1 else [seq.sizes[i] for i in trainable]
        seq.free(*trainable)  # defragment: to host memory, then empty_cache
        seq.empty_cache()
        seq.alloc(block_bytes(total * (FP32 if z.adapters else BF16)))  # lp_param_buffer
        if not z.offload:  # (with the optimizer offloaded the fp32 partitions and the gradient buffer are host memory)
            converted = None
            for n in subs:
                if not z.adapters:  # `converted = flat.to(fp32)`, the previous one freed once the new one exists
                    new = seq.alloc(block_bytes(n * FP32))
                    if converted is not None:
                        seq.free(converted)
                    converted = new
                seq.alloc(block_bytes(n * FP32))  # the fp32 master, kept
            if converted is not None:
                seq.free(converted)
            seq.free(seq.alloc(block_bytes(max(subs) * FP32)))  # initialize_optimizer_states' gradient buffer
        seq.alloc(block_bytes(z.bucket_numel * BF16))  # the IPG bucket, kept
        if not z.offload:
            seq.alloc(block_bytes(total * BF16))  # grad_partitions_flat_buffer, kept
        threshold = persistence_threshold(self.m) * BF16
        for nbytes in passed:  # the parameter pass (module docstring); ds_numel <= threshold persists
            if nbytes > threshold:  # (parameter_offload.py mark_persistent_parameters: ds_numel <= threshold)
                seq.free(seq.alloc(nbytes))
        self.zero3_subs = subs
        self.zero3_step_index = 0  # (over more ranks the fetches are all-gathers: zero3_offload.py's gathers)
        self.zero3_blocks: dict[int, int] = {}
        self._zero_reset()

    def zero3_concat(self) -> None:
        """A reduce of a bucket holding several gradients: their concatenation on the reduction stream, freed after
        partition_grads (which allocates nothing without offload; with it: zero3_offload.py)."""
        seq = self.seq
        cat = seq.alloc_on(block_bytes(self.zero_elements * BF16), REDUCTION_STREAM) if len(self.zero_numels) > 1 else None
        if self.zero.offload:
            self.zero3_offload_copies()
        if cat is not None:
            seq.free(cat)

    def zero3_step(self, first: bool) -> None:
        """The gradient norm and the sub-groups' steps (module docstring); with offload both run on the host."""
        seq = self.seq
        if self.zero.offload_params or self.zero.ranks > 1:  # the coordinator's release at the step (zero3_fetch.py
            self.zero3_gathers("step")  # release_and_reset_all; zero3_offload.py)
            self.zero3_gathers("step", end=True)
            self.zero3_step_index += 1
        if self.zero.offload:
            return self._zero_reset()
        self.zero_norm_copies()  # sub-group by sub-group, in parameter order
        for n in self.zero3_subs:
            flat = seq.alloc(block_bytes(n * BF16))
            grad = seq.alloc(block_bytes(n * FP32))
            seq.free(flat)
            if first:  # AdamW's exp_avg and exp_avg_sq, kept
                seq.alloc_all([block_bytes(n * FP32)] * 2)
            seq.free(grad)
        self._zero_reset()
