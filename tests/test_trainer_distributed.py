"""Multi-GPU measurements (vramplan/trainer/distributed.py): rank merge, torchrun launch, refusals,
and a real 2-process DDP run on CPU (gloo) through torchrun."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan.specs import LoraSpec, MeasuredRun, Measurements, PhasePeaks, RunEnvironment, TrainingSetup
from vramplan.trainer.distributed import (
    OOM_EXIT_CODE,
    DistContext,
    check_parallel,
    check_world,
    launch_env,
    measure_ranks,
    merge_rank_runs,
    torchrun_command,
)
from vramplan.trainer.errors import MeasurementError

from test_trainer import TINY_LLAMA  # the same tiny config as the single-GPU trainer tests

ROOT = Path(__file__).resolve().parent.parent

GIB = 2**30
DDP_LORA = TrainingSetup(method="lora", lora=LoraSpec(rank=4), seq_len=16, batch_size=2, num_gpus=2, parallel="ddp")
FSDP_FULL = TrainingSetup(method="full", seq_len=16, grad_ckpt=True, num_gpus=2, parallel="fsdp")


def rank_run(rank: int, *, alloc: int, resv: int, device: int | None, tps: float | None, oom=False, steps=3):
    return MeasuredRun(
        run_id=f"tiny-ddp-x2-{rank}",
        created_utc="2026-11-23T00:00:00Z",
        model="tiny",
        setup=DDP_LORA,
        environment=RunEnvironment(gpu_name="NVIDIA H200", gpu_id="h200", total_memory_bytes=150 * GIB, num_gpus=2),
        measurements=Measurements(
            params_total=1000,
            params_trainable=10,
            memory_after_load_bytes=alloc // 2,
            step0=PhasePeaks(forward=alloc - 3, backward=alloc - 1, optimizer=alloc - 2),
            steady=PhasePeaks(forward=alloc - 5, backward=alloc - 4),
            max_allocated_bytes=alloc,
            max_reserved_bytes=resv,
            device_peak_bytes=device,
            cuda_context_bytes=500 + rank,
            num_alloc_retries=rank,
            step_times_s=tuple(1.0 + rank * 0.1 * i for i in range(steps)),
            tokens_per_s=tps,
            oom=oom,
            oom_phase="backward" if oom else None,
            steps=steps,
        ),
        notes="campaign",
        extra={"rank": rank, "world_size": 2, "device_baseline_used_bytes": 100 + rank, "mixed_precision": "bf16"},
    )


# --------------------------------------------------------------------------- merging ranks
def test_merge_takes_the_per_gpu_maximum_and_keeps_each_rank():
    runs = {
        0: rank_run(0, alloc=10 * GIB, resv=12 * GIB, device=14 * GIB, tps=1000.0),
        1: rank_run(1, alloc=11 * GIB, resv=11 * GIB + 5, device=13 * GIB, tps=900.0),
    }
    merged = merge_rank_runs(runs, 2)
    m = merged.measurements
    assert m.max_allocated_bytes == 11 * GIB and m.max_reserved_bytes == 12 * GIB and m.device_peak_bytes == 14 * GIB
    assert m.memory_after_load_bytes == 11 * GIB // 2 and m.cuda_context_bytes == 501 and m.num_alloc_retries == 1
    assert m.step0 == PhasePeaks(forward=11 * GIB - 3, backward=11 * GIB - 1, optimizer=11 * GIB - 2)
    assert m.steady == PhasePeaks(forward=11 * GIB - 5, backward=11 * GIB - 4)
    assert m.tokens_per_s == pytest.approx(1900.0)  # global rate: sum over ranks
    assert m.step_times_s == pytest.approx((1.0, 1.1, 1.2))  # the slower rank per step
    assert (m.params_total, m.params_trainable, m.steps, m.oom) == (1000, 10, 3, False)
    assert merged.environment.num_gpus == 2 and merged.run_id == "tiny-ddp-x2-0"
    x = merged.extra
    assert x["rank0_max_allocated_bytes"] == 10 * GIB and x["rank1_max_allocated_bytes"] == 11 * GIB
    assert x["rank1_max_reserved_bytes"] == 11 * GIB + 5 and x["rank0_device_peak_bytes"] == 14 * GIB
    assert x["rank1_tokens_per_s"] == 900.0 and x["rank1_device_baseline_used_bytes"] == 101
    assert x["rank1_steady_backward_bytes"] == 11 * GIB - 4
    assert "device_baseline_used_bytes" not in x and "rank" not in x
    assert x["world_size"] == 2 and x["ranks_recorded"] == "0,1" and x["mixed_precision"] == "bf16"
    assert MeasuredRun.model_validate_json(merged.model_dump_json()) == merged


def test_merge_after_an_oom_on_one_rank_records_the_oom_and_the_missing_rank():
    merged = merge_rank_runs({1: rank_run(1, alloc=5, resv=6, device=None, tps=None, oom=True, steps=0)}, 2)
    m = merged.measurements
    assert m.oom and m.oom_phase == "backward" and m.tokens_per_s is None and m.device_peak_bytes is None
    assert merged.extra["oom_ranks"] == "1" and merged.extra["ranks_recorded"] == "1"
    assert "no record from rank(s) 0" in merged.notes and "out-of-memory" in merged.notes


def test_merge_without_records_is_an_error():
    with pytest.raises(MeasurementError, match="no rank"):
        merge_rank_runs({}, 2)


def test_incomplete_launch_gives_no_global_rate():
    merged = merge_rank_runs({0: rank_run(0, alloc=5, resv=6, device=7, tps=100.0)}, 2)
    assert merged.measurements.tokens_per_s is None


# --------------------------------------------------------------------------- launch
@pytest.mark.parametrize("setup", [DDP_LORA, FSDP_FULL], ids=["ddp", "fsdp"])
def test_torchrun_launch_and_merge(setup, tmp_path):
    seen = {}

    def fake_run_child(args, *, env, timeout_s, progress, log_path):
        seen.update(args=args, env=env, timeout_s=timeout_s)
        out_dir = Path(args[args.index("--out-dir") + 1])
        for r in range(2):
            run = rank_run(r, alloc=(r + 1) * GIB, resv=2 * GIB, device=3 * GIB, tps=10.0)
            (out_dir / f"rank{r}.json").write_text(run.model_copy(update={"setup": setup}).model_dump_json())
        return 0, []

    req = tmp_path / "request.json"
    run = measure_ranks(
        setup,
        req,
        tmp_path,
        run_child=fake_run_child,
        env={"PATH": "/bin"},
        python="/py",
        timeout_s=99.0,
        progress=None,
        log_path=tmp_path / "log",
    )
    args = seen["args"]
    assert args[:6] == ["/py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert args[6:9] == ["vramplan.trainer.worker", "measure-rank", "--request"] and str(req) in args
    assert seen["env"]["NCCL_NVLS_ENABLE"] == "0" and seen["env"]["PATH"] == "/bin" and seen["timeout_s"] == 99.0
    assert run.measurements.max_allocated_bytes == 2 * GIB and run.measurements.tokens_per_s == 20.0
    assert run.setup.parallel == setup.parallel


def test_torchrun_command_for_n_gpus():
    cmd = torchrun_command(4, ["measure-rank", "--request", "r.json"], python="python3")
    assert cmd == [
        "python3",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "vramplan.trainer.worker",
        "measure-rank",
        "--request",
        "r.json",
    ]


def test_launch_env_keeps_multicast_off_without_overriding_the_user():
    env = launch_env({"NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": "8"})
    assert env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1" and env["NVSHMEM_DISABLE_NVLS"] == "1"
    assert env["OMP_NUM_THREADS"] == "8"


def test_a_rank_refusal_surfaces_its_message(tmp_path):
    def failing(args, **kw):
        return 1, ["[vramplan] building", "error: --attn flash needs the flash-attn package", "torchrun: ChildFailedError"]

    with pytest.raises(MeasurementError, match="flash-attn"):
        measure_ranks(
            DDP_LORA,
            tmp_path / "r.json",
            tmp_path,
            run_child=failing,
            env={},
            python=None,
            timeout_s=None,
            progress=None,
            log_path=tmp_path / "log",
        )


def test_an_oom_exit_still_gives_a_record(tmp_path):
    def oom_on_rank0(args, **kw):
        out_dir = Path(args[args.index("--out-dir") + 1])
        run = rank_run(0, alloc=5, resv=6, device=7, tps=None, oom=True)
        (out_dir / "rank0.json").write_text(run.model_dump_json())
        return OOM_EXIT_CODE, ["rank 0 out of memory"]

    run = measure_ranks(
        DDP_LORA,
        tmp_path / "r.json",
        tmp_path,
        run_child=oom_on_rank0,
        env={},
        python=None,
        timeout_s=None,
        progress=None,
        log_path=tmp_path / "log",
    )
    assert run.measurements.oom and "rank(s) 1" in run.notes


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("parallel", ["zero2", "zero3"])
def test_zero_without_deepspeed_says_how_to_get_it(parallel, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    setup = TrainingSetup(method="full", num_gpus=2, parallel=parallel)
    with pytest.raises(MeasurementError, match="needs DeepSpeed installed: pip wheel --no-deps deepspeed"):
        check_parallel(setup)
    from vramplan.trainer.worker import measure_in_subprocess

    with pytest.raises(MeasurementError, match="DeepSpeed"):  # refused before any process starts
        measure_in_subprocess("tiny", setup, python="/nonexistent/python")


def test_zero3_config_offloads_what_the_setup_says():
    from vramplan.trainer.deepspeed_config import deepspeed_config

    plain = deepspeed_config(TrainingSetup(method="full", num_gpus=2, parallel="zero3"))
    assert plain["zero_optimization"]["stage"] == 3 and "optimizer" not in plain
    assert "offload_optimizer" not in plain["zero_optimization"]
    opt = deepspeed_config(TrainingSetup(method="full", parallel="zero3", offload="optimizer"))
    assert opt["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert opt["optimizer"]["type"] == "AdamW"  # DeepSpeed's CPU Adam steps the offloaded states
    assert "offload_param" not in opt["zero_optimization"]
    everything = deepspeed_config(TrainingSetup(method="full", parallel="zero3", offload="all"))
    assert everything["zero_optimization"]["offload_param"]["device"] == "cpu"
    two = deepspeed_config(TrainingSetup(method="lora", lora=LoraSpec(), num_gpus=2, parallel="zero2", offload="optimizer"))
    assert two["zero_optimization"]["stage"] == 2 and "offload_param" not in two["zero_optimization"]
    # every value the Trainer knows better is left to it
    assert plain["train_micro_batch_size_per_gpu"] == plain["gradient_accumulation_steps"] == "auto"


def test_zero3_builds_the_model_under_a_registered_deepspeed_config_and_only_zero3():
    from vramplan.trainer.deepspeed_config import zero3_load_config

    assert zero3_load_config(TrainingSetup(method="full")) is None
    assert zero3_load_config(TrainingSetup(method="full", parallel="zero2", offload="optimizer")) is None
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("the registered config needs deepspeed (GPU machine)")
    from transformers.integrations.deepspeed import deepspeed_config, is_deepspeed_zero3_enabled

    held = zero3_load_config(TrainingSetup(method="full", parallel="zero3", offload="all"))
    assert is_deepspeed_zero3_enabled()  # from_config / from_pretrained now build inside zero.Init
    assert deepspeed_config()["bf16"] == {"enabled": True}  # zero.Init casts to the config's dtype
    assert deepspeed_config()["zero_optimization"]["offload_param"]["device"] == "cpu"
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(deepspeed_config())  # what zero.Init parses: no "auto" batch size left
    assert parsed.train_batch_size == 1 and parsed.zero_optimization_stage == 3
    del held
    assert not is_deepspeed_zero3_enabled()  # a weak reference: the Trainer's own config takes over


def test_memory_snapshot_is_one_process_deepspeed_at_world_size_one_but_not_two_gpus(monkeypatch):
    from vramplan.trainer.worker import measure_in_subprocess

    with pytest.raises(MeasurementError, match="records one process"):
        measure_in_subprocess("tiny", DDP_LORA, memory_snapshot="x.pickle", python="/nonexistent/python")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a))
    zero = TrainingSetup(method="full", parallel="zero3")
    with pytest.raises((MeasurementError, OSError)) as info:  # past the snapshot check, to the missing interpreter
        measure_in_subprocess("tiny", zero, memory_snapshot="x.pickle", python="/nonexistent/python", timeout_s=5)
    assert "records one process" not in str(info.value)


def test_deepspeed_measures_at_world_size_one_but_ddp_needs_two_gpus(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a))
    check_world(TrainingSetup(method="full", parallel="zero3", offload="all"), DistContext())
    with pytest.raises(MeasurementError, match="except zero2"):
        check_world(TrainingSetup(method="full", parallel="ddp"), DistContext())


def test_offload_with_ddp_is_refused_clearly():
    # the setup itself refuses it (OFFLOAD_SUPPORT); the trainer says so too for a constructed setup
    setup = TrainingSetup.model_construct(**{**DDP_LORA.__dict__, "offload": "all"})
    with pytest.raises(MeasurementError, match="--offload needs --parallel fsdp"):
        check_parallel(setup)


def test_world_size_must_match_the_setup():
    with pytest.raises(MeasurementError, match="torchrun"):
        check_world(DDP_LORA, DistContext())
    with pytest.raises(MeasurementError, match="launch of 4"):
        check_world(DDP_LORA, DistContext(rank=1, local_rank=1, world_size=4))
    with pytest.raises(MeasurementError, match="one GPU"):
        check_world(TrainingSetup(method="full", parallel="fsdp"), DistContext())
    check_world(DDP_LORA, DistContext(rank=1, local_rank=1, world_size=2))
    check_world(TrainingSetup(method="full"), DistContext())


def test_dist_context_from_torchrun_env():
    ctx = DistContext.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert ctx == DistContext(rank=3, local_rank=1, world_size=4) and ctx.is_distributed
    assert not DistContext.from_env({}).is_distributed
    with pytest.raises(MeasurementError, match="torchrun environment"):
        DistContext.from_env({"WORLD_SIZE": "two"})


def test_run_id_names_the_strategy_and_gpu_count():
    from vramplan.trainer.environment import make_run_id

    run_id = make_run_id("llama-3.1-8b", FSDP_FULL, created_utc="2026-11-23T00:00:00Z")
    assert "-fsdp-x2-" in run_id
    single = make_run_id("llama-3.1-8b", TrainingSetup(method="full"), created_utc="2026-11-23T00:00:00Z")
    assert "-x" not in single.removeprefix("llama-3.1-8b")


# --------------------------------------------------------------------------- Trainer arguments (torch)
def test_fsdp_trainer_arguments_wrap_the_decoder_layer():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from vramplan.trainer.build import build_model
    from vramplan.trainer.distributed import layer_classes, trainer_kwargs
    from vramplan.trainer.run import training_arguments

    built = build_model(TINY_LLAMA, FSDP_FULL)
    kwargs, extra = trainer_kwargs(FSDP_FULL, built.model)
    assert kwargs["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert extra["fsdp_wrap_classes"] == "LlamaDecoderLayer"
    args = training_arguments(FSDP_FULL, 2, output_dir="/tmp/x", precision="bf16", use_cpu=True, extra_args=kwargs)
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    lora = build_model(TINY_LLAMA, DDP_LORA).model  # PEFT wrapper: the layer class is found inside
    assert layer_classes(lora) == ["LlamaDecoderLayer"]
    ddp_kwargs, _ = trainer_kwargs(DDP_LORA, lora)
    assert ddp_kwargs["ddp_find_unused_parameters"] is False and "fsdp" not in ddp_kwargs


# --------------------------------------------------------------------------- a real launch (CPU, gloo)
@pytest.mark.slow
def test_two_process_ddp_run_on_cpu_through_torchrun(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from vramplan.trainer.worker import measure_in_subprocess

    run = measure_in_subprocess("tiny-llama", DDP_LORA, 2, config=TINY_LLAMA, timeout_s=120, runs_dir=tmp_path)
    m = run.measurements
    assert run.environment.num_gpus == 2 and run.setup.parallel == "ddp"
    assert not m.oom and m.steps == 2 and m.max_allocated_bytes is None  # CPU: no memory numbers
    x = run.extra
    assert x["trainer_wrapped_model"] == "DistributedDataParallel" and x["ranks_recorded"] == "0,1"
    assert m.tokens_per_s == pytest.approx(x["rank0_tokens_per_s"] + x["rank1_tokens_per_s"])
    assert "-ddp-x2-" in run.run_id and len(list(tmp_path.rglob("*.json"))) == 1


@pytest.mark.slow
def test_a_fake_rank_runs_rank_zero_of_a_ddp_launch_alone_and_says_so(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from vramplan.trainer.worker import measure_in_subprocess

    run = measure_in_subprocess("tiny-llama", DDP_LORA, 2, config=TINY_LLAMA, timeout_s=120, fake_rank=True)
    x = run.extra
    assert run.environment.num_gpus == 2 and x["world_size"] == 2 and x["rank"] == 0
    assert x["process_group"] == "fake" and x["trainer_wrapped_model"] == "DistributedDataParallel"
    assert "not a multi-GPU measurement" in run.notes and "ranks_recorded" not in x  # one process, no merge
    assert run.measurements.steps == 2 and not run.measurements.oom


def test_fake_rank_comm_hook_divides_the_bucket_in_place_like_the_built_in_all_reduce():
    pytest.importorskip("torch")
    code = """
import torch
from vramplan.trainer.fake_rank import start_fake_world
start_fake_world(4)
from torch.nn.parallel import DistributedDataParallel as DDP
torch.manual_seed(0)
lin = torch.nn.Linear(3, 2)
x = torch.randn(5, 3)
lin(x).sum().backward()
want = [p.grad.clone() / 4 for p in lin.parameters()]
lin.zero_grad(set_to_none=True)
ddp = DDP(lin)
ddp(x).sum().backward()
assert all(torch.allclose(p.grad, w) for p, w in zip(lin.parameters(), want)), "not divided by the world size"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_fake_rank_needs_a_world_of_two_or_more(monkeypatch):
    from vramplan.trainer.fake_rank import fake_rank_env
    from vramplan.trainer.worker import measure_in_subprocess

    assert fake_rank_env(8)["WORLD_SIZE"] == "8" and fake_rank_env(8)["RANK"] == "0"
    with pytest.raises(MeasurementError, match="2 or more"):
        fake_rank_env(1)
    with pytest.raises(MeasurementError, match="--num-gpus 2 or more"):
        measure_in_subprocess("tiny", TrainingSetup(method="full"), fake_rank=True, python="/nonexistent/python")


def test_a_fake_rank_may_record_an_allocator_history_of_a_multi_gpu_setup():
    from vramplan.trainer.worker import measure_in_subprocess

    with pytest.raises(MeasurementError, match="records one process"):
        measure_in_subprocess("tiny", FSDP_FULL, memory_snapshot="x.pickle", python="/nonexistent/python")
    with pytest.raises((MeasurementError, OSError)) as info:  # past the snapshot check, to the missing interpreter
        measure_in_subprocess("tiny", FSDP_FULL, memory_snapshot="x.pickle", python="/nonexistent/python",
                              fake_rank=True, timeout_s=5)  # fmt: skip
    assert "records one process" not in str(info.value)


# --------------------------------------------------------------------------- the campaign script
@pytest.fixture(scope="module")
def campaign_multi():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("campaign_multi", ROOT / "scripts" / "campaign_multi.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["campaign_multi"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("campaign_multi", None)


def test_multi_grid_measures_ddp_lora_and_fsdp_full_on_two_gpus(campaign_multi):
    grid = campaign_multi.multi_grid(2)
    assert len({r.name for r in grid}) == len(grid)
    assert all(r.setup.num_gpus == 2 and r.setup.grad_ckpt and r.setup.seq_len == 2048 for r in grid)
    kinds = {(r.setup.parallel, r.setup.method) for r in grid}
    assert {("ddp", "lora"), ("fsdp", "full"), ("ddp", "qlora")} <= kinds
    assert {r.model for r in grid if r.setup.parallel == "fsdp"} == {"llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"}
    for r in grid:
        check_parallel(r.setup)


def test_multi_campaign_driver_never_imports_torch():
    script = ROOT / "scripts" / "campaign_multi.py"
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'scripts')!r})\n"
        f"spec = importlib.util.spec_from_file_location('campaign_multi', {str(script)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['campaign_multi'] = m; spec.loader.exec_module(m)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_zero3_snapshots_record_without_python_stacks_unless_asked(campaign_multi, monkeypatch, capsys):
    """Python stacks in the allocator history break every ZeRO-3 run in backward (campaign_multi.frames_off_for_zero3):
    the campaign turns them off for ZeRO-3 grids, and keeps an explicit request with a warning."""
    monkeypatch.delenv("VRAMPLAN_MEMORY_HISTORY_FRAMES", raising=False)
    campaign_multi.frames_off_for_zero3()
    assert os.environ["VRAMPLAN_MEMORY_HISTORY_FRAMES"] == "0"
    monkeypatch.setenv("VRAMPLAN_MEMORY_HISTORY_FRAMES", "1")
    campaign_multi.frames_off_for_zero3()
    assert os.environ["VRAMPLAN_MEMORY_HISTORY_FRAMES"] == "1"
    assert "fail in backward" in capsys.readouterr().err
