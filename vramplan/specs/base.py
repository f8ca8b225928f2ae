"""Spec: the base of every vramplan vocabulary type. Validated when made, immutable, strict about keys.

The subset of pydantic v2's BaseModel (frozen=True, extra="forbid") the project used, with its lax coercions
(scalars.py) and error messages (problems.py), in plain Python that imports in a few milliseconds:

    Spec(**fields), Spec.model_validate(dict), Spec.model_validate_json(text)  -> validated (ValidationError)
    spec.model_dump(mode="python" | "json"), spec.model_dump_json(indent=None)
    spec.model_copy(update={...}), Spec.model_construct(**fields)            -> not validated, as in pydantic
    Spec.model_fields                                                        -> name -> FieldInfo

Equal specs are the same class with equal fields; a spec hashes by its field values (a dict field: unhashable).
"""

import json
from typing import Any

from . import json_text
from .fields import REQUIRED
from .problems import Problems, ValidationError, in_json_words, problem
from .schema import Schema, build_schema


class _ModelFields:
    """`Spec.model_fields`: name -> FieldInfo, in declaration order."""

    def __get__(self, instance: Any, owner: type["Spec"]) -> dict:
        return owner._spec_schema_of().infos


class Spec:
    """Base of every vramplan vocabulary type: immutable, rejects unknown fields."""

    _spec_schema: Schema | None = None
    model_fields = _ModelFields()

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls._spec_schema = None  # built on first use (schema.py)

    def __init__(self, /, **data: Any):
        try:
            self._spec_fill(data)
        except Problems as refused:
            raise ValidationError(type(self).__name__, refused.problems) from None

    @classmethod
    def _spec_schema_of(cls) -> Schema:
        schema = cls._spec_schema
        if schema is None:
            schema = cls._spec_schema = build_schema(cls)
        return schema

    def _spec_fill(self, data: dict) -> None:
        """Validates `data` into this new instance's fields, then runs the after-validators. Raises Problems."""
        schema = self._spec_schema or self._spec_schema_of()
        values, problems, seen = {}, [], 0
        for name, check, default, factory in schema.fields:
            if name in data:
                seen += 1
                try:
                    values[name] = check(data[name])
                except Problems as refused:
                    problems += refused.at(name)
            elif factory is not None:
                values[name] = factory()
            elif default is not REQUIRED:
                values[name] = default
            else:
                problems.append(problem("missing", "Field required", data, (name,)))
        if seen < len(data):
            problems += [_unknown(key, data[key]) for key in data if key not in schema.names]
        if problems:
            raise Problems(problems)
        object.__setattr__(self, "__dict__", values)
        for validator in schema.after:
            try:
                validator(self)
            except ValueError as exc:
                raise Problems([problem("value_error", f"Value error, {exc}", data)]) from None

    @classmethod
    def _spec_from(cls, data: dict) -> "Spec":
        """A new instance from a dict (a nested field's input). Raises Problems."""
        spec = cls.__new__(cls)
        spec._spec_fill(data)
        return spec

    @classmethod
    def model_validate(cls, obj: Any) -> "Spec":
        """`obj` (a dict, or an instance, returned as it is) validated. Raises ValidationError."""
        if isinstance(obj, cls):
            return obj
        try:
            if not isinstance(obj, dict):
                raise Problems([problem("model_type", f"Input should be a valid dictionary or instance of {cls.__name__}", obj)])
            return cls._spec_from(obj)
        except Problems as refused:
            raise ValidationError(cls.__name__, refused.problems) from None

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> "Spec":
        """JSON text (NaN and Infinity read as floats, as pydantic read them) validated. Raises ValidationError,
        also for text that is not JSON or not an object."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError; an integer of more than 4300 digits
            reason = str(exc) if isinstance(exc, ValueError) else "recursion limit exceeded"
            raise ValidationError(cls.__name__, [problem("json_invalid", f"Invalid JSON: {reason}", text)]) from None
        if not isinstance(data, dict):
            raise ValidationError(cls.__name__, [problem("model_type", "Input should be an object", data)])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise in_json_words(exc) from None

    @classmethod
    def model_construct(cls, **values: Any) -> "Spec":
        """An instance of `values` and the defaults of the fields not given, without validation (unknown names
        dropped)."""
        spec = cls.__new__(cls)
        fields = {}
        for name, info in cls._spec_schema_of().infos.items():
            fields[name] = values[name] if name in values else info.get_default()
        object.__setattr__(spec, "__dict__", fields)
        return spec

    def model_copy(self, *, update: dict[str, Any] | None = None) -> "Spec":
        """A copy with `update`'s fields replaced, without validation (as pydantic's model_copy)."""
        spec = type(self).__new__(type(self))
        object.__setattr__(spec, "__dict__", {**self.__dict__, **(update or {})})
        return spec

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]:
        """The fields as plain dicts, recursively; mode="json": tuples as lists (floats stay floats)."""
        if mode not in ("python", "json"):
            raise ValueError(f"model_dump mode {mode!r}: accepted: python, json")
        return _plain(self, mode == "json")

    def model_dump_json(self, *, indent: int | None = None) -> str:
        """The fields as JSON text, as pydantic wrote it (json_text.py)."""
        return json_text.dumps(_plain(self, True), indent)

    def __setattr__(self, name: str, value: Any) -> None:
        raise ValidationError(type(self).__name__, [problem("frozen_instance", "Instance is frozen", value, (name,))])

    def __delattr__(self, name: str) -> None:
        raise ValidationError(type(self).__name__, [problem("frozen_instance", "Instance is frozen", None, (name,))])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Spec):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        values, names = self.__dict__, self._spec_schema_of().infos
        try:  # equal specs hold equal values, so both take the same branch
            return hash(tuple(map(values.__getitem__, names)))
        except TypeError:  # a dict or list field (a traced model's counts)
            return hash(tuple(_frozen(values[name]) for name in names))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._spec_fields_text(', ')})"

    def __str__(self) -> str:
        return self._spec_fields_text(" ")

    def _spec_fields_text(self, separator: str) -> str:
        values = self.__dict__
        return separator.join(f"{name}={values[name]!r}" for name in self._spec_schema_of().infos)


def _unknown(key: Any, value: Any) -> dict[str, Any]:
    if isinstance(key, str):
        return problem("extra_forbidden", "Extra inputs are not permitted", value, (key,))
    return problem("invalid_key", "Keys should be strings", key, (key,))


def _plain(value: Any, json_mode: bool) -> Any:
    """`value` with specs as dicts of their fields, recursively (json_mode: tuples as lists)."""
    if isinstance(value, Spec):
        values = value.__dict__
        return {name: _plain(values[name], json_mode) for name in value._spec_schema_of().infos}
    if isinstance(value, dict):
        return {k: _plain(v, json_mode) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_plain(v, json_mode) for v in value]
        return items if json_mode or isinstance(value, list) else tuple(items)
    return value


def _frozen(value):
    """A hashable stand-in for a field value: dicts and lists (a traced model's counts) as sorted / plain tuples."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value
