"""A spec's JSON text (`model_dump_json`), written exactly as pydantic v2 wrote it, so run records, request
files and the run ids hashed from a setup's JSON stay byte for byte what they were.

pydantic's text differs from json.dumps in three ways: no spaces without an indent, non-finite floats as
null, and floats spelled the way Rust's serde_json spells them (1e-7, not 1e-07; 0.00001, not 1e-05).
Text is escaped as json.dumps(ensure_ascii=False) escapes it (the same bytes).
"""

import math
from json.encoder import encode_basestring
from typing import Any


def float_text(number: float) -> str:
    """repr() with serde_json's exponents: 'e-7' for 'e-07', and the exponent -5 written out (0.0000123)."""
    if not math.isfinite(number):
        return "null"
    text = repr(number)
    mantissa, marker, exponent = text.partition("e-")
    if not marker:
        return text
    if exponent == "05":
        sign, digits = ("-", mantissa[1:]) if mantissa.startswith("-") else ("", mantissa)
        return f"{sign}0.0000{digits.replace('.', '')}"
    return f"{mantissa}e-{int(exponent)}"


def dumps(value: Any, indent: int | None = None) -> str:
    """`value` (dicts, lists, tuples, str, int, float, bool, None) as pydantic's JSON text."""
    return _text(value, indent, 0)


def _text(value: Any, indent: int | None, level: int) -> str:
    if isinstance(value, str):
        return encode_basestring(value)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, dict):
        items = [f"{encode_basestring(str(k))}:{' ' if indent is not None else ''}{_text(v, indent, level + 1)}"
                 for k, v in value.items()]  # fmt: skip
        return _joined("{", items, "}", indent, level)
    if isinstance(value, list | tuple):
        return _joined("[", [_text(v, indent, level + 1) for v in value], "]", indent, level)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _joined(opening: str, items: list[str], closing: str, indent: int | None, level: int) -> str:
    if not items:
        return opening + closing
    if indent is None:
        return opening + ",".join(items) + closing
    inner = "\n" + " " * (indent * (level + 1))
    return opening + inner + ("," + inner).join(items) + "\n" + " " * (indent * level) + closing
