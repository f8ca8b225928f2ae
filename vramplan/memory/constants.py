"""Every fixed number of the memory model, each with its source.

Library numbers come from the source of the versions named in `STACK_VERSIONS`;
"prior" numbers are starting values that `vramplan calibrate` refits from measured runs.
"""

KIB = 1024
MIB = 1024**2
GIB = 1024**3

#: versions whose source the constants below were read from (shared/reference/memory_model.md)
STACK_VERSIONS = {
    "torch": "2.13.0",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "bitsandbytes": "0.50.2",
    "accelerate": "1.15.0",
}

BYTES_PER_DTYPE = {"bf16": 2, "fp16": 2, "fp32": 4}

# --- PyTorch caching allocator (c10/cuda/CUDACachingAllocator.cpp) ---
#: every block is a multiple of kMinBlockSize
ALLOC_BLOCK_BYTES = 512

# --- cuBLAS workspaces (aten/src/ATen/cuda/CublasHandlePool.cpp::parseChosenWorkspaceSize) ---
#: sm90+ default ":4096:8" = 4096 KiB x 8
CUBLAS_WORKSPACE_SM90_BYTES = 4096 * KIB * 8
#: older GPUs default ":4096:2:16:8" = 4096 KiB x 2 + 16 KiB x 8
CUBLAS_WORKSPACE_OLDER_BYTES = 4096 * KIB * 2 + 16 * KIB * 8
#: one handle for the main thread, one for the autograd engine's device thread (thread-local PoolWindow)
CUBLAS_HANDLES_IN_TRAINING = 2

# --- bitsandbytes 4-bit (bitsandbytes/functional.py::quantize_4bit, nn/modules.py::Params4bit) ---
NF4_BLOCKSIZE = 64
#: second-level blocksize of the nested (double) quantization of absmax
NF4_DQ_BLOCKSIZE = 256
#: QuantState.code: fp32[16] per matrix
NF4_CODE_BYTES = 16 * 4
#: state2.code: the dynamic map fp32[256] copied per matrix; offset: 0-d fp32
NF4_DQ_CODE_BYTES = 256 * 4
NF4_DQ_OFFSET_BYTES = 4

# --- bitsandbytes 8-bit optimizers (bitsandbytes/optim/optimizer.py::Optimizer2State.init_state) ---
#: tensors with fewer elements than min_8bit_size keep 32-bit states
BNB_MIN_8BIT_SIZE = 4096
#: blockwise state quantization: one fp32 absmax per 256 elements, per state
BNB_STATE_BLOCKSIZE = 256
#: paged buffers are used only for tensors with at least this many elements (get_state_buffer)
BNB_PAGED_MIN_NUMEL = 100_000

# --- Adafactor (transformers/optimization.py::Adafactor.step): fp32 grad, fp32 param, update, factor product ---
ADAFACTOR_TRANSIENT_FP32_COPIES = 4

# --- priors refitted by calibration (vramplan/calibration/*.json) ---
#: CUDA context + module images on Hopper with torch 2.x lazy loading (memory_model.md section 7: 0.5-1.0 GiB budget)
PRIOR_CUDA_CONTEXT_BYTES = 600 * MIB
#: fraction of peak allocated that the caching allocator keeps reserved on top (memory_model.md section 7: 2-10 %)
PRIOR_FRAGMENTATION = 0.03
#: with expandable_segments most cross-segment fragmentation should disappear
PRIOR_FRAGMENTATION_EXPANDABLE = 0.01
#: stranded fp32 logits-sized blocks, as a multiple of 4 N V bytes
PRIOR_FRAGMENTATION_LOGITS = 1.0
#: the same with expandable_segments (pages are mapped into one growing range: fewer holes stranded)
PRIOR_FRAGMENTATION_LOGITS_EXPANDABLE = 0.5
#: transient gradient buffers inside one decoder layer's backward, units of b*s*h bytes:
#: about two I-wide bf16 gradients plus a few h-wide ones (memory_model.md section 5.6, E2: 20-30 units tiny model)
PRIOR_T_BWD_I_FACTOR = 4.0
PRIOR_T_BWD_CONST_UNITS = 6.0

# --- measured on the H100 campaign (vramplan/runs/shipped/h100-sxm), source line not yet pinned down ---
#: LLM.int8 QLoRA keeps ~1.48 bytes per quantized weight alive from the forward to the end of backward,
#: checkpointing or not (llama-3.1-8b int8 r16 s2048: forward 25.02 GiB measured vs 15.41 GiB without it)
INT8_TRAINING_BYTES_PER_PARAM = 1.48
#: the second gradient of a tied embedding (embedding backward, after lm_head's) costs 4 bytes per element
#: while it is accumulated (llama-3.2-1b/3b full FT, bf16 and fp32: +0.98/+1.47 GiB at the end of backward)
TIED_EMBEDDING_GRAD_BYTES_PER_ELEMENT = 4
#: LoRA on fused MoE experts (PEFT ParamWrapper) materialises about one bf16 copy of a layer's expert weights
#: during that layer's backward (OLMoE r16 all-linear: +0.9 GiB over the layer recompute; 2 B x 403 M = 0.75 GiB)
EXPERT_LORA_BACKWARD_BYTES_PER_PARAM = 2
