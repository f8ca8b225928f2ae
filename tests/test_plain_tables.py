"""The CLI's plain-text estimate tables look exactly like rich's rendering of the same tables."""

import io

from rich.console import Console
from rich.table import Table

from vramplan.estimator import estimate
from vramplan.models import resolve_model
from vramplan.report.estimate_view import _tables, estimate_text
from vramplan.report.plain import box_table, bullet_list
from vramplan.specs import LoraSpec, TrainingSetup


def rich_text(title, columns, rows) -> str:
    table = Table(title=title, title_justify="left")
    for header, justify in columns:
        table.add_column(header, justify=justify)
    for row in rows:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=300, color_system=None, legacy_windows=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def test_each_estimate_table_matches_rich_character_for_character():
    e = estimate(resolve_model("llama-3.1-8b"), TrainingSetup(method="qlora", quant="nf4", lora=LoraSpec()))
    for title, columns, rows in _tables(e, "llama-3.1-8b · qlora"):
        assert box_table(title, columns, rows) == rich_text(title, columns, rows)


def test_assumptions_wrap_with_a_hanging_indent_and_colour_only_when_asked():
    text = bullet_list("assumptions:", ["word " * 60])
    lines = text.splitlines()
    assert lines[0] == "assumptions:" and lines[1].startswith("  - word") and lines[2].startswith("    word")
    assert all(len(line) <= 300 for line in lines) and "\033[" not in text
    assert bullet_list("x:", ["a"], color=True).startswith("\033[2m")


def test_estimate_text_holds_every_number_the_json_has():
    e = estimate(resolve_model("qwen2.5-7b"), TrainingSetup(method="lora", lora=LoraSpec(), grad_ckpt=True))
    text = estimate_text(e, "t")
    assert "peak phase: " + e.memory.peak_phase in text and "stack: hf" in text
    assert f"{e.params.total:,}" in text and all(a[:40] in text.replace("\n    ", " ") for a in e.assumptions)


def test_a_sharded_ranks_phase_table_says_its_phases_are_the_closed_forms_and_its_peak_the_sequences():
    from vramplan.memory.allocator.simulated import SHARDED_RANK
    from vramplan.report import estimate_view

    assert estimate_view.SHARDED_RANK is SHARDED_RANK  # the term the estimator writes, not a copy of its name
    fsdp = estimate(resolve_model("llama-3.1-8b"), TrainingSetup(method="full", grad_ckpt=True, num_gpus=8, parallel="fsdp"))
    one = estimate(resolve_model("llama-3.1-8b"), TrainingSetup(method="full", grad_ckpt=True))
    titles = lambda e: [t for t, _, _ in _tables(e, "x")]  # noqa: E731
    assert titles(fsdp)[-1].startswith("allocated per phase (steady state, closed-form terms")
    assert titles(one)[-1] == "allocated per phase (steady state)"
