"""Annotation -> check: a function that returns the value as the field stores it, or raises Problems.

The annotations the specs use: str, int, float, bool, Any, Literal[...], X | None, unions of scalars,
tuple[X, ...], tuple[X, Y], dict[K, V], a nested Spec, and Annotated[X, Field(...)] for bounds.
"""

import math
import operator
from collections.abc import Callable, Iterable
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from .fields import FieldInfo
from .problems import Problems, fail, problem
from .scalars import COERCIONS

Check = Callable[[Any], Any]
#: a scalar coercion -> the type whose values it passes through unchanged (containers skip it for those)
_EXACT = {coerce: kind for kind, coerce in COERCIONS.items()}


def compile_check(annotation: Any, info: FieldInfo | None = None) -> Check:
    """The check for `annotation`; `info`'s bounds apply to the number inside it (through `| None`)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        for extra in metadata:
            if isinstance(extra, FieldInfo):
                info = extra if info is None else info.merged(extra)
        return compile_check(inner, info)
    if annotation in COERCIONS:
        return _bounded(COERCIONS[annotation], info)
    if annotation is Any:
        return _same
    if origin is Literal:
        return _literal(get_args(annotation))
    if origin is Union or origin is UnionType:
        members = [m for m in get_args(annotation) if m is not NoneType]
        inner = compile_check(members[0], info) if len(members) == 1 else _union(members, info)
        return _nullable(inner) if len(members) < len(get_args(annotation)) else inner
    if origin is tuple:
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return _tuple_of(compile_check(args[0]))
        return _fixed_tuple([compile_check(arg) for arg in args])
    if origin is dict:
        key, value = get_args(annotation)
        return _dict_of(compile_check(key), compile_check(value))
    if hasattr(annotation, "_spec_from"):
        return _nested(annotation)
    raise TypeError(f"a spec field cannot be {annotation!r}")


def _same(value: Any) -> Any:
    return value


def _number(limit: float) -> str:
    """A bound as pydantic prints it: 1.0 -> '1', 0.05 -> '0.05'."""
    return str(int(limit)) if float(limit).is_integer() and abs(limit) < 1e16 else repr(limit)


_BOUNDS = (
    ("gt", operator.gt, "greater_than", "greater than"),
    ("ge", operator.ge, "greater_than_equal", "greater than or equal to"),
    ("lt", operator.lt, "less_than", "less than"),
    ("le", operator.le, "less_than_equal", "less than or equal to"),
)


def _bounded(coerce: Check, info: FieldInfo | None) -> Check:
    """`coerce`, then the bounds of `info` (and allow_inf_nan=False: only finite numbers)."""
    tests = [] if info is None else [
        (compare, limit, kind, f"Input should be {words} {_number(limit)}")
        for name, compare, kind, words in _BOUNDS
        if (limit := getattr(info, name)) is not None
    ]  # fmt: skip
    finite = info is not None and info.allow_inf_nan is False
    if not tests and not finite:
        return coerce

    def check(value: Any) -> Any:
        number = coerce(value)
        if finite and not math.isfinite(number):
            fail("finite_number", "Input should be a finite number", value)
        for compare, limit, kind, msg in tests:
            if not compare(number, limit):
                fail(kind, msg, value)
        return number

    return check


def _literal(values: tuple) -> Check:
    table = {value: value for value in values}
    shown = [repr(value) for value in values]
    msg = "Input should be " + (" or ".join(shown) if len(shown) < 3 else ", ".join(shown[:-1]) + " or " + shown[-1])
    numeric = any(type(value) is int for value in values)

    def check(value: Any) -> Any:
        try:
            return table[value]
        except (KeyError, TypeError):
            if numeric and type(value) is int and not -(2**63) <= value < 2**63:
                fail("int_parsing_size", "Unable to parse input string as an integer, exceeded maximum size", value)
            fail("literal_error", msg, value)

    return check


def _nullable(inner: Check) -> Check:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


def _union(members: list, info: FieldInfo | None) -> Check:
    """pydantic's smart union: a value of exactly one member's type is that member's; else the first member
    that accepts it, in order (True in `float | int | str` becomes 1.0)."""
    checks = [compile_check(member, info) for member in members]
    exact = {member: check for member, check in zip(members, checks) if member in COERCIONS}
    tags = [getattr(member, "__name__", repr(member)) for member in members]

    def check(value: Any) -> Any:
        own = exact.get(type(value))
        if own is not None:
            return own(value)
        problems = []
        for tag, member_check in zip(tags, checks):
            try:
                return member_check(value)
            except Problems as refused:
                problems += refused.at(tag)
        raise Problems(problems)

    return check


def _items(value: Any) -> list | tuple:
    """A tuple field's input as a sequence: any iterable but text, bytes and dicts (pydantic's lax tuple)."""
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, str | bytes | bytearray | dict) or not hasattr(value, "__iter__"):
        fail("tuple_type", "Input should be a valid tuple", value)
    return list(value)


def _tuple_of(item: Check) -> Check:
    kind = _EXACT.get(item)

    def check(value: Any) -> tuple:
        items = _items(value)
        if kind is not None and all(type(x) is kind for x in items):
            return tuple(items)
        return _checked((index, item, x) for index, x in enumerate(items))

    return check


def _fixed_tuple(checks: list[Check]) -> Check:
    size = len(checks)

    def check(value: Any) -> tuple:
        items = _items(value)
        if len(items) > size:
            fail("too_long", f"Tuple should have at most {size} items after validation, not {len(items)}", value)
        missing = [problem("missing", "Field required", value, (index,)) for index in range(len(items), size)]
        return _checked(zip(range(size), checks, items), missing)

    return check


def _checked(items: Iterable[tuple[int, Check, Any]], missing: list | tuple = ()) -> tuple:
    """The values of (index, check, value) items, checked; Problems at their indices (then `missing`)."""
    out, problems = [], []
    for index, item, value in items:
        try:
            out.append(item(value))
        except Problems as refused:
            problems += refused.at(index)
    problems += missing
    if problems:
        raise Problems(problems)
    return tuple(out)


def _dict_of(key: Check, item: Check) -> Check:
    #: str keys and values of the item's own type (any value, for Any) pass unchanged
    fast = key is COERCIONS[str] and (item in _EXACT or item is _same)
    kind = _EXACT.get(item)

    def check(value: Any) -> dict:
        if not isinstance(value, dict):
            fail("dict_type", "Input should be a valid dictionary", value)
        if fast and all(type(k) is str and (kind is None or type(x) is kind) for k, x in value.items()):
            return dict(value)
        out, problems = {}, []
        for k, x in value.items():
            try:
                valid_key = key(k)
            except Problems as refused:
                problems += [{**p, "loc": (k, "[key]", *p["loc"])} for p in refused.problems]
            try:
                x = item(x)
            except Problems as refused:
                problems += refused.at(k)
            if not problems:
                out[valid_key] = x
        if problems:
            raise Problems(problems)
        return out

    return check


def _nested(spec: Any) -> Check:
    """A Spec field: an instance as it is, a dict validated into one."""
    msg = f"Input should be a valid dictionary or instance of {spec.__name__}"

    def check(value: Any) -> Any:
        if isinstance(value, spec):
            return value
        if isinstance(value, dict):
            return spec._spec_from(value)
        fail("model_type", msg, value)

    return check
