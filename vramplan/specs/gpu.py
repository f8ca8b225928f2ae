"""GpuSpec: one GPU SKU of the catalog."""

from .fields import Field

from .base import Spec


class GpuSpec(Spec):
    """A GPU as the planner needs it. Every number comes from the catalog TOML with its source."""

    id: str
    name: str
    aliases: tuple[str, ...] = ()
    #: torch.cuda.get_device_name() for this card, an alias too
    cuda_device_name: str | None = None
    architecture: str
    compute_capability: str
    #: total memory as the CUDA runtime reports it (torch total_memory), in bytes
    memory_bytes: int = Field(gt=0)
    #: True when memory_bytes is the marketed size minus a typical reservation, not a reading
    memory_bytes_estimated: bool = False
    memory_type: str
    bandwidth_gbps: float = Field(gt=0)
    #: dense bf16 tensor TFLOPS with fp32 accumulate; None where bf16 is emulated (T4, V100)
    bf16_tflops: float | None = None
    fp16_tflops: float | None = None
    interconnect: str
    #: GPU-GPU bandwidth per direction in GB/s used for multi-GPU time estimates; None for PCIe-only
    gpu_gpu_gbps: float | None = None
    tdp_w: int | None = None
    #: on-demand cloud price per GPU-hour in USD; None when no sourced price exists
    price_usd_per_hour: float | None = None
    price_note: str = ""
    flash_attention_2: bool = True
    sources: tuple[str, ...] = ()
