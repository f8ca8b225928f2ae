"""Reserved and device peak: the allocator simulation against the closed-form rules, on every shipped run.

    python scripts/simulated_accuracy.py [--runs DIR ...] [--markdown OUT.md]

Both are leave-one-out: the rules with their five constants fitted without the run, the simulation with only
the CUDA-context constant fitted without it (it has no fragmentation constant). Single-GPU runs only (the
simulation has no multi-GPU sequence); capped runs (--memory-cap-gib) are replayed under their cap and
checked for fits / OOM.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # campaign_grids.py beside this file

from campaign_grids import DEFAULT_STEPS  # noqa: E402
from gpu_catalog import find_gpu  # noqa: E402

from vramplan.calibration import leave_one_out  # noqa: E402
from vramplan.estimator import CALIBRATED_DEFAULTS, _terms  # noqa: E402
from vramplan.memory.allocator.replay import replay  # noqa: E402
from vramplan.memory.allocator.sequence import training_sequence  # noqa: E402
from vramplan.models import resolve_model  # noqa: E402
from vramplan.runs import load_runs, shipped_runs_dir, single_gpu_run  # noqa: E402
from vramplan.validation import Validation  # noqa: E402


def _stats(errs: list[float]) -> str:
    if not errs:
        return "| 0 | | | |"
    return (
        f"| {len(errs)} | {100 * statistics.median(abs(e) for e in errs):.1f} % | "
        f"{100 * max(abs(e) for e in errs):.1f} % | {100 * min(errs):+.1f} % |"
    )


def _stack(setup) -> str:
    return setup.stack + ("+liger" if setup.liger else "")


def _grouped(v: Validation, runs: dict, total: str, key) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"all": []}
    for c in v.comparisons:
        e = c.error(total)
        if e is None:
            continue
        out["all"].append(e)
        out.setdefault(key(runs[c.run_id].setup), []).append(e)
    return out


#: the steps of the campaign's capped runs
CAPPED_STEPS = DEFAULT_STEPS


def capped(runs) -> list[str]:
    lines = []
    for r in runs:
        m = r.measurements
        if m.memory_cap_bytes is None or r.environment.num_gpus != 1:
            continue
        spec = resolve_model(r.model_source or r.model)
        gpu = find_gpu(r.environment.gpu_id) if r.environment.gpu_id else None
        t = _terms(spec, r.setup, gpu, dict(CALIBRATED_DEFAULTS))
        # as many steps as the campaign trains (3): under a cap, release-and-retry rearranges the segments, so a
        # third step can fail where two fit (the 13.5 GiB runs OOM in step 2, on the H100 and on the H200)
        seq = training_sequence(spec, r.setup, t, steps=CAPPED_STEPS)
        res = replay(seq, expandable_segments=r.setup.expandable_segments, allowed_bytes=m.memory_cap_bytes)
        sim_oom = res.oom_at_op is not None
        ok = "right" if sim_oom == m.oom else "WRONG"
        lines.append(
            f"| {r.run_id} | {m.memory_cap_bytes / 2**30:.2f} | {'OOM' if m.oom else 'fits'} | "
            f"{'OOM' if sim_oom else 'fits'} | {ok} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, default=[shipped_runs_dir()])
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    # single-GPU runs without DeepSpeed (the simulation has no ZeRO sequence)
    runs = [r for r in load_runs(args.runs) if single_gpu_run(r)]
    by_id = {r.run_id: r for r in runs}
    rules, sim = leave_one_out(runs, reserved_rule="rules"), leave_one_out(runs, reserved_rule="simulated")
    lines: list[str] = []
    for column, key in (("method", lambda s: s.method), ("stack", _stack)):
        lines += [""] if lines else []
        lines += [f"| total | rule | {column} | runs | median \\|error\\| | worst \\|error\\| | worst under-prediction |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for total in ("reserved", "device"):
            for name, v in (("rules (LOO)", rules), ("simulated (LOO context)", sim)):
                for group, errs in _grouped(v, by_id, total, key).items():
                    lines.append(f"| {total} | {name} | {group} " + _stats(errs))
    lines += ["", "| run | stack | reserved measured GiB | rules | simulated |", "|---|---|---|---|---|"]
    sim_by_id = {c.run_id: c for c in sim.comparisons}
    for c in sorted(rules.comparisons, key=lambda c: c.run_id):
        s = sim_by_id.get(c.run_id)
        simulated = f"{100 * s.error('reserved'):+.1f} %" if s else "not simulated (unsloth)"
        lines.append(
            f"| {c.run_id} | {_stack(by_id[c.run_id].setup)} | {c.measured['reserved'] / 2**30:.2f} | "
            f"{100 * c.error('reserved'):+.1f} % | {simulated} |"
        )
    lines += ["", "| capped run | cap GiB | measured | simulated | |", "|---|---|---|---|---|", *capped(runs)]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
