"""The GPU catalog: every entry valid and sourced, memory consistent with its readings, lookups."""

import tomllib
from importlib.resources import files

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_catalog import (
    GpuFileError,
    MemoryReadings,
    find_gpu,
    list_gpus,
    load_catalog,
    load_gpu_file,
    match_cuda_name,
)
from vramplan.errors import UnknownGpuError, VramplanError
from vramplan.specs.gpu import GpuSpec

REQUIRED_IDS = {
    "rtx-3090", "rtx-4090", "rtx-5090", "rtx-a6000", "rtx-6000-ada", "rtx-pro-6000",
    "rtx-pro-6000-server", "l4", "l40s", "a10g", "t4", "v100-16gb", "v100-32gb", "a100-40gb",
    "a100-40gb-pcie", "a100-80gb", "a100-80gb-pcie", "h100-pcie", "h100-sxm", "h100-nvl", "h200",
    "h200-nvl", "b200",
}  # fmt: skip
#: numbers that must name their source in [sources] whenever they are set
SOURCED_FIELDS = ("memory_bytes", "bandwidth_gbps", "bf16_tflops", "fp16_tflops", "gpu_gpu_gbps", "tdp_w",
                  "price_usd_per_hour", "compute_capability", "flash_attention_2")  # fmt: skip
MIB = 2**20
GIB = 2**30
#: lowest CUDA-visible share of the marketed size seen in the reference data (T4: 14930 of 16384 MiB)
MIN_VISIBLE_SHARE = 0.9

TOML_FILES = sorted(
    (entry for entry in files("gpu_catalog").joinpath("gpus").iterdir() if entry.name.endswith(".toml")),
    key=lambda entry: entry.name,
)
CATALOG = load_catalog()


def _raw(gpu_id: str) -> dict:
    return tomllib.loads(files("gpu_catalog").joinpath("gpus", f"{gpu_id}.toml").read_text(encoding="utf-8"))


def _readings(gpu_id: str) -> MemoryReadings:
    return MemoryReadings.model_validate(_raw(gpu_id)["readings"])


def test_catalog_has_exactly_the_required_ids():
    assert set(CATALOG) == REQUIRED_IDS
    assert len(TOML_FILES) == len(REQUIRED_IDS)


@pytest.mark.parametrize("gpu_id", sorted(REQUIRED_IDS))
def test_every_set_number_names_its_source(gpu_id):
    raw = _raw(gpu_id)
    missing = [field for field in SOURCED_FIELDS if field in raw and field not in raw["sources"]]
    assert missing == []
    assert all(source.strip() for source in raw["sources"].values())


@pytest.mark.parametrize("gpu_id", sorted(REQUIRED_IDS))
def test_every_entry_has_readings_and_a_price_note(gpu_id):
    spec = CATALOG[gpu_id]
    assert _readings(gpu_id).marketed_gb > 0
    assert spec.price_note, "say where the price came from, or why there is none"


@pytest.mark.parametrize("gpu_id", sorted(REQUIRED_IDS))
def test_memory_bytes_is_the_smallest_reading_or_marked_estimated(gpu_id):
    spec, readings = CATALOG[gpu_id], _readings(gpu_id)
    if readings.runtime_total_bytes:
        assert not spec.memory_bytes_estimated
        assert spec.memory_bytes == min(readings.runtime_total_bytes)
    else:
        assert spec.memory_bytes_estimated
        assert "memory_bytes" in _raw(gpu_id)["sources"]


@pytest.mark.parametrize("gpu_id", sorted(REQUIRED_IDS))
def test_memory_bytes_is_below_marketed_and_nvidia_smi_totals(gpu_id):
    # "80 GB" HBM parts have 80 GiB physically; CUDA sees a little less, nvidia-smi a little more.
    spec, readings = CATALOG[gpu_id], _readings(gpu_id)
    marketed_bytes = readings.marketed_gb * GIB
    assert MIN_VISIBLE_SHARE * marketed_bytes < spec.memory_bytes < marketed_bytes
    if readings.nvidia_smi_total_mib is not None:
        assert spec.memory_bytes < readings.nvidia_smi_total_mib * MIB


def test_estimated_memory_is_the_fallback_for_cards_without_a_reading():
    estimated = {spec.id for spec in CATALOG.values() if spec.memory_bytes_estimated}
    assert estimated == {"h100-nvl", "h200-nvl", "rtx-pro-6000"}


def test_bf16_is_unset_where_it_is_emulated():
    for gpu_id in ("t4", "v100-16gb", "v100-32gb"):
        assert CATALOG[gpu_id].bf16_tflops is None
        assert CATALOG[gpu_id].fp16_tflops is not None
        assert not CATALOG[gpu_id].flash_attention_2
    assert all(spec.bf16_tflops for spec in CATALOG.values() if spec.architecture not in ("Turing", "Volta"))


def test_nvlink_bandwidth_is_per_direction():
    assert CATALOG["a100-80gb"].gpu_gpu_gbps == 300
    assert CATALOG["h100-sxm"].gpu_gpu_gbps == 450
    assert CATALOG["b200"].gpu_gpu_gbps == 900
    assert CATALOG["h100-nvl"].gpu_gpu_gbps == 300
    assert CATALOG["l40s"].gpu_gpu_gbps is None


def test_list_gpus_is_sorted_by_memory_then_id():
    ids = [spec.id for spec in list_gpus()]
    assert ids[0] == "t4" and ids[-1] == "b200"
    assert ids.index("rtx-pro-6000") + 1 == ids.index("rtx-pro-6000-server")
    assert [spec.memory_bytes for spec in list_gpus()] == sorted(spec.memory_bytes for spec in CATALOG.values())


def test_load_catalog_returns_a_copy():
    load_catalog().pop("h100-sxm")
    assert "h100-sxm" in load_catalog()


@pytest.mark.parametrize(
    ("name", "gpu_id"),
    [
        ("h100", "h100-sxm"),
        ("H100-SXM", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("RTX 4090", "rtx-4090"),
        ("rtx_4090", "rtx-4090"),
        ("rtx4090", "rtx-4090"),
        ("4090", "rtx-4090"),
        ("GeForce RTX 4090", "rtx-4090"),
        ("Tesla T4", "t4"),
        ("a6000", "rtx-a6000"),
        ("A100 SXM 80GB", "a100-80gb"),
        ("NVIDIA A100-PCIE-40GB", "a100-40gb-pcie"),
        ("h200", "h200"),
        ("H200 NVL", "h200-nvl"),
        ("rtx pro 6000 server", "rtx-pro-6000-server"),
    ],
)
def test_find_gpu_accepts_ids_aliases_and_spellings(name, gpu_id):
    assert find_gpu(name).id == gpu_id


@given(data=st.data())
@settings(deadline=None, max_examples=50)
def test_find_gpu_ignores_case_and_separator_style(data):
    spec = data.draw(st.sampled_from(sorted(CATALOG.values(), key=lambda s: s.id)))
    name = data.draw(st.sampled_from([spec.id, *spec.aliases]))
    separator = data.draw(st.sampled_from([" ", "_", "-", "  "]))
    respelled = "".join(
        separator if char in " _-" else (char.upper() if data.draw(st.booleans()) else char.lower()) for char in name
    )
    assert find_gpu(respelled).id == spec.id


@pytest.mark.parametrize(
    ("name", "candidates"),
    [
        ("a100", "a100-40gb, a100-40gb-pcie, a100-80gb, a100-80gb-pcie"),
        ("h100-80", "h100-pcie, h100-sxm"),
        ("v100", "v100-16gb, v100-32gb"),
        ("RTX 6000", "rtx-6000-ada, rtx-pro-6000, rtx-pro-6000-server"),
    ],
)
def test_ambiguous_name_lists_the_candidates(name, candidates):
    with pytest.raises(UnknownGpuError) as raised:
        find_gpu(name)
    assert str(raised.value) == f"ambiguous GPU {name!r}: did you mean {candidates}?"


def test_unknown_name_suggests_close_ids_and_the_gpus_command():
    with pytest.raises(UnknownGpuError) as raised:
        find_gpu("h10-sxm")
    message = str(raised.value)
    assert message.startswith("unknown GPU 'h10-sxm'")
    assert "h100-sxm" in message
    assert "vramplan gpus" in message
    assert "\n" not in message


def test_a_name_that_only_starts_like_an_id_is_not_guessed():
    with pytest.raises(UnknownGpuError, match="unknown GPU 'l40'.*l40s"):
        find_gpu("l40")  # the L40 (half-rate bf16) is not the L40S


def test_match_cuda_name_maps_a_measured_device():
    assert match_cuda_name("NVIDIA H100 80GB HBM3", 85_021_163_520).id == "h100-sxm"
    assert match_cuda_name("NVIDIA A100-SXM4-40GB").id == "a100-40gb"


def test_match_cuda_name_gives_none_for_unknown_or_inconsistent_devices():
    assert match_cuda_name("NVIDIA GH200 480GB", 102_000_000_000) is None
    assert match_cuda_name("NVIDIA H100 80GB HBM3 MIG 1g.10gb", 10_000_000_000) is None
    assert match_cuda_name("NVIDIA H100 80GB HBM3", 42_000_000_000) is None


def test_user_gpu_file_parses_like_a_catalog_entry(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(files("gpu_catalog").joinpath("gpus", "l4.toml").read_text(encoding="utf-8"))
    assert load_gpu_file(path) == CATALOG["l4"]
    assert find_gpu(str(path)) == CATALOG["l4"]


def test_minimal_user_gpu_file_needs_no_sources(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(
        'id = "lab-card"\nname = "Lab card"\narchitecture = "Hopper"\ncompute_capability = "9.0"\n'
        'memory_bytes = 1_000_000\nmemory_type = "HBM3"\nbandwidth_gbps = 1.0\ninterconnect = "PCIe"\n'
    )
    spec = load_gpu_file(path)
    assert isinstance(spec, GpuSpec) and spec.id == "lab-card" and spec.sources == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('id = "x"\nname = ', "not valid TOML"),
        ('id = "x"\nname = "X"\n', "architecture: Field required"),
        (
            'id = "x"\nname = "X"\narchitecture = "A"\ncompute_capability = "9.0"\nmemory_bytes = -1\n'
            'memory_type = "HBM3"\nbandwidth_gbps = 1.0\ninterconnect = "PCIe"\nvram_gb = 80\n',
            "memory_bytes: Input should be greater than 0; vram_gb: unknown field",
        ),
        (
            'id = "X Card"\nname = "X"\narchitecture = "A"\ncompute_capability = "9.0"\nmemory_bytes = 1\n'
            'memory_type = "HBM3"\nbandwidth_gbps = 1.0\ninterconnect = "PCIe"\n',
            "must be lowercase",
        ),
        ('id = "x"\n[sources]\nmemory_gb = "datasheet"\n', "sources names unknown fields memory_gb"),
        ('id = "x"\n[readings]\nmarketed_gb = "eighty"\n', "invalid [readings]: marketed_gb"),
    ],
)
def test_malformed_user_gpu_file_gives_one_line_error(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(VramplanError) as raised:
        load_gpu_file(path)
    assert isinstance(raised.value, GpuFileError)
    message = str(raised.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message and "Traceback" not in message


def test_missing_user_gpu_file_is_a_clean_error(tmp_path):
    with pytest.raises(GpuFileError, match="cannot read GPU file .*nope.toml: No such file"):
        load_gpu_file(tmp_path / "nope.toml")
