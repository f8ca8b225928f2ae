"""The lax scalar coercions of pydantic v2 (its conversion table), for str, int, float and bool fields.

What each accepts, beyond its own type (anything else is refused with pydantic's error type and message):
  int    a bool; a float or Decimal with no fractional part (finite, within int64); a string of decimal digits
         ('_' between digits, surrounding whitespace and a '.000' tail allowed), bytes likewise
  float  a bool or int; a Decimal; a string or bytes that float() reads ('inf' and 'nan' too)
  bool   0 and 1 (int, float, Decimal); the strings and bytes true/false, yes/no, on/off, 1/0, t/f, y/n, any case
  str    bytes and bytearray that are UTF-8
A value pydantic refused is refused with its error type and message (tests/test_specs_vs_pydantic.py).
"""

import math
import re
import sys
from typing import Any

from .problems import fail

#: a decimal integer as pydantic reads one from a string: digits, '_' between digits, an optional '.000' tail
_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0*)?")
#: a float outside this range does not fit pydantic's int64 conversion
_INT64 = 2.0**63
_TRUE = frozenset(("true", "yes", "on", "1", "t", "y"))
_FALSE = frozenset(("false", "no", "off", "0", "f", "n"))


def _decimal(value: Any) -> bool:
    """Whether `value` is a decimal.Decimal (without importing decimal: no Decimal exists before it is)."""
    module = sys.modules.get("decimal")
    return module is not None and isinstance(value, module.Decimal)


def _text(value: Any) -> str | None:
    """`value` as text when it is str or bytes (what is not UTF-8 reads as U+FFFD: no number)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return None


def to_str(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes | bytearray):
        try:
            return value.decode()
        except UnicodeDecodeError:
            fail("string_unicode", "Input should be a valid string, unable to parse raw data as a unicode string", value)
    fail("string_type", "Input should be a valid string", value)


def _int_from_number(value: Any) -> int:
    if not math.isfinite(value):
        fail("finite_number", "Input should be a finite number", value)
    if value != int(value):
        fail("int_from_float", "Input should be a valid integer, got a number with a fractional part", value)
    if isinstance(value, float) and not -_INT64 <= value < _INT64:
        fail("int_parsing_size", "Unable to parse input string as an integer, exceeded maximum size", value)
    return int(value)


def to_int(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, int):  # bool, IntEnum
        return int(value)
    if isinstance(value, float) or _decimal(value):
        return _int_from_number(value)
    text = _text(value)
    if text is not None:
        text = text.strip()
        if not _INT_TEXT.fullmatch(text):
            fail("int_parsing", "Input should be a valid integer, unable to parse string as an integer", value)
        try:
            return int(text.partition(".")[0])
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            fail("int_parsing_size", "Unable to parse input string as an integer, exceeded maximum size", value)
    fail("int_type", "Input should be a valid integer", value)


def to_float(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, int | float) or _decimal(value):
        try:
            return float(value)
        except OverflowError:
            fail("float_type", "Input should be a valid number", value)
    text = _text(value)
    if text is not None:
        text = text.strip()
        try:
            if text.isascii():
                return float(text)
        except ValueError:
            pass
        fail("float_parsing", "Input should be a valid number, unable to parse string as a number", value)
    fail("float_type", "Input should be a valid number", value)


def to_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    if isinstance(value, int | float) or _decimal(value):
        if value in (0, 1):
            return value == 1
        if (isinstance(value, int) or math.isfinite(value)) and value == int(value) and -_INT64 <= value < _INT64:
            fail("bool_parsing", "Input should be a valid boolean, unable to interpret input", value)
        fail("bool_type", "Input should be a valid boolean", value)
    text = _text(value)
    if text is not None:
        lowered = text.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        fail("bool_parsing", "Input should be a valid boolean, unable to interpret input", value)
    fail("bool_type", "Input should be a valid boolean", value)


#: the scalar types a field may name, and their coercions
COERCIONS = {str: to_str, int: to_int, float: to_float, bool: to_bool}
