"""The spec base (vramplan/specs/base.py): what it accepts and refuses, and that shipped data round-trips.

The lax coercions listed here are pydantic v2's (its conversion table, lax mode), which the specs kept when they
stopped using pydantic; tests/test_specs_vs_pydantic.py checks many more against pydantic itself where it is
installed.
"""

import json
import math
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from vramplan.runs import shipped_runs_dir
from vramplan.specs import Calibration, GpuVerdict, LoraSpec, MeasuredRun, Spec, TrainingSetup, ValidationError

RECORDS = sorted(shipped_runs_dir().rglob("*.json"))
CALIBRATIONS = sorted(Path(str(files("vramplan").joinpath("calibration_data"))).glob("*.json"))


def _filled(doc: dict, spec: Spec) -> dict:
    """`doc` with the fields it leaves out at their defaults (older records predate some fields), recursively."""
    out = dict(doc)
    for name, info in type(spec).model_fields.items():
        value = getattr(spec, name)
        if name not in out:
            assert value == info.get_default(), name
            out[name] = value.model_dump(mode="json") if isinstance(value, Spec) else value
        elif isinstance(value, Spec) and isinstance(out[name], dict):
            out[name] = _filled(out[name], value)
    return out


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.name)
def test_a_shipped_run_record_round_trips(path):
    text = path.read_text(encoding="utf-8")
    run = MeasuredRun.model_validate_json(text)
    written = run.model_dump_json(indent=2) + "\n"
    assert json.loads(written) == _filled(json.loads(text), run)
    if json.loads(written) == json.loads(text):  # a record with every field is rewritten byte for byte
        assert written == text
    assert MeasuredRun.model_validate_json(written) == run


@pytest.mark.parametrize("path", CALIBRATIONS, ids=lambda p: p.name)
def test_a_shipped_calibration_round_trips_byte_for_byte(path):
    text = path.read_text(encoding="utf-8")
    calibration = Calibration.model_validate_json(text)
    # the files are written with json.dumps (calibration.py, throughput.py): byte for byte with it; pydantic's
    # spelling (model_dump_json) writes 1.5e-05 as 0.000015, so it is compared by value
    assert json.dumps(calibration.model_dump(mode="json"), indent=2) + "\n" == text
    assert json.loads(calibration.model_dump_json(indent=2)) == json.loads(text)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ({"rank": 8.0}, {"rank": 8}),  # an int field takes a whole float
        ({"rank": "8"}, {"rank": 8}),  # ... and a string of digits
        ({"rank": " 1_024 "}, {"rank": 1024}),
        ({"rank": True}, {"rank": 1}),
        ({"alpha": 32}, {"alpha": 32.0}),  # a float field takes an int, stored as float
        ({"alpha": "1e3"}, {"alpha": 1000.0}),
        ({"targets": ["q_proj", "v_proj"]}, {"targets": ("q_proj", "v_proj")}),  # a tuple field takes a JSON list
        ({"targets": b"x".split()}, {"targets": ("x",)}),  # bytes become text
    ],
)
def test_lax_coercions_are_pydantics(given, stored):
    lora = LoraSpec(**given)
    for name, value in stored.items():
        assert getattr(lora, name) == value and type(getattr(lora, name)) is type(value)


@pytest.mark.parametrize(
    ("field", "value", "kind", "msg"),
    [
        ("rank", 3.5, "int_from_float", "Input should be a valid integer, got a number with a fractional part"),
        ("rank", "3.5", "int_parsing", "Input should be a valid integer, unable to parse string as an integer"),
        ("rank", math.inf, "finite_number", "Input should be a finite number"),
        ("rank", [], "int_type", "Input should be a valid integer"),
        ("rank", 0, "greater_than", "Input should be greater than 0"),
        ("rank", 16385, "less_than_equal", "Input should be less than or equal to 16384"),
        ("alpha", math.nan, "finite_number", "Input should be a finite number"),
        ("alpha", "many", "float_parsing", "Input should be a valid number, unable to parse string as a number"),
        ("dropout", 1.0, "less_than", "Input should be less than 1"),
        ("dropout", -0.1, "greater_than_equal", "Input should be greater than or equal to 0"),
        ("targets", "q_proj", "tuple_type", "Input should be a valid tuple"),
        ("no_such_field", 1, "extra_forbidden", "Extra inputs are not permitted"),
    ],
)
def test_refusals_name_the_field_with_pydantics_message(field, value, kind, msg):
    with pytest.raises(ValidationError) as refused:
        LoraSpec(**{field: value})
    (error,) = refused.value.errors()
    assert (error["type"], error["loc"], error["msg"], error["input"]) == (kind, (field,), msg, value)


def test_every_problem_is_listed_and_the_message_is_one_line():
    with pytest.raises(ValidationError) as refused:
        MeasuredRun.model_validate({"run_id": 5, "setup": {"method": "lora", "lora": {"rank": 0}}, "zzz": 1})
    problems = [(".".join(map(str, e["loc"])), e["type"]) for e in refused.value.errors()]
    assert problems == [("run_id", "string_type"), ("created_utc", "missing"), ("model", "missing"),
                        ("setup.lora.rank", "greater_than"), ("environment", "missing"),
                        ("measurements", "missing"), ("zzz", "extra_forbidden")]  # fmt: skip
    assert refused.value.error_count() == 7 and isinstance(refused.value, ValueError)
    assert str(refused.value).startswith("invalid MeasuredRun: run_id: Input should be a valid string; created_utc: ")
    assert "\n" not in str(refused.value)


def test_a_cross_field_check_is_a_value_error_of_the_whole_spec():
    with pytest.raises(ValidationError, match="--quant applies to --method qlora only") as refused:
        TrainingSetup(method="lora", lora=LoraSpec(), quant="nf4")
    assert refused.value.errors()[0]["loc"] == () and refused.value.errors()[0]["type"] == "value_error"


def test_json_input_reads_nan_and_refuses_text_that_is_not_json():
    with pytest.raises(ValidationError, match="constants.fragmentation: Input should be a finite number"):
        Calibration.model_validate_json('{"version": "x", "constants": {"fragmentation": NaN}}')
    with pytest.raises(ValidationError, match="Invalid JSON"):
        Calibration.model_validate_json('{"version": ')
    with pytest.raises(ValidationError, match="constants: Input should be an object"):
        Calibration.model_validate_json('{"version": "x", "constants": []}')


def test_a_json_number_beyond_a_float_is_refused_not_read_as_infinity():
    # (pydantic read it as inf; the base refuses it as it refuses the same int from Python)
    text = '{"version": "x", "constants": {}, "bounds": {"fragmentation": [1' + "0" * 400 + ", 1]}}"
    with pytest.raises(ValidationError, match="bounds.fragmentation.0: Input should be a valid number"):
        Calibration.model_validate_json(text)


def test_a_spec_is_frozen_equal_by_value_and_hashable():
    lora = LoraSpec(rank=8)
    with pytest.raises(ValidationError, match="Instance is frozen"):
        lora.rank = 9
    assert lora == LoraSpec(rank=8.0) and hash(lora) == hash(LoraSpec(rank=8)) and lora != LoraSpec(rank=9)
    assert {lora: 1}[LoraSpec(rank=8)] == 1 and lora != "LoraSpec(rank=8)"
    assert repr(lora) == "LoraSpec(rank=8, alpha=None, dropout=0.05, targets=('all-linear',))"


def test_copy_and_construct_do_not_validate_as_in_pydantic():
    setup = TrainingSetup(method="full")
    assert setup.model_copy(update={"seq_len": 0}).seq_len == 0 and setup.seq_len == 2048
    built = TrainingSetup.model_construct(method="lora", seq_len=-1)
    assert built.seq_len == -1 and built.lora is None and built.optimizer == "adamw_torch_fused"


def test_json_dump_writes_floats_and_non_finite_numbers_as_pydantic_did():
    verdict = GpuVerdict(gpu="x", gpu_name="X", capacity_bytes=1, usable_bytes=1, headroom_fraction=1e-5, fits=True,
                         headroom_bytes=0)  # fmt: skip
    assert '"headroom_fraction":0.00001' in verdict.model_dump_json()
    assert '"headroom_fraction":null' in verdict.model_copy(update={"headroom_fraction": math.inf}).model_dump_json()
    assert verdict.model_dump(mode="json")["headroom_fraction"] == 1e-5


def test_the_specs_import_without_pydantic_in_a_few_milliseconds():
    code = (
        "import sys, time; sys.modules['pydantic'] = None\n"
        "t = time.perf_counter(); import vramplan.specs; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 0.05  # ~3 ms on a 2-core machine; generous for a busy CI runner


def test_estimate_runs_where_pydantic_cannot_be_imported(tmp_path):
    code = (
        "import sys; sys.modules['pydantic'] = None\n"
        "sys.argv = ['vramplan', 'estimate', '--model', 'llama-3.1-8b', '--method', 'qlora', '--format', 'json']\n"
        "from vramplan.entry import main\nmain()"
    )
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])}
    for _ in range(2):  # the flag tables cached (through typer), then read from the cache
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert json.loads(out.stdout)["model"] == "llama-3.1-8b"
