#!/usr/bin/env python3
"""Unsloth's Gemma 3 histories against their predicted sequences: the layer backward and the reserved peak.

    python scripts/unsloth_gemma3_backward_check.py [docs/allocator_traces/u*-g3-*.events.json.gz]

For each history: its step-1 layer backward passes (recompute and backward of one decoder layer, from the recomputed
input norm's rsqrt to the next layer's, the last layer's left out) as the recorded allocations and frees with their
sizes; how many of the step's layers run the history's most common one, and how many of the predicted sequence's
run exactly that one (allocator/unsloth_gemma3_layer.py, sizes from the shapes); then the reserved and live peaks of
the history's replay, of the predicted sequence, and of the summary backward the pattern replaced (the predicted
sequence with the pattern switched off), and the history's reserved peak without step 0's autotuning L2-flush
buffers (what the prediction leaves out). docs/allocator_simulation.md, "Unsloth on Gemma 3", has the numbers.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from trace_replay_check import TRACES, with_pre_recording_tensor  # noqa: E402

from vramplan.estimator import CALIBRATED_DEFAULTS, _terms  # noqa: E402
from vramplan.memory.allocator import sequence as sequence_module  # noqa: E402
from vramplan.memory.allocator.ops import EMPTY_CACHE, Sequence  # noqa: E402
from vramplan.memory.allocator.replay import replay  # noqa: E402
from vramplan.models import resolve_model  # noqa: E402
from vramplan.runs import load_runs, shipped_runs_dir  # noqa: E402

GIB = 2**30
#: the loss's largest buffers (Unsloth's 512 MiB fp32 chunk): the fourth allocation this large is step 1's loss
LOSS_CHUNK_MIN_BYTES = 500 * 2**20
STEP1_LOSS = 3
#: Inductor's autotuning flushes the L2 cache between timings with torch.empty(L2_cache_size // 4, dtype=torch.int)
#: (torch/_inductor/runtime/benchmarking.py, benchmark_gpu): the H200's L2, as every Gemma 3 history records it
L2_FLUSH_BYTES = 62_914_560


def _run_for(trace: str):
    for r in load_runs([shipped_runs_dir()]):
        if (r.extra or {}).get("memory_snapshot", "").removesuffix(".pickle") == trace:
            return r
    return None


def layer_stretches(seq, model, setup) -> list[list[tuple[str, int]]]:
    """Step 1's layer backwards as (op, value) lists: ("a", bytes) allocates, ("f", n) frees the tensor allocated n
    ops earlier in the stretch, ("o", bytes) frees a tensor made before it. A stretch starts at an fp32 [n] tensor (the
    recomputed input norm's rsqrt) followed by a [n, h] one in the compute dtype."""
    n = setup.batch_size * setup.seq_len
    rsqrt, normed = n * 4, n * model.hidden_size * 2
    big = [k for k, op in enumerate(seq.ops) if op >= 0 and seq.sizes[op] >= LOSS_CHUNK_MIN_BYTES]
    lo = big[STEP1_LOSS]
    hi = big[STEP1_LOSS + 1] if len(big) > STEP1_LOSS + 1 else len(seq.ops)
    ops = [op for op in seq.ops[lo:hi] if op != EMPTY_CACHE]
    starts = [k for k in range(len(ops) - 1)
              if ops[k] >= 0 and ops[k + 1] >= 0 and seq.sizes[ops[k]] == rsqrt and seq.sizes[ops[k + 1]] == normed]  # fmt: skip
    # the layers' backward passes begin alike; the next step's forward layers (also from a norm) do not
    prefix = [seq.sizes[op] if op >= 0 else -1 for op in ops[starts[0] : starts[0] + 6]]
    starts = [k for k in starts if [seq.sizes[op] if op >= 0 else -1 for op in ops[k : k + 6]] == prefix]
    out = []
    for a, b in zip(starts, starts[1:]):
        made: dict[int, int] = {}
        stretch = []
        for j, op in enumerate(ops[a:b]):
            if op >= 0:
                made[op] = j
                stretch.append(("a", seq.sizes[op]))
            else:
                stretch.append(("f", j - made[~op]) if ~op in made else ("o", seq.sizes[~op]))
        out.append(stretch)
    return out


def without_l2_flush_buffers(rec: Sequence) -> Sequence:
    """The history with its L2-flush buffers' allocations and frees left out."""
    flush = {i for i, nbytes in enumerate(rec.sizes) if nbytes == L2_FLUSH_BYTES}
    return Sequence(sizes=rec.sizes, ops=[op for op in rec.ops if op == EMPTY_CACHE or (op if op >= 0 else ~op) not in flush])


def check(path: Path) -> dict | None:
    name = path.name.removesuffix(".events.json.gz")
    run = _run_for(name)
    if run is None:
        return None
    doc = json.loads(gzip.decompress(path.read_bytes()))
    rec = with_pre_recording_tensor(doc["sizes"], doc["ops"])
    model = resolve_model(run.model_source or run.model)
    common, count = Counter(tuple(s) for s in layer_stretches(rec, model, run.setup)).most_common(1)[0]
    t = _terms(model, run.setup, None, dict(CALIBRATED_DEFAULTS))
    patterned = sequence_module.training_sequence(model, run.setup, t)
    predicted = layer_stretches(patterned, model, run.setup)
    summary = sequence_module.training_sequence(model, run.setup, replace(t, unsloth_gemma3=None))
    return {
        "trace": name, "layers": len(predicted) + 1, "same": count, "ops": len(common),
        "predicted_same": sum(tuple(s) == common for s in predicted),
        "recorded": replay(rec, total_memory_bytes=150 * GIB).peak_reserved_bytes,
        "recorded_no_flush": replay(without_l2_flush_buffers(rec), total_memory_bytes=150 * GIB).peak_reserved_bytes,
        "flush_buffers": rec.sizes.count(L2_FLUSH_BYTES),
        "summary": replay(summary, total_memory_bytes=150 * GIB).peak_reserved_bytes,
        "patterned": replay(patterned, total_memory_bytes=150 * GIB).peak_reserved_bytes,
        "recorded_live": rec.live_peak(), "summary_live": summary.live_peak(), "patterned_live": patterned.live_peak(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or sorted(TRACES.glob("u*-g3-*.events.json.gz"))
    for row in filter(None, map(check, paths)):
        print(f"{row['trace']:<24} {row['same']} of {row['layers'] - 1} step-1 layer backwards alike ({row['ops']} ops),"
              f" {row['predicted_same']} predicted as recorded; reserved: summary"
              f" {100 * (row['summary'] / row['recorded'] - 1):+6.2f} %, pattern {100 * (row['patterned'] / row['recorded'] - 1):+6.2f} %;"
              f" live peak {row['summary_live'] / GIB:.3f} -> {row['patterned_live'] / GIB:.3f} GiB (recorded"
              f" {row['recorded_live'] / GIB:.3f}); without its {row['flush_buffers']} L2-flush buffers the history's reserved"
              f" peak {100 * (row['recorded_no_flush'] / row['recorded'] - 1):+.2f} %, the pattern against it"
              f" {100 * (row['patterned'] / row['recorded_no_flush'] - 1):+.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
