"""Estimate -> JSON document (the CLI contract keys), plain text tables (the CLI) and rich renderables
(the preflight report). The CLI never loads rich for an estimate: as JSON or as text."""

from typing import TYPE_CHECKING

from ..memory.allocator.simulated import SHARDED_RANK
from ..specs import Estimate, MemoryBreakdown
from .units import gib, human_bytes

if TYPE_CHECKING:
    from rich.console import Group


def memory_doc(m: MemoryBreakdown) -> dict:
    return {
        "peak_allocated_bytes": m.peak_allocated_bytes,
        "peak_reserved_bytes": m.peak_reserved_bytes,
        "device_peak_bytes": m.device_peak_bytes,
        "peak_phase": m.peak_phase,
        "breakdown": dict(m.breakdown),
        "phases": dict(m.phases),
        "fragmentation_bytes": m.fragmentation_bytes,
        "reserved_rule": m.reserved_rule,
        "steady_loss_reserved_bytes": m.steady_loss_reserved_bytes,
        "cuda_context_bytes": m.cuda_context_bytes,
        "outside_allocator_bytes": m.outside_allocator_bytes,
        **_simulated_doc(m),
    }


def _simulated_doc(m: MemoryBreakdown) -> dict:
    """reserved_rule "simulated": the rules' number and the allocator state at the reserved peak."""
    if m.allocated_at_reserved_peak_bytes is None:
        return {}
    return {
        "rules_reserved_bytes": m.rules_reserved_bytes,
        "allocated_at_reserved_peak_bytes": m.allocated_at_reserved_peak_bytes,
        "free_in_segments_at_reserved_peak_bytes": m.free_in_segments_at_reserved_peak_bytes,
        "largest_free_block_at_reserved_peak_bytes": m.largest_free_block_at_reserved_peak_bytes,
    }


def estimate_doc(e: Estimate) -> dict:
    """The `estimate --format json` object. `memory` is the calibrated prediction when one applies."""
    shown = e.calibrated or e.memory
    doc: dict = {
        "model": e.model,
        "method": e.method,
        "stack": e.stack,
        "stack_versions": dict(e.stack_versions),
        "memory": memory_doc(shown),
        "memory_raw": memory_doc(e.memory),
        "calibration_version": e.calibration_version,
        "params": {
            "total": e.params.total,
            "trainable": e.params.trainable,
            "adapters": e.params.adapters,
            "by_role": dict(e.params.by_role),
        },
        "assumptions": list(e.assumptions),
    }
    if e.setup is not None:
        doc["setup"] = e.setup.model_dump(mode="json")
    if e.verdict is not None:
        v = e.verdict
        doc.update(
            gpu=v.gpu,
            gpu_name=v.gpu_name,
            fits=v.fits,
            headroom_bytes=v.headroom_bytes,
            capacity_bytes=v.capacity_bytes,
            usable_bytes=v.usable_bytes,
            headroom_fraction=v.headroom_fraction,
        )
    return doc


def _verdict_line(e: Estimate) -> tuple[str, str, str] | None:
    """(word, its style, the rest) of the fit verdict, or None without --gpu."""
    if e.verdict is None:
        return None
    v, shown = e.verdict, e.calibrated or e.memory
    word, style = ("FITS", "bold green") if v.fits else ("DOES NOT FIT", "bold red")
    rest = (
        f"on {v.gpu_name} ({gib(v.capacity_bytes)}; usable with {v.headroom_fraction:.0%} headroom "
        f"{gib(v.usable_bytes)}): device peak {gib(shown.device_peak_bytes)}, headroom {gib(v.headroom_bytes)}"
    )
    return word, style, rest


def _footer_lines(e: Estimate) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in e.stack_versions.items())
    return [
        f"stack: {e.stack}" + (f" ({versions})" if versions else ""),
        f"params: total {e.params.total:,}  trainable {e.params.trainable:,}",
    ]


def _phases_title(m) -> str:
    """The per-phase table's title: on a sharded rank its phases are the closed-form terms', its peak the sequence's."""
    if SHARDED_RANK in m.breakdown:
        return "allocated per phase (steady state, closed-form terms; the peak is the rank's simulated sequence)"
    return "allocated per phase (steady state)"


def _tables(e: Estimate, title: str) -> list[tuple[str, list[tuple[str, str]], list[list[str]]]]:
    """The three tables of an estimate as (title, columns (header, justify), rows): breakdown at the peak,
    totals raw and calibrated, allocated per phase."""
    m = e.calibrated or e.memory
    breakdown = [
        [name, human_bytes(nbytes), f"{nbytes / m.peak_allocated_bytes:.1%}"]
        for name, nbytes in sorted(m.breakdown.items(), key=lambda kv: -kv[1])
    ]
    totals_cols = [("total", "left"), ("raw", "right")]
    if e.calibrated is not None:
        totals_cols.append((f"calibrated ({e.calibration_version})", "right"))
    totals = []
    for label, key in (
        ("peak allocated (torch max_memory_allocated)", "peak_allocated_bytes"),
        ("peak reserved (torch max_memory_reserved)", "peak_reserved_bytes"),
        ("device peak (nvidia-smi, incl. CUDA context)", "device_peak_bytes"),
    ):
        cells = [label, gib(getattr(e.memory, key))]
        if e.calibrated is not None:
            cells.append(gib(getattr(e.calibrated, key)))
        totals.append(cells)
    phases = [[name + (" ← peak" if name == m.peak_phase else ""), gib(nbytes)] for name, nbytes in m.phases.items()]
    return [
        (f"{title} — peak phase: {m.peak_phase}", [("term at the peak", "left"), ("memory", "right"),
                                                   ("share", "right")], breakdown),
        ("totals", totals_cols, totals),
        (_phases_title(m), [("phase", "left"), ("allocated", "right")], phases),
    ]  # fmt: skip


def estimate_text(e: Estimate, title: str, *, color: bool = False) -> str:
    """The estimate as plain text in rich's table look (report/plain.py), without importing rich."""
    from .plain import box_table, bullet_list, styled

    parts = [box_table(t, cols, rows, color=color) for t, cols, rows in _tables(e, title)]
    verdict = _verdict_line(e)
    if verdict is not None:
        word, style, rest = verdict
        parts.append(f"{styled(word, style, color)} {rest}")
    parts += _footer_lines(e)
    parts.append(bullet_list("assumptions:", e.assumptions, color=color))
    return "\n".join(parts)


def estimate_renderable(e: Estimate, title: str) -> "Group":
    """The estimate as rich renderables (the preflight report prints it through a rich Console)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list = []
    for t, cols, rows in _tables(e, title):
        table = Table(title=t, title_justify="left")
        for header, justify in cols:
            table.add_column(header, justify=justify)
        for row in rows:
            table.add_row(*row)
        parts.append(table)
    verdict = _verdict_line(e)
    if verdict is not None:
        word, style, rest = verdict
        parts.append(Text.assemble((f"{word} ", style), rest))
    parts += [Text(line) for line in _footer_lines(e)]
    parts.append(Text("assumptions:\n" + "\n".join(f"  - {a}" for a in e.assumptions), style="dim"))
    return Group(*parts)
