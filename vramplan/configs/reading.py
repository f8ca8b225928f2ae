"""One config file as read: the setup flags it sets, the model it names, what it assumed.

A `Reading` speaks the CLI's vocabulary: `values` maps the setup parameter names of `vramplan
estimate` (`lora_rank`, `seq_len`, `grad_ckpt`, ...) to values, so the resolver can lay the file
under the flags given on the command line. Pure Python: no torch, nothing from the file executed.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VramplanError


class ConfigFileError(VramplanError):
    """A training config that cannot be read (malformed, unsafe, unknown kind, bad value)."""


@dataclass
class Reading:
    """What one file says. `problems` are values the file sets that vramplan cannot model (param ->
    one-line message): an error unless the command line gives that parameter explicitly."""

    source: str
    kind: str
    values: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    assumptions: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)

    def note(self, text: str) -> None:
        """Record an assumption ("key X changes memory but is not modelled"), prefixed by the file name."""
        self.assumptions.append(f"{self.source}: {text}")

    def problem(self, param: str, text: str) -> None:
        self.problems.setdefault(param, f"{self.source}: {text}")

    def fail(self, text: str) -> ConfigFileError:
        return ConfigFileError(f"{self.source}: {text}")


def as_bool(r: Reading, key: str, value: Any) -> bool:
    """A YAML/JSON boolean (or the strings true/false a CLI wrote). Raises ConfigFileError."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise r.fail(f"{key} {value!r}: accepted: true | false")


def as_int(r: Reading, key: str, value: Any) -> int:
    """A positive integer (an integral float or digit string is accepted). Raises ConfigFileError."""
    if isinstance(value, bool):
        raise r.fail(f"{key} {value!r}: accepted: a positive integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value <= 0:
        raise r.fail(f"{key} {value!r}: accepted: a positive integer")
    return value


def as_float(r: Reading, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise r.fail(f"{key} {value!r}: accepted: a number")
    try:
        return float(value)
    except ValueError:
        raise r.fail(f"{key} {value!r}: accepted: a number") from None


def relative_path(value: str, base: Path) -> Path:
    """`value` as a path: relative to the config file's folder when it exists there, else to the
    working directory (where Axolotl / LLaMA-Factory resolve it when launched)."""
    path = Path(value).expanduser()
    if not path.is_absolute() and (base / path).exists():
        return base / path
    return path
