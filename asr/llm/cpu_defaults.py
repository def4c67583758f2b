"""What a CPU run defaults to, from what this CPU does natively: the LLM's dtype and the thread count.

dtype: bfloat16 only where the CPU computes it natively (AVX512-BF16 or AMX tiles, and torch's kernels
are allowed to use AVX-512); elsewhere (AVX2 laptops and servers, most users' CPUs) float32. On an
emulated AVX2 CPU (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``) a bf16 [64, 576] x
[576, 1536] matmul takes 52 ms against 1.6 ms in float32; with native bf16 it takes 0.13 ms against
0.48 ms (BENCHMARKS.md, CPU dtype and threads). ``torch.cpu._is_avx512_bf16_supported`` and
``_is_amx_tile_supported`` read the CPU's flags and ignore those environment limits, while
``torch.backends.cpu.get_cpu_capability`` honours ``ATEN_CPU_CAPABILITY``, so both are consulted, and
``ONEDNN_MAX_CPU_ISA`` (oneDNN runs the bf16 matmuls) too.

The speech LLM goes further where bf16 is not native: int8 linear layers over float32 (``int8``,
``asr.llm.quantize``) cut its prefill and reading-scoring time 2-2.5x on an emulated AVX2 CPU at the
dev set's WER (9.76% against 9.65% as 5-minute recordings, 9.31% against 9.36% per utterance:
BENCHMARKS.md, CPU speed), which brings it within 2x of faster-whisper's time there.

threads: one per physical core this process may run on (a core's second hyper-thread shares its
vector units and memory bandwidth), and no more than a container's CPU quota (cgroup v2 ``cpu.max``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

NATIVE_BF16_DTYPE = "bfloat16"
PORTABLE_DTYPE = "float32"
PORTABLE_SPEECH_DTYPE = "int8"
# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) under which it still has bf16 instructions
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                    "AVX10_2_512_AMX_2", "ALL", "DEFAULT")
SYSFS_CPU = Path("/sys/devices/system/cpu")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively and torch and oneDNN may use those instructions."""
    has_bf16_units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    onednn_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    return (
        has_bf16_units
        and torch.backends.cpu.get_cpu_capability() == "AVX512"
        and onednn_isa in ONEDNN_BF16_ISAS
    )


def default_cpu_dtype() -> str:
    """The LLM dtype of a CPU run that names none: ``bfloat16`` with native bf16, else ``float32``."""
    return NATIVE_BF16_DTYPE if native_bf16() else PORTABLE_DTYPE


def run_device(device: str | None) -> torch.device:
    """``device``, or where it is None: CUDA when available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def default_speech_dtype(device: str | None) -> str | None:
    """The speech LLM's dtype when the user names none: ``int8`` on a CPU without native bf16 (``device``
    ``cpu``, or None on a machine without CUDA); None elsewhere, leaving the engine's choice."""
    on_cpu = run_device(device).type == "cpu"
    return PORTABLE_SPEECH_DTYPE if on_cpu and not native_bf16() else None


def physical_cores(cpus: set[int] | None = None, sysfs: Path = SYSFS_CPU) -> int:
    """Physical cores among ``cpus`` (default: the CPUs this process may run on), counted from the
    sysfs topology (one per distinct package and core id); the number of CPUs where sysfs lacks it."""
    cpus = os.sched_getaffinity(0) if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return max(1, len(cores))


def cpu_quota(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs a cgroup v2 quota allows (``cpu.max`` "QUOTA PERIOD", rounded up), None without one."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, -(-int(quota) // int(period)))


def default_threads() -> int:
    """Threads of a CPU run when the user names none: physical cores, capped by the CPU quota."""
    quota = cpu_quota()
    return physical_cores() if quota is None else min(physical_cores(), quota)
