"""Estimate -> JSON document (the CLI contract keys) and -> rich renderables.

rich is imported inside the renderable functions: `estimate --format json` never loads it.
"""

from typing import TYPE_CHECKING

from ..specs import Estimate, MemoryBreakdown
from .units import gib, human_bytes

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table


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


def estimate_renderable(e: Estimate, title: str) -> "Group":
    from rich.console import Group
    from rich.text import Text

    shown = e.calibrated or e.memory
    parts = [_breakdown_table(shown, title), _totals_table(e), _phases_table(shown)]
    if e.verdict is not None:
        v = e.verdict
        word, style = ("FITS", "bold green") if v.fits else ("DOES NOT FIT", "bold red")
        parts.append(
            Text.assemble(
                (f"{word} ", style),
                f"on {v.gpu_name} ({gib(v.capacity_bytes)}; usable with {v.headroom_fraction:.0%} headroom "
                f"{gib(v.usable_bytes)}): device peak {gib(shown.device_peak_bytes)}, headroom {gib(v.headroom_bytes)}",
            )
        )
    versions = ", ".join(f"{k} {v}" for k, v in e.stack_versions.items())
    parts.append(Text(f"stack: {e.stack}" + (f" ({versions})" if versions else "")))
    params = e.params
    parts.append(Text(f"params: total {params.total:,}  trainable {params.trainable:,}"))
    parts.append(Text("assumptions:\n" + "\n".join(f"  - {a}" for a in e.assumptions), style="dim"))
    return Group(*parts)


def _breakdown_table(m: MemoryBreakdown, title: str) -> "Table":
    from rich.table import Table

    table = Table(title=f"{title} — peak phase: {m.peak_phase}", title_justify="left")
    table.add_column("term at the peak")
    table.add_column("memory", justify="right")
    table.add_column("share", justify="right")
    for name, nbytes in sorted(m.breakdown.items(), key=lambda kv: -kv[1]):
        table.add_row(name, human_bytes(nbytes), f"{nbytes / m.peak_allocated_bytes:.1%}")
    return table


def _totals_table(e: Estimate) -> "Table":
    from rich.table import Table

    table = Table(title="totals", title_justify="left")
    table.add_column("total")
    table.add_column("raw", justify="right")
    if e.calibrated is not None:
        table.add_column(f"calibrated ({e.calibration_version})", justify="right")
    rows = [
        ("peak allocated (torch max_memory_allocated)", "peak_allocated_bytes"),
        ("peak reserved (torch max_memory_reserved)", "peak_reserved_bytes"),
        ("device peak (nvidia-smi, incl. CUDA context)", "device_peak_bytes"),
    ]
    for label, key in rows:
        cells = [label, gib(getattr(e.memory, key))]
        if e.calibrated is not None:
            cells.append(gib(getattr(e.calibrated, key)))
        table.add_row(*cells)
    return table


def _phases_table(m: MemoryBreakdown) -> "Table":
    from rich.table import Table

    table = Table(title="allocated per phase (steady state)", title_justify="left")
    table.add_column("phase")
    table.add_column("allocated", justify="right")
    for name, nbytes in m.phases.items():
        marker = " ← peak" if name == m.peak_phase else ""
        table.add_row(name + marker, gib(nbytes))
    return table
