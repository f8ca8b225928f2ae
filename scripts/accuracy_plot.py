"""Predicted (leave-one-out calibrated) vs measured peak memory of the shipped runs -> docs/accuracy.png.

    pip install matplotlib && python scripts/accuracy_plot.py [--out docs/accuracy.png]
    python scripts/accuracy_plot.py --table     # the README's per-run markdown table (no matplotlib needed)
"""

import argparse

from vramplan.calibration import leave_one_out
from vramplan.runs import load_runs, shipped_runs_dir, single_gpu_run
from vramplan.specs import setup_label

GIB = 2**30
METHOD_COLORS = {"full": "tab:red", "lora": "tab:blue", "qlora": "tab:green"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs/accuracy.png")
    parser.add_argument("--table", action="store_true", help="print the single-GPU markdown table instead")
    args = parser.parse_args()
    # single-GPU runs without DeepSpeed: the ones the README's accuracy tables cover
    shipped = load_runs([shipped_runs_dir()])
    runs = {r.run_id: r for r in shipped if single_gpu_run(r)}
    result = leave_one_out(list(runs.values()))
    if args.table:
        print_table(runs, result)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, total in zip(axes, ("device", "reserved")):
        top = 0.0
        for c in result.comparisons:
            method = runs[c.run_id].setup.method
            x, y = c.measured[total] / GIB, c.predicted[total] / GIB
            top = max(top, x, y)
            ax.scatter(x, y, s=22, color=METHOD_COLORS[method], label=method)
        ax.plot([0, top * 1.05], [0, top * 1.05], "k-", lw=0.8)
        ax.fill_between([0, top * 1.05], [0, top * 1.05 * 0.95], [0, top * 1.05 * 1.05], color="0.85", zorder=0)
        s = result.stats(total)
        ax.set_title(f"{total} peak, leave-one-out: median |err| {s['median_abs']:.1%}, worst {s['worst_abs']:.1%}")
        ax.set_xlabel("measured on H100 and H200 (GiB)")
        ax.set_ylabel("predicted (GiB)")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"vramplan vs {len(result.comparisons)} measured runs (grey band: ±5 %)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def print_table(runs, result) -> None:
    """One markdown row per single-GPU run, sorted by model and setup; hold-out runs marked (H)."""
    print("| model | setup | measured device GiB | predicted | error (device) | error (reserved) | reserved rule |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for c in result.comparisons:
        run = runs[c.run_id]
        if run.environment.num_gpus != 1:
            continue
        held_out = " (H)" if ": h-" in (run.notes or "") else ""  # scripts/campaign.py --grid holdout
        rows.append(
            (
                run.model,
                setup_label(run.setup) + held_out,
                f"{c.measured['device'] / GIB:.2f}",
                f"{c.predicted['device'] / GIB:.2f}",
                f"{c.error('device'):+.1%}",
                f"{c.error('reserved'):+.1%}",
                c.reserved_rule,
            )
        )
    for row in sorted(rows):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
