"""Loading the model and the PEFT wrap: the first stretch of the predicted sequence (sequence.py's "start", "load"
and "PEFT wrap"): every parameter created in module order (full / LoRA), or the checkpoint loaded and quantized on the
device with its warmup and prepare_model_for_kbit_training's fp32 cast (QLoRA); then lora_A / lora_B per target, in
the base layer's dtype, each then replaced by its fp32 copy.

A mixin of sequence._Builder (it uses the builder's m, s, t, seq, layers, profile, quant_steps and repeated); kept
apart so that sequence.py stays the training step's builder.
"""

from __future__ import annotations

from functools import partial

from ...models.params import param_counts, quantizable_params
from ..adapters import adapter_pairs, lora_targets
from ..constants import BYTES_PER_DTYPE
from .rules import block_bytes
from .tensors import layer_adapter_tensors, spread

BF16 = 2
#: vramplan/trainer/cuda_start.py::start_cuda makes and frees ``torch.empty(1)`` (fp32) before anything else: the
#: process's first segment (a 2 MiB small-pool one, kSmallBuffer), cached and unused from then on
START_CUDA_TENSOR_BYTES = 4
START_CUDA_SEGMENT_BYTES = 2 * 1024**2


class LoadSteps:
    def load(self) -> None:
        m, s, t, seq = self.m, self.s, self.t, self.seq
        layers = self.layers
        nbytes = 4 if s.method == "qlora" and self.profile.kbit_fp32_upcast else BYTES_PER_DTYPE[s.dtype]
        final_norm = m.hidden_size * nbytes
        linear_key = "weights.quantized" if s.method == "qlora" else "weights.linear"
        listed = sum(sum(x) for layer in layers for _, x, _ in layer) + final_norm - t.weights.get(linear_key, 0)
        residual = t.weights.get("weights.other", 0) - listed  # 0 unless a parameter kind is missing above
        embed, lm_head = t.weights.get("weights.embeddings", 0), t.weights.get("weights.lm_head", 0)
        if self.zero is not None and self.zero.stage == 3 and self.zero.ranks > 1:  # the terms hold rank 0's shards;
            counts = param_counts(m)  # zero.Init makes each parameter whole before partitioning it
            embed, lm_head = (block_bytes(counts[k] * BF16) if counts[k] else 0 for k in ("embed_tokens", "lm_head"))
            residual = 0
        if s.method == "qlora" or self.profile.loads_checkpoint:
            self._load_checkpoint(layers, embed, lm_head, final_norm, residual)
        elif self.zero is not None and self.zero.offload_params:  # (the terms hold no weights: all on the host)
            self.zero3_offloaded_load(layers, final_norm)
        elif self.fsdp_loads_on_cpu:  # FSDP moves each unit to the GPU in its prepare (fsdp_steps.py)
            self.loaded_params = []
        else:
            # each parameter's tensor with whether the Trainer gives it no weight decay (a bias or a norm weight),
            # in module order (a DeepSpeed engine frees them into its flat buffers: zero_steps.py)
            named = [(name, x) for layer in layers for name, pieces, _ in layer for x in pieces]
            listed = [(embed, False), *[(x, name.endswith(".bias") or "norm" in name) for name, x in named],
                      (final_norm, True), (residual, False)] + ([(lm_head, False)] if lm_head else [])  # fmt: skip
            tied = 0 if lm_head else t.tied_load
            if self.zero is not None and self.zero.stage == 3 and (self.zero.adapters or self.zero.ranks > 1):
                # zero.Init's partitions: the frozen weights' stay under LoRA, all of them over more ranks
                ids = self.zero3_partitioned_load([n for n, _ in listed], tied)
            else:
                ids = seq.alloc_all([n for n, _ in listed])
                if tied:  # tied: the lm_head Linear is built, then post_init ties it to the embedding
                    seq.free(seq.alloc(tied))
            self.loaded_params = [(i, nd) for i, (_, nd) in zip(ids, listed)]
        seq.mark("peft")
        if not self.fsdp_loads_on_cpu:  # (PEFT wraps a CPU-loaded model on the CPU)
            self._peft_wrap()

    def _peft_wrap(self) -> None:
        """lora_A, lora_B per target module, in module order, first in the base layer's dtype, then each replaced by its
        fp32 copy.

        peft tuners_utils.py::BaseTunerLayer._move_adapter_to_device_of_base_layer moves each new adapter to the GPU in
        its base layer's float dtype (_get_base_layer_device_and_dtype: the weight's, a bnb Linear4bit's compute_dtype;
        an int8 weight's is no float, so the adapter stays fp32), BaseTuner.inject_adapter making the target modules'
        adapters, then (_inject_parameters) the target parameters' (MoE experts); then PeftModel.__init__'s
        _cast_adapter_dtype (cast_adapter_dtype, autocast_adapter_dtype=True) replaces each bf16 / fp16 adapter weight
        by an fp32 copy, in model.modules() order (histories h-q7-qlora-r64-gc-s4096, s-olmoe-liger-lora-gc: every
        adapter in bf16, then each fp32 copy made and the bf16 one freed)."""
        m, s, seq = self.m, self.s, self.seq
        itemsize = self.profile.adapter_itemsize
        layers = layer_adapter_tensors(m, s, itemsize)
        if s.lora is None or itemsize != 4 or s.dtype not in ("bf16", "fp16") or s.quant == "int8":
            self.adapter_ids = list(seq.alloc_all([x for layer in layers for x in layer]))
            return
        halves = layer_adapter_tensors(m, s, 2)
        modules = adapter_pairs(m, s.lora)[: len(lora_targets(m, s.lora))]
        per_module = [spread(p.count, self.L) for p in modules] or [[0] * self.L]
        n = [2 * sum(counts) for counts in zip(*per_module)]  # per layer, the target modules' adapters
        moved = [list(seq.alloc_all(layer[:n_k])) for layer, n_k in zip(halves, n)]
        for ids, layer, n_k in zip(moved, halves, n):  # then the target parameters'
            ids += seq.alloc_all(layer[n_k:])
        #: the adapters' tensors, in module order (a DeepSpeed engine casts and flattens them: zero_steps.py)
        self.adapter_ids = list(seq.replace_all([x for layer in layers for x in layer], [i for half in moved for i in half]))

    def _load_checkpoint(
        self, layers: list[list[tuple[str, list[int], int]]], embed: int, lm_head: int, final_norm: int, residual: int
    ) -> None:
        """from_pretrained (with a BitsAndBytesConfig for QLoRA), then prepare_model_for_kbit_training's fp32 cast.
        A stack that loads every method from a saved checkpoint (StackProfile.loads_checkpoint: Unsloth) takes the same
        path for full / LoRA: the warmup of the weights' bytes in their dtype, then each weight loaded as it is kept.

        transformers core_model_loading.py::convert_and_load_state_dict_in_model loads the checkpoint in
        dot_natural_key order (lm_head, embed_tokens, layers 0, 1, 2, ... each in alphabetical order of its
        modules, norm); each 4-bit weight is loaded in bf16 and quantized on the device. PEFT's cast
        (utils/other.py, model.parameters() order) makes a new fp32 tensor and frees the bf16 one, then calls
        torch.cuda.empty_cache() (auto_clear_cache=True). A stack without that call (StackProfile.kbit_fp32_upcast
        False: TRL) keeps every non-quantized weight as loaded, in bf16."""
        m, s, seq = self.m, self.s, self.seq
        up = 2 if self.profile.kbit_fp32_upcast else 1  # resident bytes per loaded bf16 byte
        itemsize = BF16 if s.method == "qlora" else BYTES_PER_DTYPE[s.dtype]
        total = sum(param_counts(m).values())  # a tied lm_head counts once
        if s.method == "qlora":
            per_elem = 1 if s.quant == "int8" else 0.5  # HfQuantizer.quantized_element_size
            quantized = quantizable_params(m)
            weight_bytes = int(quantized * per_elem) + (total - quantized) * itemsize
        else:
            weight_bytes = total * itemsize
        # caching_allocator_warmup: the weights' bytes less the reserved bytes no tensor uses (start_cuda's segment),
        # as one fp16 tensor of byte_count // 2 elements
        warmup = weight_bytes - START_CUDA_SEGMENT_BYTES
        seq.free(seq.alloc(warmup // 2 * 2))
        head = seq.alloc(lm_head // up)
        bf16_embed = seq.alloc(embed // up)
        bf16_layers = []
        for layer in layers:  # a layer like the one before it repeats its ops (ops.Repeats)
            (kept,) = self.repeated(("load",), (layer,), [], partial(self._load_checkpoint_layer, layer, up))
            bf16_layers += kept
        bf16_params = [bf16_embed, *bf16_layers, seq.alloc(final_norm // up), seq.alloc(residual // up), head]
        if up == 1:
            return
        # param.data = param.data.to(torch.float32), parameter by parameter
        seq.replace_all([seq.sizes[i] * 2 for i in bf16_params], bf16_params)
        seq.empty_cache()

    def _load_checkpoint_layer(self, layer: list[tuple[str, list[int], int]], up: int) -> tuple[list[int]]:
        """One decoder layer of the checkpoint, its modules in alphabetical order: each 4-bit weight loaded in bf16 and
        quantized (quantization_steps), the other weights kept as loaded; ([those kept], in module order). `up`: resident
        bytes per loaded bf16 byte."""
        seq = self.seq
        kept: dict[int, int] = {}
        for k, (_, pieces, bf16) in sorted(enumerate(layer), key=lambda item: item[1][0]):
            if len(pieces) == 1 and (pieces[0] // up == bf16 or not self.quant_steps):  # kept as loaded (upcast later)
                kept[k] = seq.alloc(pieces[0] // up)
                continue
            loaded = seq.alloc(bf16)  # the bf16 checkpoint tensor, quantized on the device
            steps = self.quant_steps[len(pieces), sum(pieces)]
            made = [(seq.alloc(x), tmp) for x, tmp in steps]
            seq.free(loaded, *[i for i, tmp in made if tmp])
        return ([kept[k] for k in sorted(kept)],)  # back in module order
