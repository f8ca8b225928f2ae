"""vramplan: will this fine-tuning job fit, on which GPUs, how fast and at what cost."""

__version__ = "0.1.0"
