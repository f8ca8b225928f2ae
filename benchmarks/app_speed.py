"""What the what-if page computes for one changed input (fresh, not memoized): the estimate, the GPU table and best
options (a plan over the catalog), the two largest-fit searches and the suggestions, for the page's Llama-3.1-8B
full fine-tuning on an RTX 4090 and its QLoRA default (target: under 200 ms each, median of three lengths).

    python benchmarks/app_speed.py
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vramplan import whatif  # noqa: E402

PARTS = {
    "estimate": lambda i: whatif.chart_rows(whatif.shown_memory(whatif.estimate(i))),
    "gpu table": whatif.gpu_table,
    "best options": whatif.best_options,
    "largest batch": lambda i: whatif.largest(i, "batch-size"),
    "largest length": lambda i: whatif.largest(i, "seq-len"),
    "suggestions": whatif.suggestions,
}
TARGET_S = 0.2


def main() -> None:
    qlora = whatif.Inputs()  # llama-3.1-8b, QLoRA r16, seq 2048, batch 1, checkpointing, rtx-4090
    for name, base in (("8B QLoRA", qlora), ("8B full", qlora.with_(method="full"))):
        totals, parts = [], {k: [] for k in PARTS}
        for seq in (3000, 3001, 3002):
            inputs = base.with_(seq_len=seq)
            start = time.perf_counter()
            for part, run in PARTS.items():
                t = time.perf_counter()
                run(inputs)
                parts[part].append(time.perf_counter() - t)
            totals.append(time.perf_counter() - start)
        detail = ", ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in parts.items())
        total = statistics.median(totals)
        print(f"{name:9s}: {1e3 * total:6.1f} ms ({'within' if total < TARGET_S else 'over'} {TARGET_S * 1e3:.0f} ms)"
              f"  [{detail} ms]")


if __name__ == "__main__":
    main()
