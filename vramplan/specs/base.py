"""Common pydantic base: frozen, strict about unknown keys."""

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every vramplan vocabulary type: immutable, rejects unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
