"""The vocabulary shared by every part of vramplan: validated, frozen records that refuse unknown keys (base.py)."""

from .base import Spec
from .calibration import Calibration
from .estimate import Estimate, GpuVerdict, MemoryBreakdown, ParamCounts
from .gpu import GpuSpec
from .model import SUPPORTED_MODEL_TYPES, LinearShape, MlaSpec, ModelSpec, MoeSpec, TracedActivations, TracedSpec
from .problems import ValidationError
from .run import RUN_SCHEMA_VERSION, MeasuredRun, Measurements, PhasePeaks, RunEnvironment
from .setup import (
    ATTNS,
    DTYPES,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    PARALLELS,
    QUANTS,
    LoraSpec,
    TrainingSetup,
    setup_label,
)

__all__ = [
    "ATTNS",
    "DTYPES",
    "METHODS",
    "OFFLOADS",
    "OPTIMIZERS",
    "PARALLELS",
    "QUANTS",
    "RUN_SCHEMA_VERSION",
    "SUPPORTED_MODEL_TYPES",
    "Calibration",
    "Estimate",
    "GpuSpec",
    "GpuVerdict",
    "LinearShape",
    "LoraSpec",
    "MeasuredRun",
    "Measurements",
    "MemoryBreakdown",
    "MlaSpec",
    "ModelSpec",
    "MoeSpec",
    "ParamCounts",
    "PhasePeaks",
    "RunEnvironment",
    "Spec",
    "TracedActivations",
    "TracedSpec",
    "TrainingSetup",
    "ValidationError",
    "setup_label",
]
