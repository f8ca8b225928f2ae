"""Calibration: named, bounded correction constants fitted from run records."""

from typing import Annotated

from .fields import Field

from .base import Spec


class Calibration(Spec):
    version: str
    #: constant name -> fitted value
    constants: dict[str, Annotated[float, Field(allow_inf_nan=False)]]
    #: constant name -> (low, high) bound it was fitted within
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    fitted_on: tuple[str, ...] = ()
    stack_versions: dict[str, str] = Field(default_factory=dict)
    notes: str = ""
