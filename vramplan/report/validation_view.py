"""Validation -> JSON document and rich table."""

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..validation import TOTALS, Validation
from .units import GIB


def validation_doc(v: Validation) -> dict:
    return {
        "runs": [
            {
                "run_id": c.run_id,
                "model": c.model,
                "setup": c.summary,
                "stack": c.stack,
                "peak_phase": c.peak_phase,
                "predicted": c.predicted,
                "measured": c.measured,
                "error": {t: c.error(t) for t in TOTALS},
            }
            for c in v.comparisons
        ],
        "stats": {t: v.stats(t) for t in TOTALS},
        "stats_by_stack": {stack: {t: v.stats(t, stack) for t in TOTALS} for stack in v.stacks()},
        "skipped": [{"run_id": r, "reason": why} for r, why in v.skipped],
    }


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:+.1%}"


def validation_renderable(v: Validation, title: str) -> Group:
    table = Table(title=title, title_justify="left")
    for col in ("model", "setup", "alloc pred/meas GiB", "err", "reserved err", "device err"):
        table.add_column(col, justify="left" if col in ("model", "setup") else "right")
    for c in v.comparisons:
        alloc = f"{c.predicted['allocated'] / GIB:.2f} / {(c.measured['allocated'] or 0) / GIB:.2f}"
        table.add_row(
            c.model, c.summary, alloc, _pct(c.error("allocated")), _pct(c.error("reserved")), _pct(c.error("device"))
        )
    lines = []
    groups = [None] + (v.stacks() if len(v.stacks()) > 1 else [])
    for stack in groups:
        for t in TOTALS:
            s = v.stats(t, stack)
            if s["runs"]:
                label = t if stack is None else f"{stack} {t}"
                lines.append(
                    f"{label:9s}: {s['runs']} runs, median |error| {s['median_abs']:.1%}, worst |error| "
                    f"{s['worst_abs']:.1%}, worst under-prediction {min(s['worst_under'], 0.0):+.1%}"
                )
    if v.skipped:
        lines.append(f"skipped {len(v.skipped)}: " + "; ".join(f"{r} ({why})" for r, why in v.skipped[:8]))
    return Group(table, Text("\n".join(lines) or "no runs with measured GPU memory"))
