"""A spec class's fields as validation needs them, read from its annotations when the class is first used
(so forward references such as tuple["LinearShape", ...] resolve once the module has defined them)."""

import typing
from collections.abc import Callable
from typing import Any, ClassVar

from .checks import Check, compile_check
from .fields import REQUIRED, FieldInfo


class Schema:
    """`fields`: (name, check, default, factory) in declaration order, base classes' first; `infos`: name ->
    FieldInfo (the spec's `model_fields`); `after`: the model_validator methods, in definition order."""

    __slots__ = ("after", "fields", "infos", "names")

    def __init__(self, fields: list[tuple[str, Check, Any, Callable | None]], infos: dict[str, FieldInfo],
                 after: list[Callable]):  # fmt: skip
        self.fields = tuple(fields)
        self.infos = infos
        self.names = frozenset(infos)
        self.after = tuple(after)


def build_schema(cls: type) -> Schema:
    """Raises TypeError for an annotation no check exists for, NameError for an unresolvable forward reference."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields, infos = [], {}
    for name, annotation in hints.items():
        if name.startswith("_") or typing.get_origin(annotation) is ClassVar:
            continue
        declared = _declared(cls, name)
        info = declared if isinstance(declared, FieldInfo) else FieldInfo(default=declared)
        info.annotation = annotation
        infos[name] = info
        fields.append((name, compile_check(annotation, info), info.default, info.default_factory))
    return Schema(fields, infos, _after_validators(cls))


def _declared(cls: type, name: str) -> Any:
    """What the class body assigned to `name` (a default or a Field), REQUIRED when nothing."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return REQUIRED


def _after_validators(cls: type) -> list[Callable]:
    methods: dict[str, Callable] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            if getattr(attr, "__spec_after__", False):
                methods.pop(name, None)
                methods[name] = attr
    return list(methods.values())
