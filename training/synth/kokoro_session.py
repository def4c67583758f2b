"""One onnxruntime session of the Kokoro model on the CPU or on CUDA, checked and logged.

On CUDA the model should be the float graph of ``training.synth.kokoro_float`` (the int8 one's
integer ops have no CUDA kernels and would run on the CPU). The CUDA and cuDNN libraries come from
the ``nvidia-*`` wheels that torch's CUDA build installs: onnxruntime's own ``preload_dlls`` only
looks beside onnxruntime (``/tmp/site`` on the lent GPU machine), so ``preload_cuda_libraries``
loads them from wherever the ``nvidia`` namespace package lives first. A session that asked for
CUDA and did not get it raises instead of crawling on one CPU thread.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
CUDA_LIBRARIES = ("libcudart", "libcublasLt", "libcublas", "libcufft", "libcurand", "libnvrtc", "libcudnn")
"""Loaded in this order (cuBLAS needs cuBLASLt): the libraries the CUDA provider links against."""
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
"""Every utterance has a new length: an exhaustive cuDNN search per new shape (the default) would
cost more than the convolution, and a power-of-two arena would hold twice the memory it needs."""


class ProviderError(RuntimeError):
    """The session did not get the execution provider that was asked for."""


def execution_providers(device: str) -> list:
    """onnxruntime's provider list for ``device`` ("cpu" or "cuda"): CUDA first with
    ``CUDA_OPTIONS``, the CPU behind it for the few ops CUDA lacks."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return [("CUDAExecutionProvider", dict(CUDA_OPTIONS)), "CPUExecutionProvider"]
    raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


def nvidia_library_dirs() -> list[Path]:
    """``lib`` folders of the installed ``nvidia-*`` wheels (``nvidia/cu13/lib``, ``nvidia/cudnn/lib``)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    return sorted(folder for root in roots for folder in Path(root).glob("*/lib") if folder.is_dir())


def preload_cuda_libraries() -> list[str]:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` wheels (global symbols, so the CUDA
    provider's own loading finds them by name), then onnxruntime's ``preload_dlls`` where it has
    one. Returns the files loaded here."""
    import onnxruntime

    loaded = []
    for name in CUDA_LIBRARIES:
        for folder in nvidia_library_dirs():
            for path in sorted(folder.glob(f"{name}.so.[0-9]*")):
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                loaded.append(path.name)
    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()
    return loaded


def open_session(model: str | Path, device: str, threads: int = 1):
    """An ``onnxruntime.InferenceSession`` of ``model`` on ``device`` with ``threads`` CPU threads;
    raises ``ProviderError`` when CUDA was asked for and the session runs without it."""
    import onnxruntime

    providers = execution_providers(device)
    if device == "cuda":
        loaded = preload_cuda_libraries()
        log.info("preloaded %d CUDA libraries: %s", len(loaded), " ".join(loaded) or "none found")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=providers)
    got = session.get_providers()
    log.info("Kokoro session on %s: providers %s (available: %s)", device, got,
             onnxruntime.get_available_providers())
    if device == "cuda" and "CUDAExecutionProvider" not in got:
        raise ProviderError(
            f"asked for CUDA but the Kokoro session got {got}; available: "
            f"{onnxruntime.get_available_providers()}. Install the onnxruntime-gpu wheel ahead of "
            "onnxruntime (PYTHONPATH=/tmp/site after `training/gpu_stage.sh unpack`) on a machine with "
            "torch's CUDA libraries, or run with --device cpu"
        )
    return session
