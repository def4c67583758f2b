"""The CPU run's default dtype and threads, chosen from what the CPU does natively (capabilities mocked)."""

import argparse

import pytest
import torch

from asr.llm import cpu_defaults
from asr.llm.config import EngineConfig
from asr.llm.engine import resolve_device
from asr.speech.arguments import add_transcribe_arguments, options_from_args


def mock_cpu(monkeypatch, capability: str, avx512_bf16: bool, amx: bool, onednn_isa: str | None = None):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn_isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)


@pytest.mark.parametrize(
    "capability, avx512_bf16, amx, onednn_isa, expected",
    [
        pytest.param("AVX2", False, False, None, "float32", id="avx2-laptop"),
        pytest.param("AVX512", False, False, None, "float32", id="avx512-without-bf16"),
        pytest.param("AVX512", True, False, None, "bfloat16", id="avx512-bf16"),
        pytest.param("AVX512", False, True, None, "bfloat16", id="amx"),
        pytest.param("AVX2", True, True, None, "float32", id="aten-limited-to-avx2"),
        pytest.param("AVX512", True, True, "AVX2", "float32", id="onednn-limited-to-avx2"),
        pytest.param("AVX512", True, True, "AVX512_CORE", "float32", id="onednn-limited-below-bf16"),
        pytest.param("AVX512", True, True, "avx512_core_amx", "bfloat16", id="onednn-amx-lowercase"),
        pytest.param("DEFAULT", False, False, None, "float32", id="no-vector-extensions"),
    ],
)
def test_dtype_is_bf16_only_where_the_cpu_computes_it_natively(
    monkeypatch, capability, avx512_bf16, amx, onednn_isa, expected
):
    mock_cpu(monkeypatch, capability, avx512_bf16, amx, onednn_isa)
    assert cpu_defaults.default_cpu_dtype() == expected
    device, dtype = resolve_device(EngineConfig(device="cpu"))
    assert device.type == "cpu" and dtype == getattr(torch, expected)


def test_named_dtype_wins_over_the_choice(monkeypatch):
    mock_cpu(monkeypatch, "AVX2", False, False)
    assert resolve_device(EngineConfig(device="cpu", dtype="bfloat16"))[1] == torch.bfloat16


def write_topology(sysfs, cpu: int, package: int, core: int) -> None:
    topology = sysfs / f"cpu{cpu}" / "topology"
    topology.mkdir(parents=True)
    (topology / "physical_package_id").write_text(f"{package}\n")
    (topology / "core_id").write_text(f"{core}\n")


def test_physical_cores_count_hyperthread_siblings_once(tmp_path):
    # two packages of two cores with two threads each: cpus 0-3 package 0, 4-7 package 1
    for cpu in range(8):
        write_topology(tmp_path, cpu, package=cpu // 4, core=(cpu % 4) // 2)
    assert cpu_defaults.physical_cores(set(range(8)), tmp_path) == 4
    assert cpu_defaults.physical_cores({0, 1}, tmp_path) == 1  # the affinity holds one core's two threads
    assert cpu_defaults.physical_cores({0, 2, 4}, tmp_path) == 3
    assert cpu_defaults.physical_cores({0, 9}, tmp_path) == 2  # no topology for cpu9: count CPUs


@pytest.mark.parametrize(
    "cpu_max, expected",
    [
        pytest.param("max 100000\n", None, id="no-quota"),
        pytest.param("200000 100000\n", 2, id="two-cpus"),
        pytest.param("150000 100000\n", 2, id="rounded-up"),
        pytest.param("50000 100000\n", 1, id="half-a-cpu"),
        pytest.param(None, None, id="no-cgroup-file"),
    ],
)
def test_cpu_quota(tmp_path, cpu_max, expected):
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert cpu_defaults.cpu_quota(path) == expected


def test_default_threads_is_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(cpu_defaults, "physical_cores", lambda: 8)
    monkeypatch.setattr(cpu_defaults, "cpu_quota", lambda: 3)
    assert cpu_defaults.default_threads() == 3
    monkeypatch.setattr(cpu_defaults, "cpu_quota", lambda: None)
    assert cpu_defaults.default_threads() == 8


def test_threads_and_dtype_flags_reach_the_options():
    parser = argparse.ArgumentParser()
    add_transcribe_arguments(parser)
    defaults = options_from_args(parser.parse_args([]))
    assert defaults.dtype is None and defaults.threads is None  # chosen per CPU at load time
    chosen = options_from_args(parser.parse_args(["--dtype", "bfloat16", "--threads", "3"]))
    assert chosen.dtype == "bfloat16" and chosen.threads == 3
    with pytest.raises(ValueError, match="threads"):
        options_from_args(parser.parse_args(["--threads", "0"]))


def test_load_transcriber_sets_the_threads_before_loading(monkeypatch):
    """--threads, else one per physical core, is in force when the model (and its encoder, which reads
    torch's thread count) loads."""
    from asr.speech import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "load_speech_model", lambda *args: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(pipeline, "default_threads", lambda: 1)
    before = torch.get_num_threads()
    try:
        pipeline.load_transcriber(None, pipeline.TranscribeOptions(device="cpu", threads=3))
        pipeline.load_transcriber(None, pipeline.TranscribeOptions(device="cpu"))
    finally:
        torch.set_num_threads(before)
    assert seen == [3, 1]


@pytest.mark.parametrize(
    "capability, avx512_bf16, device, named, expected",
    [
        pytest.param("AVX2", False, "cpu", None, ("float32", True), id="avx2-gets-int8-weights"),
        pytest.param("AVX512", True, "cpu", None, (None, False), id="native-bf16-keeps-the-engine-choice"),
        pytest.param("AVX2", False, "cpu", "float32", ("float32", False), id="named-float32-wins"),
        pytest.param("AVX2", False, "cuda", None, (None, False), id="gpu-untouched"),
    ],
)
def test_speech_llm_takes_int8_weights_where_bf16_is_not_native(
    monkeypatch, capability, avx512_bf16, device, named, expected
):
    from asr.speech.pipeline import TranscribeOptions

    mock_cpu(monkeypatch, capability, avx512_bf16, False)
    config = TranscribeOptions(device=device, dtype=named).engine_config()
    assert (config.dtype, config.int8_weights) == expected
