"""Plan and FitResult -> JSON documents (the CLI contract keys) and rich renderables."""

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..planner import FitResult, Plan, PlanOption
from .estimate_view import memory_doc
from .units import GIB, gib

#: rows the plan table shows (JSON always has every option)
TABLE_FITTING_ROWS = 20
TABLE_OTHER_ROWS = 8


def option_doc(o: PlanOption) -> dict:
    step = o.step
    return {
        "gpu": o.gpu.id,
        "num_gpus": o.num_gpus,
        "parallel": o.parallel,
        "fits": o.fits,
        "memory": memory_doc(o.memory),
        "headroom_bytes": o.headroom_bytes,
        "tokens_per_s": o.tokens_per_s,
        "step_time_s": o.step_time_s,
        "wall_time_s": o.wall_time_s,
        "cost_usd": o.cost_usd,
        "why_not": o.why_not,
        "gpu_name": o.gpu.name,
        "capacity_bytes": o.gpu.memory_bytes,
        "usable_bytes": o.usable_bytes,
        "price_usd_per_hour": o.gpu.price_usd_per_hour,
        "step_time_breakdown_s": _step_doc(step),
    }


def _step_doc(step) -> dict | None:
    if step is None:
        return None
    return {"compute": step.compute_s, "overhead": step.overhead_s, "optimizer": step.optimizer_s,
            "communication": step.communication_s}  # fmt: skip


def plan_doc(p: Plan) -> dict:
    """The `plan --format json` object: options best first, then suggestions (smallest change first)."""
    return {
        "model": p.model,
        "sort": p.sort,
        "dataset_tokens": p.total_tokens,
        "options": [option_doc(o) for o in p.options],
        "suggestions": [{"change": s.change, "saves_bytes": s.saves_bytes, "fits": s.fits} for s in p.suggestions],
        "suggestions_gpu": p.suggestions_gpu,
        "assumptions": list(p.assumptions),
    }


def plan_renderable(p: Plan, title: str) -> Group:
    fitting = [o for o in p.options if o.fits]
    others = [o for o in p.options if not o.fits]
    if fitting:
        parts: list = [_options_table(fitting[:TABLE_FITTING_ROWS], f"{title} — {len(fitting)} options fit (sorted by {p.sort})")]
    else:
        parts = [Text.assemble((f"{title} — no option fits", "bold red"))]
    if len(fitting) > TABLE_FITTING_ROWS:
        parts.append(Text(f"... {len(fitting) - TABLE_FITTING_ROWS} more fitting options (--format json lists all)", style="dim"))
    if others:
        parts.append(_options_table(others[:TABLE_OTHER_ROWS], f"{len(others)} options do not fit (closest first)"))
    if p.suggestions:
        table = Table(title=f"to fit one {p.suggestions_gpu}, smallest change first", title_justify="left")
        for col, just in [("change", "left"), ("saves", "right"), ("fits alone", "left")]:
            table.add_column(col, justify=just)
        for s in p.suggestions:
            table.add_row(s.change, gib(s.saves_bytes), "yes" if s.fits else "no")
        parts.append(table)
    parts.append(Text("assumptions:\n" + "\n".join(f"  - {a}" for a in p.assumptions), style="dim"))
    return Group(*parts)


def _options_table(options: list[PlanOption], title: str) -> Table:
    fitting = all(o.fits for o in options)
    table = Table(title=title, title_justify="left")
    columns = ["GPU", "n", "parallel", "per GPU"]
    columns += ["headroom", "tokens/s", "step", "wall", "cost"] if fitting else ["why not"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("GPU", "parallel", "why not") else "right", no_wrap=col != "why not")
    for o in options:
        cells = [o.gpu.id, str(o.num_gpus), o.parallel, _gib1(o.memory.device_peak_bytes)]
        if fitting:
            cells += [
                _gib1(o.headroom_bytes),
                f"{o.tokens_per_s:,.0f}" if o.tokens_per_s else "—",
                f"{o.step_time_s:.2f} s" if o.step_time_s else "—",
                _duration(o.wall_time_s),
                f"${o.cost_usd:,.2f}" if o.cost_usd is not None else "—",
            ]
        else:
            cells.append(o.why_not or "")
        table.add_row(*cells)
    return table


def _gib1(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fit_doc(r: FitResult) -> dict:
    """The `fit --format json` object."""
    return {
        "gpu": r.gpu.id,
        "solve": r.solve,
        "value": r.value,
        "fits": r.value is not None,
        "device_peak_bytes": r.device_peak_bytes,
        "next_device_peak_bytes": r.next_device_peak_bytes,
        "usable_bytes": r.usable_bytes,
        "capacity_bytes": r.gpu.memory_bytes,
        "headroom_bytes": r.gpu.memory_bytes - r.device_peak_bytes if r.device_peak_bytes is not None else None,
        "limit": r.limit,
    }


def fit_text(r: FitResult) -> Text:
    usable = f"{gib(r.usable_bytes)} usable on {r.gpu.name}"
    if r.value is None:
        return Text.assemble(("DOES NOT FIT ", "bold red"), f"even at {r.solve} 1 ({usable})")
    peak = r.device_peak_bytes or 0
    line = Text.assemble(("largest " + r.solve + f": {r.value}", "bold green"), f"  device peak {peak / GIB:.3f} GiB of {r.usable_bytes / GIB:.3f} GiB usable on {r.gpu.name}")
    if r.next_device_peak_bytes is not None:
        line.append(f"; {r.value + 1} needs {r.next_device_peak_bytes / GIB:.3f} GiB")
    elif r.value == r.limit:
        line.append(f" (the search limit {r.limit})")
    return line
