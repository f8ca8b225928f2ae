"""Predicted (leave-one-out calibrated) vs measured peak memory of the shipped runs -> docs/accuracy.png.

    pip install matplotlib && python scripts/accuracy_plot.py [--out docs/accuracy.png]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vramplan.calibration import leave_one_out  # noqa: E402
from vramplan.runs import load_runs, shipped_runs_dir  # noqa: E402

GIB = 2**30
METHOD_COLORS = {"full": "tab:red", "lora": "tab:blue", "qlora": "tab:green"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs/accuracy.png")
    args = parser.parse_args()
    runs = {r.run_id: r for r in load_runs([shipped_runs_dir()])}
    result = leave_one_out(list(runs.values()))
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
        ax.set_xlabel("measured on H100 (GiB)")
        ax.set_ylabel("predicted (GiB)")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"vramplan vs {len(result.comparisons)} measured runs (grey band: ±5 %)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
