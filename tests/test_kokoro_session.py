"""Choosing Kokoro's onnxruntime providers (training/synth/kokoro_session.py) without a GPU.

The CPU session is real (a one-node model); the CUDA cases replace ``InferenceSession`` by a stand-in
that reports the providers a real session would have got, so the check on them runs here.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from training.synth import kokoro_session  # noqa: E402
from training.synth.kokoro_session import (  # noqa: E402
    CUDA_OPTIONS,
    ProviderError,
    execution_providers,
    open_session,
)


@pytest.fixture
def tiny_model(tmp_path):
    """y = 2 x, as an ONNX file."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class FakeSession:
    """Records how it was made; reports ``got`` as its providers."""

    made: list = []
    got: list = []

    def __init__(self, model, sess_options=None, providers=None):
        FakeSession.made.append((model, sess_options, providers))

    def get_providers(self):
        return list(self.got)


@pytest.fixture
def fake_ort(monkeypatch):
    FakeSession.made, preloads = [], []
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(kokoro_session, "preload_cuda_libraries", lambda: preloads.append(1) or [])
    return preloads


def test_execution_providers():
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    cuda = execution_providers("cuda")
    assert cuda[0] == ("CUDAExecutionProvider", CUDA_OPTIONS) and cuda[1:] == ["CPUExecutionProvider"]
    assert cuda[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    with pytest.raises(ValueError, match="device"):
        execution_providers("gpu")


def test_cpu_session_runs_single_threaded(tiny_model):
    session = open_session(tiny_model, "cpu")
    assert session.get_providers() == ["CPUExecutionProvider"]
    x = np.array([1.0, -2.0, 0.5], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], 2 * x)


def test_cuda_without_cuda_provider_fails_loudly(tiny_model, fake_ort):
    FakeSession.got = ["CPUExecutionProvider"]  # what onnxruntime does when CUDA cannot load
    with pytest.raises(ProviderError, match="asked for CUDA"):
        open_session(tiny_model, "cuda")
    assert fake_ort == [1], "the CUDA libraries are preloaded before the session"
    assert FakeSession.made[0][2] == execution_providers("cuda")


def test_cuda_session_keeps_cpu_fallback(tiny_model, fake_ort):
    FakeSession.got = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = open_session(tiny_model, "cuda", threads=2)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    options = FakeSession.made[0][1]
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)


def test_cpu_session_never_preloads_cuda(tiny_model, fake_ort):
    FakeSession.got = ["CPUExecutionProvider"]
    open_session(tiny_model, "cpu")
    assert fake_ort == []
