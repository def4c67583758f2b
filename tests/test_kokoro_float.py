"""Dequantizing Kokoro's int8 graph (training/synth/kokoro_float.py) on small graphs of the same shape.

Each graph is built with the chains onnxruntime's dynamic quantization writes (the ones the Kokoro
model holds); onnxruntime runs the int8 graph and the dequantized one on the CPU. The float graph
must equal the float layer on the dequantized weights, and the int8 graph within the noise of its
8-bit activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from training.synth.kokoro_float import INTEGER_OPS, agreement, dequantize  # noqa: E402

ACTIVATION_NOISE = 0.03
"""Relative RMS between the int8 and the float graph: uint8 activations over the input's range."""


def run(model, feeds: dict) -> np.ndarray:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def relative_rms(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.sqrt(np.mean((reference - other) ** 2)) / np.sqrt(np.mean(reference**2)))


def make_model(nodes, inputs, initializers, output_shape):
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)
    weights = [numpy_helper.from_array(value, name) for name, value in initializers.items()]
    graph = helper.make_graph(nodes, "int8", inputs, [output], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                   helper.make_opsetid("com.microsoft", 1)])


def quantize_chain(integer_op: str, weight_inputs: list[str], bias_int: str | None = None) -> list:
    """DynamicQuantizeLinear(x) -> integer op [-> Add(integer bias)] -> Cast -> Mul(x_scale * w_scale)."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node(integer_op, ["xq", weight_inputs[0], "xz", weight_inputs[1]], ["acc"],
                         **({"pads": [1, 1], "kernel_shape": [3]} if integer_op == "ConvInteger" else {})),
        helper.make_node("Mul", ["xs", "w_scale"], ["scale"]),
    ]
    if bias_int:
        nodes.append(helper.make_node("Add", ["acc", bias_int], ["acc_bias"]))
    accumulated = "acc_bias" if bias_int else "acc"
    nodes += [helper.make_node("Cast", [accumulated], ["acc_float"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["acc_float", "scale"], ["y"])]
    return nodes


@pytest.mark.parametrize("shared_use", [1, 2], ids=["one-reader", "shared-weight"])
def test_matmul_integer_chain(shared_use):
    rng = np.random.default_rng(0)
    weights_q = rng.integers(-127, 128, (8, 6), dtype=np.int8)
    zero = rng.integers(-3, 4, 6, dtype=np.int8)
    scale = rng.uniform(0.001, 0.01, 6).astype(np.float32)
    nodes = quantize_chain("MatMulInteger", ["w", "w_zero"])
    if shared_use == 2:  # a second reader of the same weight (ALBERT's shared layers)
        nodes += [helper.make_node("MatMulInteger", ["xq", "w", "xz", "w_zero"], ["acc2"]),
                  helper.make_node("Cast", ["acc2"], ["acc2_float"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["acc2_float", "scale"], ["y2"])]
        nodes[-4].output[0] = "y1"
        nodes.append(helper.make_node("Add", ["y1", "y2"], ["y"]))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 8])],
                       {"w": weights_q, "w_zero": zero, "w_scale": scale}, [2, 5, 6])
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    quantized = run(model, {"x": x})
    converted = dequantize(model)
    assert not {n.op_type for n in converted.graph.node} & set(INTEGER_OPS)
    assert len(converted.graph.initializer) == 1, "one dequantized weight, nothing left of the int8 ones"
    floating = run(converted, {"x": x})
    expected = shared_use * x @ ((weights_q.astype(np.float32) - zero) * scale)
    np.testing.assert_allclose(floating, expected, rtol=1e-5, atol=1e-6)
    assert relative_rms(floating, quantized) < ACTIVATION_NOISE


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_conv_integer_chain(with_bias):
    rng = np.random.default_rng(1)
    weights_q = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    zero, scale = np.array(128, np.uint8), np.array(0.004, np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    nodes = quantize_chain("ConvInteger", ["w", "w_zero"], "bias_int" if with_bias else None)
    initializers = {"w": weights_q, "w_zero": zero, "w_scale": scale}
    if with_bias:  # floor(b / (x_scale * w_scale)) as int32 [1, channels, 1]
        nodes[3:3] = [helper.make_node("Div", ["b", "scale"], ["b_div"]),
                      helper.make_node("Floor", ["b_div"], ["b_floor"]),
                      helper.make_node("Cast", ["b_floor"], ["b_int"], to=TensorProto.INT32),
                      helper.make_node("Reshape", ["b_int", "b_shape"], ["bias_int"])]
        initializers |= {"b": bias, "b_shape": np.array([1, 6, 1], np.int64)}
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10])],
                       initializers, [1, 6, 10])
    x = rng.standard_normal((1, 4, 10)).astype(np.float32)
    quantized = run(model, {"x": x})
    converted = dequantize(model)
    assert [n.op_type for n in converted.graph.node] == ["Conv"]
    floating = run(converted, {"x": x})
    weights = (weights_q.astype(np.float32) - 128) * scale  # [out, in, kernel]
    padded = np.pad(x[0], ((0, 0), (1, 1)))
    expected = sum(weights[:, :, k] @ padded[:, k : k + 10] for k in range(3))
    expected += bias[:, None] if with_bias else 0
    np.testing.assert_allclose(floating[0], expected, rtol=1e-4, atol=1e-5)
    assert relative_rms(floating, quantized) < ACTIVATION_NOISE


def test_dynamic_quantize_lstm():
    rng = np.random.default_rng(2)
    dirs, size, hidden, steps = 2, 12, 5, 7
    weights_q = rng.integers(-127, 128, (dirs, size, 4 * hidden), dtype=np.int8)
    recurrent_q = rng.integers(-127, 128, (dirs, hidden, 4 * hidden), dtype=np.int8)
    initializers = {
        "w": weights_q, "r": recurrent_q,
        "b": (0.1 * rng.standard_normal((dirs, 8 * hidden))).astype(np.float32),
        "h0": np.zeros((dirs, 1, hidden), np.float32), "c0": np.zeros((dirs, 1, hidden), np.float32),
        "w_scale": np.array([0.004, 0.006], np.float32), "w_zero": np.array([0, 2], np.int8),
        "r_scale": np.array([0.005, 0.003], np.float32), "r_zero": np.array([1, 0], np.int8),
    }
    inputs = ["x", "w", "r", "b", "", "h0", "c0", "", "w_scale", "w_zero", "r_scale", "r_zero"]
    node = helper.make_node("DynamicQuantizeLSTM", inputs, ["y"], domain="com.microsoft",
                            direction="bidirectional", hidden_size=hidden)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, size])],
                       initializers, [steps, dirs, 1, hidden])
    x = rng.standard_normal((steps, 1, size)).astype(np.float32)
    quantized = run(model, {"x": x})
    converted = dequantize(model)
    assert [n.op_type for n in converted.graph.node] == ["LSTM"]
    floating = run(converted, {"x": x})
    assert floating.shape == quantized.shape
    assert relative_rms(quantized, floating) < ACTIVATION_NOISE  # a wrong gate order or layout: ~1


def test_unknown_chain_is_refused():
    """An integer op whose input is not a DynamicQuantizeLinear output is not guessed at."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Cast", ["x"], ["xq"], to=TensorProto.UINT8),
             helper.make_node("MatMulInteger", ["xq", "w"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                       {"w": rng.integers(0, 256, (8, 6), dtype=np.uint8)}, [2, 6])
    with pytest.raises(ValueError, match="DynamicQuantizeLinear"):
        dequantize(model)


def test_agreement_ignores_phase():
    """Two renderings whose waveforms differ only in phase agree; unrelated audio does not."""
    rng = np.random.default_rng(4)
    t = np.arange(24000) / 24000
    tone = np.sin(2 * np.pi * 220 * t) * np.hanning(len(t))
    shifted = np.sin(2 * np.pi * 220 * t + 1.3) * np.hanning(len(t))
    snr, correlation = agreement(tone, shifted)
    assert snr > 20 and correlation > 0.99
    snr, correlation = agreement(tone, rng.standard_normal(len(t)))
    assert snr < 3 and correlation < 0.5


KOKORO_INT8 = Path(".cache/kokoro/kokoro-v1.0.int8.onnx")


@pytest.mark.slow
@pytest.mark.skipif(not KOKORO_INT8.exists(), reason="needs training/setup_tts.sh's Kokoro model")
def test_real_kokoro_model_dequantizes(tmp_path):
    """Every integer op of the shipped int8 model is replaced, and its speech keeps its spectrum."""
    pytest.importorskip("kokoro_onnx")
    from training.synth.kokoro_float import check, float_model

    out = float_model(KOKORO_INT8, tmp_path / "kokoro.fp32.onnx")
    model = onnx.load(str(out), load_external_data=False)
    assert not {n.op_type for n in model.graph.node} & set(INTEGER_OPS)
    (row,) = check(KOKORO_INT8, out, Path(".cache/kokoro/voices"), 1)
    assert abs(row["seconds"] - row["float_seconds"]) < 0.1
    # float vs int8: 0.78-0.98 on the check sentences; another text ~0.2, another voice 0.41,
    # the same voice 5% faster 0.50
    assert row["correlation"] > 0.7
