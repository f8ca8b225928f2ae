#!/usr/bin/env python3
"""An experiment, not the model: Unsloth's Gemma 3 histories against their predicted sequences with each decoder
layer's backward taken from the history itself.

    python scripts/unsloth_gemma3_backward_check.py [docs/allocator_traces/u*-g3-*.events.json.gz]

For each history: its step-1 layer backward (recompute and backward of one decoder layer, from the recomputed input
norm's rsqrt to the next layer's, the last layer's left out) is cut out as the recorded allocations and frees with their recorded sizes; the script says
how many of the step's layers run exactly that stretch, then builds the run's predicted sequence
(allocator/sequence.py) with every layer's backward replaced by it (the incoming carried gradient and the layer's kept
input freed at its end, the stretch's one tensor left alive carried on; the adapters' gradients made as the summary
makes them) and replays both sequences. What it shows (docs/allocator_simulation.md, "What is not done"): the
summary backward is what misses. Sizes come from the history, so this is no prediction for another setup.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from trace_replay_check import TRACES, with_pre_recording_tensor  # noqa: E402

from vramplan.estimator import CALIBRATED_DEFAULTS, _terms  # noqa: E402
from vramplan.memory.allocator import sequence as sequence_module  # noqa: E402
from vramplan.memory.allocator.ops import EMPTY_CACHE  # noqa: E402
from vramplan.memory.allocator.replay import replay  # noqa: E402
from vramplan.models import resolve_model  # noqa: E402
from vramplan.runs import load_runs, shipped_runs_dir  # noqa: E402

GIB = 2**30
#: the loss's largest buffers (Unsloth's 512 MiB fp32 chunk): the fourth allocation this large is step 1's loss
LOSS_CHUNK_MIN_BYTES = 500 * 2**20
STEP1_LOSS = 3


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


def _recorded_backward_layer(stretch):
    """sequence._Builder._backward_layer running `stretch` (layer_stretches) instead of the summary."""

    def backward_layer(self, k, carry, kept, cache, new_grads):
        seq, made, alive = self.seq, [], []
        for what, value in stretch:
            if what == "a":
                made.append(seq.alloc(value))
                alive.append(made[-1])
            else:
                if what == "f":
                    seq.free(made[len(made) - value])
                    alive.remove(made[len(made) - value])
                made.append(-1)
        grads = []
        if new_grads and k == self.L - 1:  # as the summary: every adapter's gradient at the last layer
            grads = list(seq.alloc_all([x for xs in self.layer_grad_sizes for x in xs]))
        seq.free(carry, *kept, *cache)
        out = max(alive, key=lambda i: seq.sizes[i])  # the gradient of the layer's input, carried on
        seq.free(*[i for i in alive if i != out])
        return [out], grads

    return backward_layer


def check(path: Path) -> dict | None:
    name = path.name.removesuffix(".events.json.gz")
    run = _run_for(name)
    if run is None:
        return None
    doc = json.loads(gzip.decompress(path.read_bytes()))
    rec = with_pre_recording_tensor(doc["sizes"], doc["ops"])
    model = resolve_model(run.model_source or run.model)
    stretches = layer_stretches(rec, model, run.setup)
    common, count = Counter(tuple(s) for s in stretches).most_common(1)[0]
    t = _terms(model, run.setup, None, dict(CALIBRATED_DEFAULTS))
    recorded = replay(rec, total_memory_bytes=150 * GIB).peak_reserved_bytes
    summary = sequence_module.training_sequence(model, run.setup, t)
    original = sequence_module._Builder._backward_layer
    sequence_module._Builder._backward_layer = _recorded_backward_layer(list(common))
    try:
        patterned = sequence_module.training_sequence(model, run.setup, t)
    finally:
        sequence_module._Builder._backward_layer = original
    return {
        "trace": name, "layers": len(stretches) + 1, "same": count, "ops": len(common), "recorded": recorded,
        "summary": replay(summary, total_memory_bytes=150 * GIB).peak_reserved_bytes,
        "patterned": replay(patterned, total_memory_bytes=150 * GIB).peak_reserved_bytes,
        "summary_live": summary.live_peak(), "patterned_live": patterned.live_peak(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or sorted(TRACES.glob("u*-g3-*.events.json.gz"))
    for row in filter(None, map(check, paths)):
        print(f"{row['trace']:<26} {row['same']} of {row['layers'] - 1} step-1 layer backwards alike ({row['ops']} ops);"
              f" reserved: summary {100 * (row['summary'] / row['recorded'] - 1):+6.2f} %,"
              f" recorded layer backward {100 * (row['patterned'] / row['recorded'] - 1):+6.2f} %;"
              f" live peak {row['summary_live'] / GIB:.3f} -> {row['patterned_live'] / GIB:.3f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
