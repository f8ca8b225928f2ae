"""Plan and FitResult -> JSON documents (the CLI contract keys) and rich renderables."""

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..planner import FitResult, Plan, PlanOption
from .estimate_view import memory_doc
from .units import GIB, gib

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
        "fixes": [{"change": f.change, "saves_bytes": f.saves_bytes} for f in o.fixes],
        "usd_per_million_tokens": o.usd_per_token * 1e6 if o.usd_per_token is not None else None,
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


def plan_renderable(p: Plan, title: str, *, all_rows: bool = False) -> Group:
    """The plan as tables: by default one row per GPU type (plan_rows.best_per_gpu) and a line saying how many
    options that hides; `all_rows`: every option. Near misses say what would make them fit."""
    from ..plan_rows import best_per_gpu, near_misses

    shown = list(p.options) if all_rows else best_per_gpu(p.options, p.sort)
    fitting = [o for o in shown if o.fits]
    near = [o for o in p.options if o.fixes] if all_rows else near_misses(p.options, shown)
    others = [o for o in shown if not o.fits and o not in near]
    what = "options" if all_rows else "GPU types (best count and strategy of each)"
    order = {"cost": "$ per token", "time": "time per token", "memory": "most headroom"}[p.sort]
    if fitting:
        parts: list = [_options_table(fitting, f"{title} — {len(fitting)} {what} fit, by {order}")]
    else:
        parts = [Text.assemble((f"{title} — no option fits", "bold red"))]
    if near:
        parts.append(_options_table(near, "near misses: one change makes them fit"))
    if others:
        parts.append(_options_table(others, f"{len(others)} {what} do not fit (closest first)"))
    hidden = len(p.options) - len(shown) - len([o for o in near if o not in shown])
    if hidden:
        parts.append(Text(f"{hidden} more options hidden (other GPU counts and strategies): --all shows every row, "
                          "--format json lists all", style="dim"))  # fmt: skip
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
    near = not fitting and any(o.fixes for o in options)
    columns = ["GPU", "n", "parallel", "per GPU"]
    if fitting:
        columns += ["headroom", "tokens/s", "$/Mtok", "wall", "cost"]
    else:
        columns += ["short by", "fits with (bytes saved)"] if near else ["why not"]
    for col in columns:
        wraps = col in ("why not", "fits with (bytes saved)")
        table.add_column(col, justify="left" if col in ("GPU", "parallel") or wraps else "right", no_wrap=not wraps)
    for o in options:
        cells = [o.gpu.id, str(o.num_gpus), o.parallel, _gib1(o.memory.device_peak_bytes)]
        if fitting:
            cells += [
                _gib1(o.headroom_bytes),
                f"{o.tokens_per_s:,.0f}" if o.tokens_per_s else "—",
                f"${o.usd_per_token * 1e6:,.3f}" if o.usd_per_token is not None else "—",
                _duration(o.wall_time_s),
                f"${o.cost_usd:,.2f}" if o.cost_usd is not None else "—",
            ]
        elif near:
            cells.append(f"{(o.memory.device_peak_bytes - o.usable_bytes) / GIB:.2f} GiB")
            cells.append("; ".join(f"{f.change} ({f.saves_bytes / GIB:.2f} GiB)" for f in o.fixes))
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
