"""The what-if page: its helpers (vramplan.whatif) and the page itself driven by Streamlit's AppTest."""

import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from gpu_catalog import find_gpu, list_gpus
from vramplan import whatif
from vramplan.errors import ConfigError
from vramplan.models import list_models
from vramplan.report.units import gib

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
QLORA_4090 = whatif.Inputs()  # llama-3.1-8b, QLoRA r16, seq 2048, batch 1, checkpointing, rtx-4090
FULL_4090 = QLORA_4090.with_(method="full")


def catalog_config_bytes(name: str) -> bytes:
    entry = next(m for m in list_models() if m.name == name)
    return files("vramplan.models").joinpath("configs", entry.file).read_bytes()


# --- helpers ----------------------------------------------------------------------------------


def test_chart_rows_add_up_to_the_device_peak():
    m = whatif.shown_memory(whatif.estimate(QLORA_4090))
    total_gib = sum(r["GiB"] for r in whatif.chart_rows(m))
    assert total_gib * whatif.GIB == pytest.approx(m.device_peak_bytes, rel=1e-9)


def test_a_sharded_ranks_chart_has_no_segment_below_zero_and_keeps_the_device_peak():
    # 8B full FT on 8 GPUs with FSDP: the rank's simulated sequence holds less than the closed-form terms add up to (a
    # negative allocator_sharded_rank term), spread over the other terms in the chart
    m = whatif.shown_memory(whatif.estimate(FULL_4090.with_(num_gpus=8, parallel="fsdp", gpu="h100-sxm")))
    assert m.breakdown["allocator_sharded_rank"] < 0
    rows = whatif.chart_rows(m)
    assert all(r["GiB"] > 0 for r in rows) and "allocator_sharded_rank" not in {r["term"] for r in rows}
    assert sum(r["GiB"] for r in rows) * whatif.GIB == pytest.approx(m.device_peak_bytes, rel=1e-9)


def test_chart_rows_are_grouped_weights_first_runtime_last():
    groups = [r["group"] for r in whatif.chart_rows(whatif.shown_memory(whatif.estimate(FULL_4090)))]
    assert groups == sorted(groups, key=whatif.GROUPS.index)
    assert groups[0] == "weights" and groups[-1] == "runtime"


def test_the_allocators_whole_blocks_chart_with_the_runtime():
    # the blocks torch counts allocated whole (simulated.WHOLE_BLOCKS) are the allocator's, not an activation
    rows = whatif.chart_rows(whatif.shown_memory(whatif.estimate(QLORA_4090.with_(model="qwen2.5-3b", method="full"))))
    whole = [r for r in rows if r["term"] == "allocator_whole_blocks"]
    assert len(whole) == 1 and whole[0]["group"] == "runtime" and whole[0]["GiB"] > 0


def test_capacity_lines_are_usable_memory_after_headroom():
    (line,) = whatif.capacity_lines(["rtx-4090", "rtx-4090"], 0.1)
    assert line["GiB"] * whatif.GIB == pytest.approx(find_gpu("rtx-4090").memory_bytes * 0.9)


def fits(inputs: whatif.Inputs) -> bool:
    return whatif.estimate(inputs).verdict.fits


@pytest.mark.parametrize(("solve", "field"), [("batch-size", "batch_size"), ("seq-len", "seq_len")])
def test_largest_value_fits_and_one_more_does_not(solve, field):
    value = whatif.largest(QLORA_4090, solve).value
    assert value is not None and value >= getattr(QLORA_4090, field)
    assert fits(QLORA_4090.with_(**{field: value}))
    assert not fits(QLORA_4090.with_(**{field: value + 1}))


def test_largest_is_none_when_even_one_does_not_fit():
    assert whatif.largest(FULL_4090, "batch-size").value is None
    assert whatif.largest(FULL_4090, "seq-len").value is None


def test_suggestions_for_a_setup_that_does_not_fit_save_memory_and_qlora_fits():
    rows = whatif.suggestions(FULL_4090)
    assert rows and all(s.saves_bytes > 0 for s in rows)
    assert any(s.fits and "qlora" in s.change for s in rows)


def test_no_suggestions_when_the_setup_fits():
    assert whatif.suggestions(QLORA_4090) == ()


def test_gpu_table_has_every_catalog_gpu_at_the_setups_count_fitting_ones_first():
    rows = whatif.gpu_table(QLORA_4090)
    assert sorted(r["gpu"] for r in rows) == sorted(g.id for g in list_gpus())
    assert {(r["GPUs"], r["parallel"]) for r in rows} == {(1, "none")}
    fit_flags = [r["fits"] for r in rows]
    assert fit_flags == sorted(fit_flags, reverse=True)
    assert next(r for r in rows if r["gpu"] == "rtx-4090")["fits"]


def test_gpu_table_of_a_multi_gpu_setup_is_at_that_count_and_strategy():
    rows = whatif.gpu_table(FULL_4090.with_(num_gpus=4, parallel="fsdp"))
    assert rows and {(r["GPUs"], r["parallel"]) for r in rows} == {(4, "fsdp")}


def test_a_dataset_size_gives_time_and_cost():
    row = whatif.gpu_table(QLORA_4090.with_(dataset_tokens=10**8))[0]
    assert row["time h"] > 0 and (row["cost $"] is None or row["cost $"] > 0)
    assert whatif.gpu_table(QLORA_4090)[0]["time h"] is None


def test_best_options_span_gpu_counts_and_fit_first():
    rows = whatif.best_options(FULL_4090, limit=200)
    assert {r["GPUs"] for r in rows} > {1}
    fit_flags = [r["fits"] for r in rows]
    assert fit_flags == sorted(fit_flags, reverse=True)


def test_full_setup_drops_quant_and_single_gpu_drops_parallel():
    setup = FULL_4090.with_(parallel="fsdp").setup()
    assert setup.quant is None and setup.lora is None and setup.parallel is None


def test_stage_upload_of_a_catalog_config_estimates_like_the_catalog_model():
    path = whatif.stage_upload(catalog_config_bytes("llama-3.1-8b"), "config.json")
    uploaded = whatif.estimate(QLORA_4090.with_(model=path))
    assert uploaded.memory.device_peak_bytes == whatif.estimate(QLORA_4090).memory.device_peak_bytes


def test_stage_upload_ignores_auto_map():
    config = json.loads(catalog_config_bytes("llama-3.1-8b"))
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    path = whatif.stage_upload(json.dumps(config).encode(), "evil.json")
    assert whatif.estimate(QLORA_4090.with_(model=path)).verdict.fits


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'{"model_type": "bert", "hidden_size": 768}', "unsupported model_type"),
        (b'{"model_type": "llama"}', "missing required key"),
        (b" " * (whatif.MAX_UPLOAD_BYTES + 1), "too large"),
    ],
)
def test_stage_upload_rejects_bad_configs_with_one_line(data, message):
    with pytest.raises(ConfigError, match=message) as err:
        whatif.stage_upload(data, "config.json")
    assert "\n" not in str(err.value)


# --- the page -------------------------------------------------------------------------------------

streamlit_testing = pytest.importorskip("streamlit.testing.v1", reason="needs the [app] extra")


@pytest.fixture
def app():
    return streamlit_testing.AppTest.from_file(APP, default_timeout=60).run()


def verdicts(at) -> list[str]:
    return [a.value for a in [*at.success, *at.error] if a.value.startswith(("**Fits**", "**Does not fit**"))]


def test_page_opens_on_a_fitting_qlora_setup(app):
    assert not app.exception
    assert app.success[0].value.startswith("**Fits** on rtx-4090")
    assert not app.error
    assert not any(h.value == "what would make it fit" for h in app.subheader)


def test_switching_qlora_to_full_flips_the_verdict_on_rtx_4090(app):
    assert verdicts(app)[0].startswith("**Fits**")
    app.radio(key="method").set_value("full").run()
    assert not app.exception
    assert verdicts(app)[0].startswith("**Does not fit** on rtx-4090")
    assert any(m.value == "what would make it fit" for m in app.subheader)


def test_a_bigger_gpu_makes_full_fine_tuning_fit(app):
    app.radio(key="method").set_value("full")
    app.selectbox(key="gpu").set_value("h200").run()
    assert verdicts(app)[0].startswith("**Fits** on h200")


def test_invalid_config_upload_shows_an_error_not_a_traceback(app):
    app.radio(key="model_source").set_value("config.json").run()
    app.file_uploader(key="upload").set_value(("config.json", b"{not json", "application/json")).run()
    assert not app.exception
    assert "cannot use config.json" in app.error[0].value and "not valid JSON" in app.error[0].value


def test_uploaded_config_is_estimated(app):
    app.radio(key="model_source").set_value("config.json").run()
    app.file_uploader(key="upload").set_value(("config.json", catalog_config_bytes("qwen2.5-7b"), "application/json"))
    app.run()
    assert not app.exception and not app.error
    assert verdicts(app)[0].startswith("**Fits** on rtx-4090")


def test_lora_targets_that_match_nothing_show_the_message(app):
    app.text_input(key="lora_targets").input("nonexistent_proj").run()
    assert not app.exception
    assert "nonexistent_proj" in app.error[0].value


def test_fsdp_over_8_gpus_lowers_the_per_gpu_peak_of_full_fine_tuning(app):
    app.radio(key="method").set_value("full").run()
    one_gpu = next(m.value for m in app.metric if m.label.startswith("device peak"))
    app.number_input(key="num_gpus").set_value(8).run()
    app.selectbox(key="parallel").set_value("fsdp").run()
    assert not app.exception
    assert verdicts(app)[0].startswith(("**Fits** on 8× rtx-4090 (fsdp)", "**Does not fit** on 8× rtx-4090 (fsdp)"))
    per_gpu = next(m.value for m in app.metric if m.label.startswith("device peak per GPU"))
    assert float(per_gpu.split()[0]) < float(one_gpu.split()[0]) / 2
    assert any(h.value == "every catalog GPU (8 GPUs, fsdp)" for h in app.subheader)


def test_contradictory_dataset_inputs_show_the_message(app):
    app.number_input(key="dataset_tokens").set_value(10**8)
    app.number_input(key="dataset_examples").set_value(1000).run()
    assert not app.exception
    assert "not both" in app.error[0].value


def test_a_dataset_size_fills_the_time_column(app):
    app.number_input(key="dataset_tokens").set_value(10**8).run()
    table = app.dataframe[0].value
    assert table["time h"].notna().any()
    assert (table["time h"].notna() == table["tokens/s"].notna()).all()  # no speed where no sourced bf16 peak


def test_gpu_table_lists_the_catalog(app):
    table = app.dataframe[0].value
    assert len(table) == len(list_gpus()) and {"gpu", "fits", "headroom GiB"} <= set(table.columns)


def test_accuracy_panel_shows_every_shipped_run_and_the_median_of_its_table(app):
    table = app.dataframe[-1].value
    assert len(table) >= 40  # 58 shipped runs, less the OOM and capped ones
    device = next(m for m in app.metric if m.label.startswith("device: median |error|"))
    assert device.label == f"device: median |error| ({len(table)} runs)"
    assert float(device.value.rstrip("%")) == pytest.approx(table["device error %"].abs().median(), abs=0.1)


def test_largest_batch_and_sequence_are_shown(app):
    shown = {m.label: m.value for m in app.metric}
    assert shown["micro-batch at seq 2048"] == f"{whatif.largest(QLORA_4090, 'batch-size').value:,}"
    assert shown["sequence length at batch 1"] == f"{whatif.largest(QLORA_4090, 'seq-len').value:,}"


def test_the_page_never_imports_torch():
    code = (
        "import sys; from streamlit.testing.v1 import AppTest; "
        f"at = AppTest.from_file({APP!r}, default_timeout=60).run(); "
        "assert not at.exception; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)


# --- stack and training-config upload ----------------------------------------------------------

EXAMPLES = ROOT / "examples"


def test_a_training_config_fills_the_fields_it_sets_and_names_the_catalog_model():
    values, notes = whatif.config_values((EXAMPLES / "axolotl-qlora.yml").read_bytes(), "axolotl-qlora.yml", QLORA_4090)
    assert values["model"] == "llama-3.1-8b" and values["seq_len"] == 4096 and values["lora_rank"] == 32
    assert values["optimizer"] == "paged_adamw_32bit" and values["packing"] is True and values["attn"] == "flash"
    assert any("bf16 auto" in n for n in notes)


def test_a_training_config_without_a_model_keeps_the_chosen_one():
    values, _ = whatif.config_values((EXAMPLES / "trl-sftconfig.json").read_bytes(), "trl-sftconfig.json", QLORA_4090)
    assert "model" not in values and (values["stack"], values["seq_len"], values["batch_size"]) == ("trl", 2048, 2)


def test_liger_is_dropped_for_the_unsloth_stack():
    assert QLORA_4090.with_(stack="unsloth", liger=True).setup().liger is False
    assert QLORA_4090.with_(stack="trl", liger=True).setup().liger is True


def device_metric(at) -> str:
    return next(m.value for m in at.metric if m.label.startswith("device peak"))


def test_page_upload_of_an_axolotl_config_fills_the_sidebar_and_estimates_it(app):
    app.file_uploader(key="training_config").set_value(
        ("axolotl-qlora.yml", (EXAMPLES / "axolotl-qlora.yml").read_bytes(), "application/yaml")).run()  # fmt: skip
    assert not app.exception and not any("cannot use" in e.value for e in app.error)
    assert verdicts(app)[0].startswith("**Does not fit** on rtx-4090")  # 4096 tokens x 2 rows do not fit 24 GB
    assert app.number_input(key="seq_len").value == 4096 and app.number_input(key="lora_rank").value == 32
    assert app.selectbox(key="optimizer").value == "paged_adamw_32bit" and app.checkbox(key="packing").value
    expected = whatif.shown_memory(whatif.estimate(QLORA_4090.with_(
        lora_rank=32, lora_alpha=16.0, seq_len=4096, batch_size=2, grad_accum=4, optimizer="paged_adamw_32bit",
        attn="flash", packing=True)))  # fmt: skip
    assert device_metric(app) == gib(expected.device_peak_bytes)


def test_page_refuses_an_unsafe_training_config_with_one_line(app):
    evil = b"base_model: !!python/object/apply:os.system ['true']\n"
    app.file_uploader(key="training_config").set_value(("evil.yml", evil, "application/yaml")).run()
    assert not app.exception
    assert any("cannot use evil.yml" in e.value and "refused" in e.value for e in app.error)


def test_page_stack_selector_offers_every_stack_and_unsloth_disables_liger(app):
    assert list(app.selectbox(key="stack").options) == ["hf", "trl", "unsloth"]
    app.selectbox(key="stack").set_value("trl").run()
    assert not app.exception
    assert device_metric(app) == gib(whatif.shown_memory(whatif.estimate(QLORA_4090.with_(stack="trl"))).device_peak_bytes)
    app.selectbox(key="stack").set_value("unsloth").run()
    assert app.checkbox(key="liger").disabled
