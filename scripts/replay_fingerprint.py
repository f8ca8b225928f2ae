"""Every replay result of the simulated rule, to check that a speed change changes none of them.

    python scripts/replay_fingerprint.py --save before.json     # on the commit before the change
    python scripts/replay_fingerprint.py --check before.json    # after it: exit 1 if any result or sequence differs

Covers every shipped single-GPU run's sequence (and, for a capped run, its three-step replay under the cap), every
shipped DeepSpeed ZeRO-2 / ZeRO-3 run on one GPU and a grid of ZeRO setups (sequences with a side stream), a fixed
random grid of setups (--grid, catalog models, full / LoRA / QLoRA, batch, sequence length, checkpointing, stack,
Liger, attention, optimizer, dtype, expandable segments) on random catalog GPUs, and every recorded history in
docs/allocator_traces as recorded and after start_cuda's tensor (trace_replay_check.with_pre_recording_tensor). Each
case keeps its ReplayResult fields and a hash of its sequence (sizes and ops), so a builder change shows up as a
different sequence even where the replay happens to agree.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import trace_replay_check  # noqa: E402
from gpu_catalog import find_gpu, list_gpus  # noqa: E402

from vramplan.errors import VramplanError  # noqa: E402
from vramplan.estimator import CALIBRATED_DEFAULTS, _terms, fsdp_rank_terms  # noqa: E402
from vramplan.memory.allocator.replay import replay  # noqa: E402
from vramplan.memory.allocator.sequence import Sequence, training_sequence  # noqa: E402
from vramplan.memory.allocator.simulated import (  # noqa: E402
    EXPANDABLE_REPLAY_MEMORY_BYTES,
    check_reserved_rule,
    rank_sequence,
    simulation_covers,
)
from vramplan.models import list_models, resolve_model  # noqa: E402
from vramplan.runs import load_runs, shipped_runs_dir, single_gpu_run  # noqa: E402
from vramplan.specs import LoraSpec, TrainingSetup  # noqa: E402

#: the grid's random draws (a fixed seed: the same setups on every commit)
SEED = 20261203
#: models whose sequences take seconds: drawn a fifth as often
HUGE = {"deepseek-v3", "deepseek-r1", "kimi-k2-instruct", "llama-3.1-405b", "glm-4.5-air", "gpt-oss-120b"}
CAPPED_STEPS = 3  # as scripts/simulated_accuracy.py replays a capped run


def _grid(n: int) -> list[tuple[str, str, TrainingSetup, object]]:
    rng = random.Random(SEED)
    models, gpus, out = [e.name for e in list_models()], list_gpus(), []
    while len(out) < n:
        name = rng.choice(models)
        if name in HUGE and rng.random() < 0.8:
            continue
        method = rng.choice(["full", "lora", "qlora"])
        kw = {
            "method": method,
            "batch_size": rng.choice([1, 1, 2, 3, 4, 8]),
            "seq_len": rng.choice([256, 512, 1000, 1024, 2048, 4096, 8192]),
            "grad_ckpt": rng.random() < 0.5,
            "attn": rng.choice(["sdpa", "flash", "eager"]),
            "stack": rng.choice(["hf", "hf", "trl"]),
            "liger": rng.random() < 0.3,
            "grad_accum": rng.choice([1, 1, 1, 2]),
            "optimizer": rng.choice(["adamw_torch_fused", "adamw_torch_fused", "adamw_torch", "adamw_8bit",
                                     "paged_adamw_8bit", "adafactor", "sgd"]),
            "dtype": rng.choice(["bf16", "bf16", "bf16", "fp16", "fp32"]),
        }  # fmt: skip
        if method != "full":
            kw["lora"] = LoraSpec(
                rank=rng.choice([4, 8, 16, 32, 64]),
                dropout=rng.choice([0.0, 0.05]),
                targets=rng.choice([("all-linear",), ("all-linear",), ("q_proj", "v_proj")]),
            )
        if method == "qlora":
            kw["quant"], kw["double_quant"] = rng.choice(["nf4", "nf4", "fp4", "int8"]), rng.random() < 0.7
        if rng.random() < 0.05:
            kw["expandable_segments"] = True
        try:
            setup = TrainingSetup(**kw)
            check_reserved_rule("simulated", setup)
        except (VramplanError, ValueError):
            continue
        out.append((f"grid:{len(out)}", name, setup, rng.choice(gpus)))
    return out


def _zero_cases(runs) -> list[tuple[str, str, TrainingSetup, object]]:
    """The one-GPU DeepSpeed runs (ZeRO-2 / ZeRO-3: the sequence's reduction stream where it models the engine) and
    ZeRO setups of the histories' models, on the H100."""
    h100 = find_gpu("h100-sxm")
    out = [(f"zero-run:{r.run_id}", r.model_source or r.model, r.setup, h100) for r in runs]
    for name in ("llama-3.2-1b", "qwen2.5-0.5b", "qwen2.5-3b", "tinyllama-1.1b-chat-v1.0", "qwen3-1.7b"):
        for seq_len in (1024, 2048, 4096):
            for parallel, offload in (("zero2", "none"), ("zero2", "optimizer"), ("zero3", "none")):
                setup = TrainingSetup(method="full", grad_ckpt=True, seq_len=seq_len, parallel=parallel,
                                      offload=offload, optimizer="adamw_torch_fused")  # fmt: skip
                out.append((f"zero:{name}-{parallel}-{offload}-s{seq_len}", name, setup, h100))
    return out


#: the plan's multi-GPU options (its strategies on 2, 4 and 8 GPUs) and their near-miss tries: models and setups
MULTI_MODELS = ("llama-3.2-1b", "llama-3.1-8b", "qwen2.5-7b", "qwen3-8b", "llama-3.1-70b")


def _multi_rank_cases() -> list[tuple[str, str, TrainingSetup, object]]:
    """Setups over more GPUs that the simulation covers (DDP, FSDP, ZeRO-2, ZeRO-3 with each offload) on an H100
    and an A100 (the two cuBLAS workspaces), at the plan's default and its shorter near-miss length."""
    out = []
    for name in MULTI_MODELS:
        model = resolve_model(name)
        for method in ("full", "lora"):
            for parallel in ("ddp", "fsdp", "zero2", "zero3"):
                for offload in ("none", "optimizer", "all"):
                    for n in (2, 4, 8):
                        for seq_len, expandable in ((2048, False), (2048, True), (1536, False)):
                            try:
                                setup = TrainingSetup(
                                    method=method, lora=LoraSpec(rank=16) if method == "lora" else None,
                                    grad_ckpt=True, seq_len=seq_len, num_gpus=n, parallel=parallel, offload=offload,
                                    expandable_segments=expandable,
                                )  # fmt: skip
                            except ValueError:  # an offload the strategy does not offer
                                continue
                            if not simulation_covers(setup, model) or (name == "llama-3.1-70b" and n == 4):
                                continue
                            for gpu in ("h100-sxm", "a100-80gb"):
                                case = f"multi:{name}-{method}-{parallel}-{offload}-x{n}-s{seq_len}-e{int(expandable)}-{gpu}"
                                out.append((case, name, setup, find_gpu(gpu)))
    return out


def _rank_case(name: str, setup: TrainingSetup, gpu) -> dict:
    """The sequence and replay simulated.simulate makes for one GPU of a multi-GPU setup."""
    model = resolve_model(name)
    constants = dict(CALIBRATED_DEFAULTS)
    t = fsdp_rank_terms(model, setup, gpu, constants) if setup.parallel == "fsdp" else _terms(model, setup, gpu, constants)
    seq = rank_sequence(model, setup, t)
    total = max(gpu.memory_bytes, EXPANDABLE_REPLAY_MEMORY_BYTES) if setup.expandable_segments else gpu.memory_bytes
    return {"sequence": _digest(seq), "result": _fields(replay(seq, expandable_segments=setup.expandable_segments,
                                                              total_memory_bytes=total))}  # fmt: skip


def _digest(seq) -> str:
    return hashlib.sha1(array("q", seq.sizes).tobytes() + b"|" + array("q", seq.ops).tobytes() + b"|" +
                        repr(sorted(seq.streams.items())).encode()).hexdigest()  # fmt: skip


def _fields(result) -> list:
    return list(result.__dict__.values())


def _setup_case(name: str, setup: TrainingSetup, gpu, cap: int | None) -> dict:
    model = resolve_model(name)
    t = _terms(model, setup, gpu, dict(CALIBRATED_DEFAULTS))
    seq = training_sequence(model, setup, t)
    out = {"sequence": _digest(seq), "result": _fields(replay(seq, expandable_segments=setup.expandable_segments,
                                                         total_memory_bytes=gpu.memory_bytes))}  # fmt: skip
    if cap is not None:
        three = training_sequence(model, setup, t, steps=CAPPED_STEPS)
        out["capped"] = _fields(replay(three, expandable_segments=setup.expandable_segments, allowed_bytes=cap))
    return out


def fingerprint(grid: int, multi: bool = False) -> dict[str, dict]:
    cases: dict[str, dict] = {}
    if multi:
        for case_id, name, setup, gpu in _multi_rank_cases():
            cases[case_id] = _rank_case(name, setup, gpu)
    for path in sorted((ROOT / "docs" / "allocator_traces").glob("**/*.events.json.gz")):
        doc = json.loads(gzip.decompress(path.read_bytes()))
        cases[f"trace:{path.relative_to(ROOT / 'docs' / 'allocator_traces')}"] = {
            "result": _fields(replay(Sequence(sizes=doc["sizes"], ops=doc["ops"]))),
            "after_start_cuda": _fields(replay(trace_replay_check.with_pre_recording_tensor(doc["sizes"], doc["ops"]))),
        }
    runs = [r for r in load_runs([shipped_runs_dir()]) if single_gpu_run(r)]
    setups = [(f"run:{r.run_id}", r.model_source or r.model, r.setup,
               find_gpu(r.environment.gpu_id) if r.environment.gpu_id else find_gpu("h100-sxm"),
               r.measurements.memory_cap_bytes) for r in runs]  # fmt: skip
    setups += [(*case, None) for case in _grid(grid)]
    setups += [(*case, None) for case in _zero_cases(runs=[r for r in load_runs([shipped_runs_dir()]) if
                                                          r.environment.num_gpus == 1 and r.setup.parallel])]
    for case_id, name, setup, gpu, cap in setups:
        try:
            cases[case_id] = _setup_case(name, setup, gpu, cap)
        except VramplanError as e:  # a setup the estimator refuses (an unknown LoRA target): its message
            cases[case_id] = {"refused": str(e)}
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--save", type=Path)
    action.add_argument("--check", type=Path)
    parser.add_argument("--grid", type=int, default=1200, help="random setups (default 1200)")
    parser.add_argument("--multi", action="store_true", help="also the multi-GPU setups the plan simulates")
    args = parser.parse_args(argv)
    cases = fingerprint(args.grid, multi=args.multi)
    if args.save:
        args.save.write_text(json.dumps(cases, indent=0, sort_keys=True))
        print(f"{len(cases)} cases saved to {args.save}")
        return 0
    saved = json.loads(args.check.read_text())
    differ = sorted(k for k in saved.keys() | cases.keys() if saved.get(k) != cases.get(k))
    print(f"{len(cases)} cases, {len(differ)} differ" + (": " + ", ".join(differ[:20]) if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
