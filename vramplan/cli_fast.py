"""A fast path for the commands people run in loops (`estimate`, `fit`, `plan`): parse their flags without
building the click command tree (typer builds one pydantic TypeAdapter per parameter on every call, ~20 ms).

The flags are not a second copy: they are read from the command function's own signature (its `typer.Option`
annotations and defaults), so a flag added to a command is understood here at once. Anything this parser does
not understand exactly as click would (--help, an unknown or repeated-prefix flag, a positional argument, a
value that does not convert, a missing required option) returns None, and `main()` hands the command line to
typer, which gives the full behaviour and its error messages. tests/test_cli_fast.py checks that both parsers
give the same arguments.
"""

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from types import NoneType, UnionType

#: commands the fast path may run (simple option types only)
FAST_COMMANDS = ("estimate", "fit", "plan")
_SCALARS: dict[type, Callable[[str], object]] = {int: int, float: float, str: str, Path: Path}


#: a repeatable option (`Optional[list[str]]`, e.g. --from-config): every occurrence is appended
REPEATED = list


def _base_type(annotation) -> type | None:
    """int / float / str / Path / bool for a plain or Optional annotation, `REPEATED` for a list of str;
    None for anything else."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        rest = [a for a in args if a is not NoneType]
        return _base_type(rest[0]) if len(rest) == 1 else None
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,):
        return REPEATED
    return annotation if annotation in (*_SCALARS, bool) else None


class _Source:
    def __init__(self, name: str) -> None:
        self.name = name


class FastContext:
    """What the commands ask click's Context for: which parameters the command line gave
    (``get_parameter_source(name).name`` is "COMMANDLINE" or "DEFAULT", as click's ParameterSource)."""

    def __init__(self, given: set[str]) -> None:
        self._given = given

    def get_parameter_source(self, name: str) -> _Source:
        return _Source("COMMANDLINE" if name in self._given else "DEFAULT")


def _is_context(hint) -> bool:
    return isinstance(hint, type) and hint.__name__ == "Context"


def _options(func: Callable) -> dict[str, tuple[str, type, bool]] | None:
    """flag -> (parameter name, type, value for a bool flag); None when a parameter is not a simple option."""
    hints = typing.get_type_hints(func, include_extras=True)
    flags: dict[str, tuple[str, type, bool]] = {}
    for name in inspect.signature(func).parameters:
        hint = hints.get(name)
        if _is_context(hint):
            continue  # filled by parse() with a FastContext
        if typing.get_origin(hint) is not typing.Annotated:
            return None
        base, *meta = typing.get_args(hint)
        info = next((m for m in meta if type(m).__name__ == "OptionInfo"), None)
        kind = _base_type(base)
        if info is None or kind is None:
            return None
        decls = ([info.default] if isinstance(info.default, str) and info.default.startswith("-") else [])
        decls += list(info.param_decls or ())
        if not decls:
            return None
        for decl in decls:
            on, _, off = decl.partition("/")
            flags[on.strip()] = (name, kind, True)
            if off:
                flags[off.strip()] = (name, kind, False)
    return flags


def parse(func: Callable, args: list[str]) -> dict[str, object] | None:
    """The keyword arguments click would pass `func` for `args`, or None when unsure (let typer decide)."""
    flags = _options(func)
    if flags is None:
        return None
    values: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag not in flags:
            return None
        name, kind, on = flags[flag]
        if kind is bool:
            if eq:
                return None
            values[name] = on
            i += 1
            continue
        if eq:
            raw = inline
        elif i + 1 < len(args):
            raw, i = args[i + 1], i + 1
        else:
            return None
        if kind is REPEATED:
            values[name] = [*values.get(name, []), raw]  # typer passes a list of every occurrence
            i += 1
            continue
        try:
            values[name] = _SCALARS[kind](raw)
        except ValueError:
            return None
        i += 1
    out: dict[str, object] = {}
    hints = typing.get_type_hints(func, include_extras=True)
    for name, p in inspect.signature(func).parameters.items():
        if _is_context(hints.get(name)):
            out[name] = FastContext(set(values))
        elif name in values:
            out[name] = values[name]
        elif _base_type(typing.get_args(hints.get(name))[0]) is REPEATED:
            out[name] = ()  # click passes an empty tuple for a repeatable option not given
        elif p.default is inspect.Parameter.empty:
            return None  # a missing required option: typer says which
        else:
            out[name] = p.default
    return out
