"""How a spec declares its fields: `Field(...)` for defaults and bounds, `model_validator` for cross-field checks.

    class LoraSpec(Spec):
        rank: int = Field(default=16, gt=0, le=MAX_LORA_RANK)
        dropout: float = Field(default=0.05, ge=0.0, lt=1.0, allow_inf_nan=False)

`Annotated[int, Field(ge=0)]` puts the same bounds on a type (inside `X | None`, tuples and dicts too).
"""

from collections.abc import Callable
from typing import Any


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of a field that has none: leaving it out is an error ("Field required")
REQUIRED: Any = _Required()


class FieldInfo:
    """One field's default and bounds; `annotation` is set when its class is first used."""

    __slots__ = ("allow_inf_nan", "annotation", "default", "default_factory", "ge", "gt", "le", "lt")

    def __init__(
        self,
        default: Any = REQUIRED,
        *,
        default_factory: Callable[[], Any] | None = None,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
        allow_inf_nan: bool | None = None,
    ):
        self.default, self.default_factory = default, default_factory
        self.gt, self.ge, self.lt, self.le = gt, ge, lt, le
        self.allow_inf_nan = allow_inf_nan
        self.annotation: Any = None

    def is_required(self) -> bool:
        return self.default is REQUIRED and self.default_factory is None

    def get_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default

    def merged(self, other: "FieldInfo") -> "FieldInfo":
        """These bounds with `other`'s set on top (Annotated metadata inside a field's own Field)."""
        info = FieldInfo(self.default, default_factory=self.default_factory)
        for name in ("gt", "ge", "lt", "le", "allow_inf_nan"):
            theirs = getattr(other, name)
            setattr(info, name, getattr(self, name) if theirs is None else theirs)
        return info

    def __repr__(self) -> str:
        shown = {name: getattr(self, name) for name in self.__slots__ if name != "annotation"}
        return "FieldInfo(" + ", ".join(f"{k}={v!r}" for k, v in shown.items() if v not in (None, REQUIRED)) + ")"


def Field(default: Any = REQUIRED, **options: Any) -> Any:  # noqa: N802 - named as pydantic's, which specs used
    """A field's default, or `default_factory`, and bounds: gt/ge/lt/le for numbers, allow_inf_nan=False to
    refuse inf and nan in a float (FieldInfo's keywords; typed Any so that `rank: int = Field(...)` reads)."""
    return FieldInfo(default, **options)


def model_validator(*, mode: str) -> Callable[[Callable], Callable]:
    """Marks a method that checks a whole spec after its fields are valid (mode="after", the only mode):
    it returns self or raises ValueError, which becomes the spec's ValidationError."""
    if mode != "after":
        raise ValueError(f"model_validator mode {mode!r}: only 'after' is supported")

    def mark(method: Callable) -> Callable:
        method.__spec_after__ = True  # type: ignore[attr-defined]
        return method

    return mark
