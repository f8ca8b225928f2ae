"""The in-house spec base accepts and refuses what pydantic v2 did, with the same values, messages and JSON.

Every spec class is rebuilt as a pydantic model from its own declarations (the same annotations, bounds,
defaults and after-validators), and both are given the same inputs: the shipped run records, calibration
files, GPU and model catalogs and a few estimates, each also with every field and nested entry replaced by a
spread of good and bad values, removed, or joined by an unknown key. Skipped where pydantic is not installed
(vramplan does not depend on it).
"""

import json
import math
import sys
import tomllib
import types
import typing
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from gpu_catalog import list_gpus
from gpu_catalog.parse import MemoryReadings
from vramplan.estimator import estimate
from vramplan.models import list_models, resolve_model
from vramplan.runs import shipped_runs_dir
from vramplan.specs import Calibration, GpuSpec, LoraSpec, MeasuredRun, ModelSpec, Spec, TracedSpec, TrainingSetup
from vramplan.specs.fields import FieldInfo
from vramplan.specs.schema import build_schema
from vramplan.trainer.worker import MeasureRequest

pydantic = pytest.importorskip("pydantic")

RECORDS = sorted(shipped_runs_dir().rglob("*.json"))
CALIBRATIONS = sorted(Path(str(files("vramplan").joinpath("calibration_data"))).glob("*.json"))
#: a value of every kind a field may be given: pydantic's lax coercions, their limits, and plain wrong types
VALUES = [
    None, 0, 1, -1, 2, 3, 7, 4096, 4097, 16384, 16385, 65536, 262145, 1 << 30, 10**15, 2**63, -(2**63) - 1, 10**20, 10**400,
    3.0, 3.5, -4.0, 0.0, -0.0, 1.0, 0.999, 0.05, 1e-5, 1e-300, 1e20, 9.3e18, 2.0**63, math.inf, -math.inf, math.nan,
    Decimal("3"), Decimal("3.5"), Decimal("nan"), True, False, "3", " 3 ", "+3.0", "3.0", "3.5", "1_000", "1__0", "9" * 5000,
    "1e3", "1.5e", "-1", "٣", "inf", "nan", "true", "TRUE", " true", "no", "on", "", "x", "qlora", "nf4", "v5",
    "attention", "all-linear", "ddp", "sdpa", b"3", bytearray(b"1.5"), b"\xff", [], [1, 2], ["a"], [1.5],
    ("q_proj", "v_proj"), [1, "x"], {1, 2}, frozenset(["a"]), range(2), {}, {"a": 1}, {"a": "x"}, {"a": 1.5},
    {1: 2}, {"rank": 0}, {"rank": 8}, object(),
]  # fmt: skip
TRACED = {
    "model_type": "exotic", "transformers_version": "5.0",
    "param_counts": {"embedding": 10, "attention": 20},
    "linears": [{"name": "q_proj", "in_features": 8, "out_features": 8, "bias": False, "count": 2, "role": "attention"}],
    "activations": {"full": {"sdpa": {"layer_units": 12.5, "layer_units_per_token": 0.0, "final_units": 3}}},
}  # fmt: skip


def _translate(annotation: Any) -> Any:
    """`annotation` with specs replaced by their pydantic twins and Field bounds by pydantic's Field."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        extras = [pydantic.Field(**_bounds(a)) if isinstance(a, FieldInfo) else a for a in annotation.__metadata__]
        return Annotated[(_translate(args[0]), *extras)]
    if isinstance(annotation, type) and issubclass(annotation, Spec):
        return twin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return typing.Union[tuple(_translate(a) for a in args)]
    if origin in (tuple, dict):
        return origin[tuple(a if a is Ellipsis else _translate(a) for a in args)]
    assert annotation in (str, int, float, bool, Any, types.NoneType) or origin is Literal, annotation
    return annotation


def _bounds(info: FieldInfo) -> dict:
    return {k: getattr(info, k) for k in ("gt", "ge", "lt", "le", "allow_inf_nan") if getattr(info, k) is not None}


_TWINS: dict[type, Any] = {}


def twin(cls: type[Spec]) -> Any:
    """The pydantic model `cls` was before: frozen, extra="forbid", the same fields and after-validators."""
    if cls not in _TWINS:
        fields = {}
        for name, info in cls.model_fields.items():
            kwargs = _bounds(info)
            factory = info.default_factory
            if factory is not None:
                kwargs["default_factory"] = twin(factory) if isinstance(factory, type) and issubclass(factory, Spec) else factory
            elif not info.is_required():
                kwargs["default"] = info.default
            fields[name] = (_translate(info.annotation), pydantic.Field(**kwargs))
        validators = {f.__name__: pydantic.model_validator(mode="after")(f) for f in build_schema(cls).after}
        config = pydantic.ConfigDict(frozen=True, extra="forbid")
        _TWINS[cls] = pydantic.create_model(cls.__name__, __config__=config, __validators__=validators, **fields)
    return _TWINS[cls]


def _outcome(make) -> tuple:
    """("ok", Python dump repr, JSON text) or ("refused", [(type, loc, msg)])."""
    try:
        spec = make()
    except (pydantic.ValidationError, ValueError) as exc:
        # as a set: the order of a model's errors changed between pydantic 2.13 and 2.14 (missing before extra)
        return "refused", sorted(((e["type"], e["loc"], e["msg"]) for e in exc.errors()), key=repr)
    return "ok", repr(spec.model_dump()), spec.model_dump_json()


def _mismatch(cls: type[Spec], data: Any) -> str | None:
    """What differs between `cls` and its twin on `data` (as Python input, and as JSON text when it is JSON)."""
    mine, theirs = _outcome(lambda: cls.model_validate(data)), _outcome(lambda: twin(cls).model_validate(data))
    if mine != theirs:
        return f"{cls.__name__} {data!r:.300}:\n  mine   {mine!r:.600}\n  theirs {theirs!r:.600}"
    try:
        text = json.dumps(data)
    except (TypeError, ValueError):
        return None
    if _beyond_float(data):  # pydantic read such a JSON number as inf (a float field); the base refuses it
        return None
    mine, theirs = _outcome(lambda: cls.model_validate_json(text)), _outcome(lambda: twin(cls).model_validate_json(text))
    if mine != theirs:
        return f"{cls.__name__} JSON {text:.300}:\n  mine   {mine!r:.600}\n  theirs {theirs!r:.600}"
    return None


def _beyond_float(value: Any) -> bool:
    if isinstance(value, dict | list):
        return any(_beyond_float(v) for v in (value.values() if isinstance(value, dict) else value))
    return isinstance(value, int) and abs(value) > sys.float_info.max


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key inside `doc` and the first two indices of every list, depth first."""
    found = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc[:2]) if isinstance(doc, list) else ()
    for key, value in items:
        found.append((*prefix, key))
        found += _paths(value, (*prefix, key))
    return found


def _replaced(doc: Any, path: tuple, value: Any) -> Any:
    """A copy of `doc` with the entry at `path` set to `value` (or removed, for the `_GONE` value)."""
    doc = json.loads(json.dumps(doc))
    *parents, last = path
    target = doc
    for key in parents:
        target = target[key]
    if value is _GONE:
        del target[last]
    else:
        target[last] = value
    return doc


_GONE = object()


def _json_native(value: Any) -> bool:
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        return False


def _variants(cls: type[Spec], doc: dict) -> list[Any]:
    """`doc`, and `doc` with each entry replaced by each of VALUES, removed, or given an unknown sibling key.
    Inside a field typed Any (MeasureRequest.config, a config.json), only what JSON holds."""
    out = [doc, {**doc, "no_such_field": 1}, [doc], "x"]
    for path in _paths(doc):
        values = VALUES if cls is not MeasureRequest or path[0] != "config" else filter(_json_native, VALUES)
        out += [_replaced(doc, path, value) for value in (*values, _GONE)]
    return out


def _cases() -> list[tuple[type[Spec], dict]]:
    setup = TrainingSetup(method="qlora", quant="nf4", lora=LoraSpec(), grad_ckpt=True)
    estimates = [estimate(resolve_model(m), setup, gpu) for m, gpu in [("llama-3.1-8b", list_gpus()[0]), ("gemma-2-2b-it", None)]]
    request = MeasureRequest(model="llama-3.2-1b", setup=setup, config={"hidden_size": 8, "x": [1, 2.5]}, memory_cap_gib=20)
    readings = [tomllib.loads(p.read_text())["readings"] for p in Path(str(files("gpu_catalog").joinpath("gpus"))).glob("*.toml")]
    models = [resolve_model(m.name).model_dump(mode="json") for m in list_models()]
    runs = [json.loads(p.read_text()) for p in RECORDS]
    return [
        *[(MeasuredRun, run) for method, run in {r["setup"]["method"]: r for r in runs}.items() if method != "full"],
        *[(Calibration, json.loads(p.read_text())) for p in CALIBRATIONS],
        *[(GpuSpec, g.model_dump(mode="json")) for g in list_gpus()[:2]],
        *[(MemoryReadings, r) for r in readings if r][:1],
        *[(ModelSpec, m) for m in models if m["model_type"] in ("gemma2", "deepseek_v3", "qwen3_moe")],
        (ModelSpec, {**models[0], "model_type": "exotic", "traced": TRACED}),
        (TracedSpec, TRACED),
        *[(type(e), e.model_dump(mode="json")) for e in estimates],
        (MeasureRequest, request.model_dump(mode="json")),
    ]


@pytest.mark.parametrize(("cls", "doc"), _cases(), ids=lambda c: c.__name__ if isinstance(c, type) else "")
def test_the_spec_base_accepts_refuses_and_writes_what_pydantic_did(cls, doc):
    mismatches = [m for data in _variants(cls, doc) if (m := _mismatch(cls, data))]
    assert not mismatches, f"{len(mismatches)} mismatches, first:\n" + "\n".join(mismatches[:5])


def test_every_shipped_record_and_calibration_is_written_as_pydantic_wrote_it():
    for cls, paths in ((MeasuredRun, RECORDS), (Calibration, CALIBRATIONS)):
        for path in paths:
            text = path.read_text(encoding="utf-8")
            mine, theirs = cls.model_validate_json(text), twin(cls).model_validate_json(text)
            assert mine.model_dump_json(indent=2) == theirs.model_dump_json(indent=2), path.name
            assert mine.model_dump_json() == theirs.model_dump_json(), path.name
            assert repr(mine.model_dump(mode="json")) == repr(theirs.model_dump(mode="json")), path.name
            if cls is MeasuredRun:  # a frozen model hashes as the tuple of its field values
                assert hash(mine.setup) == hash(theirs.setup), path.name


@pytest.mark.parametrize("number", [0.0, -0.0, 1.0, 0.1, 1e-5, 1.5e-5, 9.87654321e-5, 1e-6, 1e-7, 2.5e-10, 5e-324,
                                    1e15, 1e16, 1.5e16, 123456789012345678.0, 1e21, 1.7976931348623157e308, -3e-5])  # fmt: skip
def test_floats_are_spelled_as_pydantic_spelled_them(number):
    setup = {"version": "x", "constants": {}, "bounds": {"f": (number, number)}}
    assert Calibration(**setup).model_dump_json() == twin(Calibration)(**setup).model_dump_json()
