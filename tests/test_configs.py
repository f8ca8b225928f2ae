"""--from-config: users' own Axolotl / LLaMA-Factory / TRL / TrainingArguments / PEFT files read as flags."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vramplan.cli import app
from vramplan.configs import ConfigFileError, read_config_bytes, read_config_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()

#: each shipped example and the flags that say the same thing
EQUIVALENT = {
    "axolotl": (
        ["--from-config", str(EXAMPLES / "axolotl-qlora.yml")],
        ["--model", "meta-llama/Llama-3.1-8B", "--method", "qlora", "--lora-rank", "32", "--lora-alpha", "16",
         "--seq-len", "4096", "--batch-size", "2", "--grad-accum", "4", "--grad-ckpt",
         "--optimizer", "paged_adamw_32bit", "--attn", "flash", "--packing"],
    ),
    "llamafactory": (
        ["--from-config", str(EXAMPLES / "llamafactory-lora.yaml")],
        ["--model", "Qwen/Qwen2.5-7B", "--method", "lora", "--lora-rank", "16", "--lora-dropout", "0",
         "--seq-len", "2048", "--batch-size", "1", "--grad-accum", "8", "--grad-ckpt", "--attn", "flash", "--liger"],
    ),
    "trl+peft": (
        ["--from-config", str(EXAMPLES / "trl-sftconfig.json"),
         "--from-config", str(EXAMPLES / "peft-adapter" / "adapter_config.json")],
        ["--model", "Qwen/Qwen2.5-7B", "--method", "lora", "--lora-rank", "16", "--lora-alpha", "32",
         "--lora-targets", "k_proj,v_proj,o_proj,q_proj", "--seq-len", "2048", "--batch-size", "2",
         "--grad-accum", "8", "--grad-ckpt", "--stack", "trl", "--packing"],
    ),
    "training-args+bnb-config": (
        ["--model", str(EXAMPLES / "llama-3.1-8b-bnb-4bit" / "config.json"),
         "--from-config", str(EXAMPLES / "hf-training-args.json")],
        ["--model", "llama-3.1-8b", "--method", "qlora", "--quant", "nf4", "--double-quant", "--batch-size", "1",
         "--grad-accum", "16", "--grad-ckpt", "--optimizer", "paged_adamw_8bit"],
    ),
}  # fmt: skip


def estimate_json(*args: str) -> dict:
    res = runner.invoke(app, ["estimate", *args, "--gpu", "rtx-4090", "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def fails(*args: str, command: str = "estimate") -> str:
    res = runner.invoke(app, [command, *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize("kind", list(EQUIVALENT))
def test_each_example_gives_exactly_the_estimate_of_its_equivalent_flags(kind):
    from_file, flags = EQUIVALENT[kind]
    a, b = estimate_json(*from_file), estimate_json(*flags)
    assert a["memory"] == b["memory"] and a["memory_raw"] == b["memory_raw"]
    assert a["params"] == b["params"] and a["fits"] == b["fits"] and a["largest_fit"] == b["largest_fit"]
    assert a["setup"] == b["setup"]


def test_the_resolved_setup_shows_how_the_axolotl_file_was_read():
    setup = estimate_json(*EQUIVALENT["axolotl"][0])["setup"]
    assert setup["method"] == "qlora" and setup["quant"] == "nf4" and setup["double_quant"] is True
    assert setup["lora"] == {"rank": 32, "alpha": 16.0, "dropout": 0.05, "targets": ["all-linear"]}
    assert (setup["seq_len"], setup["batch_size"], setup["grad_accum"]) == (4096, 2, 4)
    assert (setup["grad_ckpt"], setup["optimizer"], setup["attn"], setup["stack"], setup["packing"]) == (
        True, "paged_adamw_32bit", "flash", "hf", True)  # fmt: skip


def test_an_explicit_flag_overrides_the_file_even_at_its_default_value():
    doc = estimate_json(*EQUIVALENT["axolotl"][0], "--lora-rank", "16", "--seq-len", "1024")
    assert doc["setup"]["lora"]["rank"] == 16 and doc["setup"]["seq_len"] == 1024
    assert any("--lora-rank 16 (command line) overrides 32" in a for a in doc["assumptions"])


def test_a_later_file_overrides_an_earlier_one(tmp_path):
    extra = tmp_path / "adapter_config.json"
    extra.write_text(json.dumps({"peft_type": "LORA", "r": 64, "target_modules": ["q_proj"], "lora_dropout": 0.0}))
    doc = estimate_json(*EQUIVALENT["trl+peft"][0], "--from-config", str(extra))
    assert doc["setup"]["lora"]["rank"] == 64 and doc["setup"]["lora"]["targets"] == ["q_proj"]


def test_trainer_class_hint_decides_the_stack():
    trl = read_config_file(EXAMPLES / "trl-sftconfig.json")
    hf = read_config_file(EXAMPLES / "hf-training-args.json")
    assert (trl.kind, trl.values["stack"], trl.values["seq_len"]) == ("sft-config", "trl", 2048)
    assert (hf.kind, hf.values["stack"]) == ("training-args", "hf") and "seq_len" not in hf.values


def test_a_partial_training_arguments_json_takes_the_transformers_defaults():
    r = read_config_bytes(b'{"output_dir": "out", "bf16": true}', "args.json")
    assert (r.values["batch_size"], r.values["grad_accum"], r.values["grad_ckpt"]) == (8, 1, False)
    assert r.values["optimizer"] == "adamw_torch_fused"


def test_sftconfig_defaults_turn_checkpointing_on_and_length_1024():
    r = read_config_bytes(b'{"output_dir": "out", "dataset_text_field": "text"}', "sft.json")
    assert (r.values["stack"], r.values["grad_ckpt"], r.values["seq_len"], r.values["dtype"]) == ("trl", True, 1024, "bf16")


def test_keys_that_change_memory_but_are_not_modelled_are_listed_and_others_are_silent(tmp_path):
    f = tmp_path / "ax.yml"
    f.write_text("base_model: qwen2.5-0.5b\nadapter: lora\nlora_r: 8\nlora_target_linear: true\n"
                 "cut_cross_entropy: true\nlearning_rate: 0.0003\nwandb_project: x\nrl: dpo\n")  # fmt: skip
    notes = estimate_json("--from-config", str(f))["assumptions"]
    assert any(n.startswith("ax.yml: cut_cross_entropy:") for n in notes)
    assert any(n.startswith("ax.yml: rl:") for n in notes)
    assert not any("learning_rate" in n or "wandb" in n for n in notes)


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.yml"
    f.write_text(f"base_model: !!python/object/apply:os.system ['touch {marker}']\nadapter: lora\n")
    line = fails("--from-config", str(f))
    assert "evil.yml: refused" in line and not marker.exists()


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.yml", "base_model: [unclosed\n", "not valid YAML"),
        ("bad.json", "{not json", "not valid JSON"),
        ("list.yml", "- a\n- b\n", "mapping of keys"),
        ("other.yml", "foo: 1\n", "not a training config vramplan knows"),
        ("ax.yml", "base_model: qwen2.5-0.5b\nsequence_len: many\n", "sequence_len 'many': accepted: a positive integer"),
        ("ax.yml", "base_model: qwen2.5-0.5b\noptimizer: lion_8bit\n", "optimizer 'lion_8bit' is not modelled"),
        ("lf.yml", "model_name_or_path: qwen2.5-0.5b\nfinetuning_type: freeze\n", "finetuning_type freeze is not modelled"),
    ],
)
def test_bad_files_give_one_line_and_exit_2(tmp_path, name, text, needle):
    f = tmp_path / name
    f.write_text(text)
    assert needle in fails("--from-config", str(f))


def test_a_missing_file_and_a_missing_model_give_one_line():
    assert "no such file" in fails("--from-config", "/nonexistent/ax.yml")
    assert "--model is required" in fails("--method", "lora")
    assert "--method is required" in fails("--model", "qwen2.5-0.5b", "--from-config", str(EXAMPLES / "hf-training-args.json"))


def test_a_value_vramplan_cannot_model_is_accepted_once_its_flag_is_given(tmp_path):
    f = tmp_path / "ax.yml"
    f.write_text("base_model: qwen2.5-0.5b\noptimizer: lion_8bit\n")
    assert estimate_json("--from-config", str(f), "--optimizer", "adamw_8bit")["setup"]["optimizer"] == "adamw_8bit"


def test_deepspeed_json_sets_zero_stage_and_offload_at_any_gpu_count(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps(
        {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}, "bf16": {"enabled": "auto"}}))  # fmt: skip
    f = tmp_path / "lf.yaml"
    f.write_text("model_name_or_path: qwen2.5-7b\nfinetuning_type: full\nbf16: true\ndeepspeed: ds.json\n")
    many = estimate_json("--from-config", str(f), "--num-gpus", "4")["setup"]
    assert (many["parallel"], many["offload"], many["num_gpus"], many["dtype"]) == ("zero3", "optimizer", 4, "bf16")
    # without --num-gpus: DeepSpeed at world size 1 (single-GPU ZeRO-3 offload is why such files exist)
    one = estimate_json("--from-config", str(f))
    assert (one["setup"]["parallel"], one["setup"]["offload"], one["setup"]["num_gpus"]) == ("zero3", "optimizer", 1)
    assert any("estimated at world size 1" in a for a in one["assumptions"])
    plain = estimate_json("--model", "qwen2.5-7b", "--method", "full", "--dtype", "fp32")
    assert one["memory"]["peak_allocated_bytes"] < plain["memory"]["peak_allocated_bytes"]


def test_llamafactory_full_tuning_trains_fp32_weights_and_quantization_bit_means_qlora(tmp_path):
    full = tmp_path / "full.yaml"
    full.write_text("model_name_or_path: qwen2.5-0.5b\nfinetuning_type: full\nbf16: true\n")
    assert estimate_json("--from-config", str(full))["setup"]["dtype"] == "fp32"
    q = tmp_path / "q.yaml"
    q.write_text("model_name_or_path: qwen2.5-0.5b\nquantization_bit: 4\nlora_target: q_proj,v_proj\n")
    setup = estimate_json("--from-config", str(q))["setup"]
    assert (setup["method"], setup["quant"], setup["lora"]["rank"], setup["lora"]["targets"]) == (
        "qlora", "nf4", 8, ["q_proj", "v_proj"])  # fmt: skip
    assert setup["grad_ckpt"] is True and setup["batch_size"] == 8  # LLaMA-Factory / TrainingArguments defaults


def test_a_model_config_json_through_from_config_names_the_model_and_its_quantization():
    doc = estimate_json("--from-config", str(EXAMPLES / "llama-3.1-8b-bnb-4bit" / "config.json"))
    assert doc["setup"]["method"] == "qlora" and doc["params"]["total"] == 8_030_261_248


def test_plan_and_fit_read_the_same_file():
    from_file, flags = EQUIVALENT["llamafactory"]
    plans = [json.loads(runner.invoke(app, ["plan", *args, "--gpus", "rtx-4090,h100", "--format", "json"]).output)
             for args in (from_file, flags)]  # fmt: skip
    assert [o["memory"] for o in plans[0]["options"]] == [o["memory"] for o in plans[1]["options"]]
    fits = [json.loads(runner.invoke(app, ["fit", *args, "--gpu", "rtx-4090", "--solve", "seq-len", "--format", "json"]).output)
            for args in (from_file, flags)]  # fmt: skip
    assert fits[0] == fits[1] and fits[0]["value"] > 0


def test_reading_a_file_raises_the_vramplan_error_type():
    with pytest.raises(ConfigFileError, match="too large"):
        read_config_bytes(b" " * (2 * 1024 * 1024), "big.yml")


AX = "base_model: qwen2.5-0.5b\nadapter: lora\nlora_r: 8\nlora_target_linear: true\n"
LF = "model_name_or_path: qwen2.5-0.5b\n"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("ax.yml", AX + "plugins:\n  - axolotl.integrations.liger.LigerPlugin\nliger_fused_linear_cross_entropy: true\n",
         {"liger": True, "stack": "hf"}),
        ("ax.yml", AX + "liger_fused_linear_cross_entropy: true\n", {"liger": False}),
        ("ax.yml", AX + "micro_batch_size: 2\nbatch_size: 16\n", {"batch_size": 2, "grad_accum": 8}),
        ("ax.yml", AX + "gradient_checkpointing: offload\n", {"grad_ckpt": True}),
        ("ax.yml", AX + "attn_implementation: eager\nflash_attention: true\n", {"attn": "eager"}),
        ("ax.yml", AX + "sdp_attention: true\n", {"attn": "sdpa"}),
        ("ax.yml", AX + "fp16: true\nbf16: false\n", {"dtype": "fp16"}),
        ("ax.yml", "base_model: qwen2.5-0.5b\nadapter: lora\nload_in_8bit: true\nlora_target_modules: [q_proj]\nbf16: false\n",
         {"method": "qlora", "quant": "int8", "lora_targets": "q_proj", "dtype": "fp16"}),
        ("ax.yml", AX.replace("lora", "qlora", 1) + "bnb_config_kwargs:\n  bnb_4bit_quant_type: fp4\n  bnb_4bit_use_double_quant: false\n",
         {"method": "qlora", "quant": "fp4", "double_quant": False}),
        ("ax.yml", "base_model: qwen2.5-0.5b\nfsdp: [full_shard, auto_wrap]\nfsdp_config:\n  fsdp_offload_params: true\n",
         {"method": "full", "parallel": "fsdp", "offload": "all"}),
        ("ax.yml", "base_model: qwen2.5-0.5b\nfsdp_version: 2\nfsdp_config:\n  reshard_after_forward: false\n",
         {"parallel": "zero2"}),
        ("lf.yml", LF + "use_unsloth: true\nenable_liger_kernel: true\n", {"stack": "unsloth", "liger": False}),
        ("lf.yml", LF + "flash_attn: disabled\ndisable_gradient_checkpointing: true\nneat_packing: true\n",
         {"attn": "eager", "grad_ckpt": False, "packing": True}),
        ("lf.yml", LF + "quantization_bit: 8\n", {"method": "qlora", "quant": "int8"}),
        ("args.json", '{"output_dir": "o", "fsdp": "full_shard auto_wrap offload", "bf16": true}',
         {"parallel": "fsdp", "offload": "all", "stack": "hf"}),
        ("args.json", '{"output_dir": "o", "deepspeed": {"zero_optimization": {"stage": 2}}, "optim": "adamw_bnb_8bit"}',
         {"parallel": "zero2", "optimizer": "adamw_8bit"}),
        ("sft.json", '{"output_dir": "o", "max_length": 512, "padding_free": true, "model_init_kwargs": {"dtype": "float16"}}',
         {"stack": "trl", "seq_len": 512, "packing": True, "dtype": "fp16"}),
        ("adapter_config.json", '{"peft_type": "LORA", "r": 4, "target_modules": "all-linear", "use_dora": true}',
         {"method": "lora", "lora_rank": 4, "lora_targets": "all-linear"}),
    ],
)  # fmt: skip
def test_each_memory_key_maps_to_its_flag(name, text, expected):
    r = read_config_bytes(text.encode(), name)
    assert {k: r.values.get(k) for k in expected} == expected


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("ax.yml", AX + "gradient_checkpointing: offload\n", "checkpoints offloaded"),
        ("ax.yml", AX + "liger_rms_norm: true\n", "without the axolotl.integrations.liger.LigerPlugin"),
        ("lf.yml", LF + "stage: dpo\n", "stage dpo"),
        ("adapter_config.json", '{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "use_dora": true}', "use_dora"),
        ("args.json", '{"output_dir": "o", "torch_compile": true}', "torch_compile"),
    ],
)  # fmt: skip
def test_keys_that_are_not_modelled_are_noted(name, text, needle):
    assert any(needle in a for a in read_config_bytes(text.encode(), name).assumptions)


def test_a_model_folder_relative_to_the_config_is_found(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text((EXAMPLES / "llama-3.1-8b-bnb-4bit" / "config.json").read_text())
    (tmp_path / "ax.yml").write_text("base_model: ./model\nadapter: lora\nlora_target_linear: true\n")
    doc = estimate_json("--from-config", str(tmp_path / "ax.yml"))
    assert doc["setup"]["method"] == "qlora"  # the folder's bitsandbytes quantization_config makes the LoRA QLoRA
    assert doc["params"]["total"] == 8_030_261_248


def test_a_non_bitsandbytes_quantized_model_is_refused_unless_method_is_given(tmp_path):
    config = json.loads((EXAMPLES / "llama-3.1-8b-bnb-4bit" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "quant_method gptq is not modelled" in fails("--model", str(tmp_path / "config.json"), "--from-config",
                                                        str(EXAMPLES / "hf-training-args.json"))  # fmt: skip
    assert estimate_json("--model", str(tmp_path / "config.json"), "--method", "lora")["setup"]["method"] == "lora"


def test_plan_says_when_a_config_names_a_strategy_it_ranks_itself(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    f = tmp_path / "ax.yml"
    f.write_text("base_model: llama-3.1-8b\ndeepspeed: ds.json\n")
    res = runner.invoke(app, ["plan", "--from-config", str(f), "--gpus", "h100", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert any("zero3 is one of the strategies plan ranks" in a for a in json.loads(res.output)["assumptions"])
