"""A fast path for the commands people run in loops (`estimate`, `fit`, `plan`): parse their flags without
importing typer or building the click command tree (together ~60 ms of a ~0.25 s call).

The flags are not a second copy: a command's *flag table* is read from the command function's own signature
(its `typer.Option` annotations and defaults, `flag_table`), so a flag added to a command is understood at
once. The tables are cached as JSON (`cached_tables`, keyed by a hash of the CLI's source files), so a later
call parses without importing the CLI module at all. Anything this parser does not understand exactly as click
would (--help, an unknown flag, a positional argument, a value that does not convert, a missing required
option) returns None, and the entry point hands the command line to typer, which gives the full behaviour
and its error messages. tests/test_cli_fast.py checks that both parsers give the same arguments.
"""

import hashlib
import inspect
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from types import NoneType, UnionType

#: commands the fast path may run (simple option types only)
FAST_COMMANDS = ("estimate", "fit", "plan")
#: value converters by kind name; "bool" flags take no value, "repeated" (Optional[list[str]]) appends
_CONVERT: dict[str, Callable[[str], object]] = {"int": int, "float": float, "str": str, "path": str}
_KINDS: dict[object, str] = {int: "int", float: "float", str: "str", Path: "path", bool: "bool"}
#: the files whose content decides the tables (a change to any of them makes a new cache file)
_SOURCES = ("cli.py", "cli_options.py", "cli_fast.py")
_CACHE_ENV = "VRAMPLAN_CLI_CACHE"


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


def _kind(annotation) -> str | None:
    """The kind name of a plain or Optional annotation; "repeated" for a list of str; None for anything else."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        rest = [a for a in args if a is not NoneType]
        return _kind(rest[0]) if len(rest) == 1 else None
    if typing.get_origin(annotation) is list and args == (str,):
        return "repeated"
    return _KINDS.get(annotation)


def _is_context(hint) -> bool:
    return isinstance(hint, type) and hint.__name__ == "Context"


def flag_table(func: Callable) -> dict | None:
    """{"flags": {flag: [param, kind, value of a bool flag]}, "params": [[name, kind, default, required]]} of a
    command function (kind "context" for its click Context); None when a parameter is not a simple option."""
    hints = typing.get_type_hints(func, include_extras=True)
    flags: dict[str, list] = {}
    params: list[list] = []
    for name, p in inspect.signature(func).parameters.items():
        hint = hints.get(name)
        required = p.default is inspect.Parameter.empty
        if _is_context(hint):
            params.append([name, "context", None, False])
            continue
        if typing.get_origin(hint) is not typing.Annotated:
            return None
        base, *meta = typing.get_args(hint)
        info = next((m for m in meta if type(m).__name__ == "OptionInfo"), None)
        kind = _kind(base)
        if info is None or kind is None:
            return None
        decls = [info.default] if isinstance(info.default, str) and info.default.startswith("-") else []
        decls += list(info.param_decls or ())
        if not decls:
            return None
        for decl in decls:
            on, _, off = decl.partition("/")
            flags[on.strip()] = [name, kind, True]
            if off:
                flags[off.strip()] = [name, kind, False]
        params.append([name, kind, None if required else p.default, required])
    return {"flags": flags, "params": params}


def parse(func: Callable, args: list[str]) -> dict[str, object] | None:
    """The keyword arguments click would pass `func` for `args`, or None when unsure (let typer decide)."""
    table = flag_table(func)
    return parse_table(table, args) if table is not None else None


def parse_table(table: dict, args: list[str]) -> dict[str, object] | None:
    """`parse` over a flag table (as `flag_table` makes it, or read back from the cache)."""
    flags = table["flags"]
    values: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag not in flags:
            return None
        name, kind, on = flags[flag]
        if kind == "bool":
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
        i += 1
        if kind == "repeated":
            values[name] = [*values.get(name, []), raw]  # typer passes a list of every occurrence
            continue
        try:
            values[name] = _CONVERT[kind](raw)
        except ValueError:
            return None
    out: dict[str, object] = {}
    for name, kind, default, required in table["params"]:
        if kind == "context":
            out[name] = FastContext(set(values))
        elif name in values:
            out[name] = Path(values[name]) if kind == "path" else values[name]
        elif required:
            return None  # a missing required option: typer says which
        else:
            out[name] = () if kind == "repeated" else default  # click: an empty tuple for an absent repeatable
    return out


def _cache_path() -> Path | None:
    base = os.environ.get(_CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vramplan"
    )
    here = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    try:
        for name in _SOURCES:
            digest.update((here / name).read_bytes())
    except OSError:
        return None
    return Path(base) / f"cli-flags-{digest.hexdigest()[:16]}.json"


def _well_formed(tables) -> bool:
    """A cache file's content is a table per fast command, each {"flags": {flag: [name, kind, bool]},
    "params": [[name, kind, default, required], ...]}."""
    if not isinstance(tables, dict) or set(tables) != set(FAST_COMMANDS):
        return False
    for t in tables.values():
        if not isinstance(t, dict) or not isinstance(t.get("flags"), dict) or not isinstance(t.get("params"), list):
            return False
        if not all(isinstance(v, list) and len(v) == 3 and v[1] in (*_CONVERT, "bool", "repeated")
                   for v in t["flags"].values()):  # fmt: skip
            return False
        if not all(isinstance(p, list) and len(p) == 4 and isinstance(p[0], str) for p in t["params"]):
            return False
    return True


def cached_tables() -> dict[str, dict] | None:
    """The fast commands' flag tables: read from the cache, else built from cli.py (which imports typer) and
    written through a temporary file and rename; None when a command's flags are not all simple options."""
    path = _cache_path()
    if path is not None:
        try:
            tables = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tables = None
        if _well_formed(tables):
            return tables  # anything else (a damaged or foreign file) is rebuilt below
    from . import cli

    tables = {name: flag_table(getattr(cli, name)) for name in FAST_COMMANDS}
    if any(t is None for t in tables.values()):
        return None
    if path is not None:
        from .atomic import replace_atomically

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(path, json.dumps(tables))
        except OSError:
            pass  # an unwritable cache only costs speed
    return tables
