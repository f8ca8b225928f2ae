"""ValidationError: what a spec refused, field by field, with pydantic v2's error types and messages.

`errors()` lists one dict per problem, {"type", "loc", "msg", "input"} as pydantic named them (so the
callers' messages, "--seq-len 0: Input should be greater than 0", read as before); str() is one line.
"""

from typing import Any, NoReturn


class ValidationError(ValueError):
    """Input a spec refused. Raised by a spec's constructor, `model_validate` and `model_validate_json`."""

    def __init__(self, title: str, problems: list[dict[str, Any]]):
        super().__init__(title, problems)
        self.title = title
        self._problems = problems

    def errors(self) -> list[dict[str, Any]]:
        """One dict per problem: type (pydantic's error type), loc (field path), msg, input (the value refused)."""
        return [dict(problem) for problem in self._problems]

    def error_count(self) -> int:
        return len(self._problems)

    def __str__(self) -> str:
        """'invalid TrainingSetup: seq_len: Input should be greater than 0; lora.rank: Field required'."""
        parts = []
        for problem in self._problems:
            where = ".".join(str(part) for part in problem["loc"])
            msg = problem["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return f"invalid {self.title}: " + "; ".join(parts)


class Problems(Exception):
    """Internal: the problems found below one value, their `loc` relative to it (becomes a ValidationError)."""

    def __init__(self, problems: list[dict[str, Any]]):
        self.problems = problems

    def at(self, key: str | int) -> list[dict[str, Any]]:
        """The problems with `key` put in front of their location."""
        return [{**problem, "loc": (key, *problem["loc"])} for problem in self.problems]


#: JSON input: the messages that name a type as JSON calls it (pydantic's wording for model_validate_json)
_JSON_WORDS = {
    "model_type": "Input should be an object",
    "dict_type": "Input should be an object",
    "tuple_type": "Input should be a valid array",
}


def in_json_words(exc: ValidationError) -> ValidationError:
    """`exc` as pydantic told it for JSON input: JSON's type names, and unknown keys first at each level."""
    problems = [{**p, "msg": _JSON_WORDS.get(p["type"], p["msg"])} for p in exc.errors()]
    return ValidationError(exc.title, _unknown_keys_first(problems, 0))


def _unknown_keys_first(problems: list[dict[str, Any]], depth: int) -> list[dict[str, Any]]:
    """`problems` (all below one location `depth` keys long) with the unknown keys at that level first."""
    first, below = [], {}
    for p in problems:
        loc = p["loc"]
        if len(loc) <= depth or (len(loc) == depth + 1 and p["type"] == "extra_forbidden"):
            first.append(p)
        else:
            below.setdefault(loc[depth], []).append(p)
    return first + [p for group in below.values() for p in _unknown_keys_first(group, depth + 1)]


def problem(kind: str, msg: str, value: Any, loc: tuple = ()) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def fail(kind: str, msg: str, value: Any) -> NoReturn:
    """Raises Problems with one problem of `kind` about `value`."""
    raise Problems([problem(kind, msg, value)])
