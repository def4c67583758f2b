"""The Kokoro int8 ONNX graph with its weights dequantized: a float32 graph that runs on CUDA.

The int8 model (``kokoro-v1.0.int8.onnx``, onnxruntime dynamic quantization) computes its linear
layers as ``DynamicQuantizeLinear`` of the activations, ``MatMulInteger``/``ConvInteger`` with int8
weights, and a float rescale; its LSTMs are ``com.microsoft.DynamicQuantizeLSTM``. None of those has
a CUDA kernel, so on the CUDA provider most of the model would fall back to the CPU. Here each
chain becomes one float op on dequantized weights ``(w_q - w_zero) * w_scale``:

    DynamicQuantizeLinear(x) -> MatMulInteger(., W_q) -> Cast -> Mul(., x_scale * w_scale)
        => MatMul(x, W)
    DynamicQuantizeLinear(x) -> ConvInteger(., W_q) [-> Add(., floor(b / (x_scale * w_scale)))] -> Cast -> Mul
        => Conv(x, W[, b])
    DynamicQuantizeLSTM(x, W_q [dirs, in, 4h], R_q, ...) => LSTM(x, W [dirs, 4h, in], R, ...)

The activations are no longer quantized, so the audio differs from the int8 model's by that
quantization noise (``python -m training.synth.kokoro_float --check`` measures it). Everything else
(the embedding tables' ``DequantizeLinear``, onnxruntime's fused ops) is kept as it is.

    python -m training.synth.kokoro_float [--model INT8.onnx] [--out FLOAT.onnx] [--check N]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FLOAT_NAME = "kokoro-v1.0.fp32.onnx"
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "DynamicQuantizeLinear")
BIAS_PATH_OPS = ("Reshape", "Cast", "Floor", "Round")
"""Ops between a float bias and the integer bias added to ``ConvInteger`` (all one-input here)."""
WINDOW, HOP = 1024, 256  # STFT of the agreement check: 43 ms windows at Kokoro's 24 kHz
CHECK_TEXTS = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "In the beginning the universe was created; this has made a lot of people very angry.",
    "Please call Stella and ask her to bring these things with her from the store.",
)


class Graph:
    """Index of an ONNX graph: producer and consumers of every tensor, initializers as numpy."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self.model, self.graph = model, model.graph
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.weights = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}

    def only_consumer(self, tensor: str, op_type: str):
        """The single node reading ``tensor``, which must be an ``op_type``."""
        readers = self.consumers.get(tensor, [])
        if len(readers) != 1 or readers[0].op_type != op_type:
            raise ValueError(f"{tensor}: expected one {op_type} reader, found {[n.op_type for n in readers]}")
        return readers[0]

    def other_input(self, node, tensor: str) -> str:
        return node.input[1] if node.input[0] == tensor else node.input[0]

    def add_weight(self, name: str, array: np.ndarray) -> str:
        """Add an initializer once (ALBERT's layers share their weights: 12 readers of one)."""
        from onnx import numpy_helper

        if name not in self.weights:
            self.weights[name] = array
            self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name


def per_axis(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A scalar, or a vector along ``axis`` of an ``ndim`` array, shaped to broadcast against it."""
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def weight_scale(index: Graph, rescale, integer_result: str) -> str:
    """The name of the weight's scale: the initializer factor of the ``x_scale * w_scale`` Mul that
    ``rescale`` multiplies ``integer_result`` (the integer op's output, cast to float) by."""
    combined = index.producer[index.other_input(rescale, integer_result)]
    if combined.op_type != "Mul":
        raise ValueError(f"{rescale.name}: the scale comes from {combined.op_type}, not a Mul")
    names = [name for name in combined.input if name in index.weights]
    if len(names) != 1:
        raise ValueError(f"{combined.name}: expected one initializer factor, got {names}")
    return names[0]


def float_bias(index: Graph, bias_int: str) -> str:
    """The float bias initializer that ``bias_int`` was quantized from (``floor(b / scale)``)."""
    node = index.producer[bias_int]
    while node.op_type in BIAS_PATH_OPS:
        node = index.producer[node.input[0]]
    if node.op_type != "Div" or node.input[0] not in index.weights:
        raise ValueError(f"{bias_int}: no float bias initializer upstream (reached {node.op_type})")
    return node.input[0]


def replace_integer_op(index: Graph, node, new_nodes: list) -> None:
    """Append the float ``MatMul``/``Conv`` that replaces ``node``'s chain (its rescale ``Mul`` output
    becomes the float op's output; the integer nodes are left for ``prune``)."""
    from onnx import helper

    quantize = index.producer[node.input[0]]
    if quantize.op_type != "DynamicQuantizeLinear":
        raise ValueError(f"{node.name}: input comes from {quantize.op_type}, not DynamicQuantizeLinear")
    source = quantize.input[0]
    after = index.consumers[node.output[0]]
    bias = None
    if node.op_type == "ConvInteger" and len(after) == 1 and after[0].op_type == "Add":
        bias = float_bias(index, index.other_input(after[0], node.output[0]))
        cast = index.only_consumer(after[0].output[0], "Cast")
    else:
        cast = index.only_consumer(node.output[0], "Cast")
    rescale = index.only_consumer(cast.output[0], "Mul")
    scale = weight_scale(index, rescale, cast.output[0])
    weights_q = index.weights[node.input[1]].astype(np.float32)
    # per column of a MatMul weight [in, out], per output channel of a Conv weight [out, in, kernel]
    axis = weights_q.ndim - 1 if node.op_type == "MatMulInteger" else 0
    zero = index.weights[node.input[3]] if len(node.input) > 3 and node.input[3] else np.zeros(1)
    weights = (weights_q - per_axis(zero.astype(np.float32), weights_q.ndim, axis)) * per_axis(
        index.weights[scale].astype(np.float32), weights_q.ndim, axis)
    name = index.add_weight(f"{node.input[1]}_times_{scale}", weights.astype(np.float32))
    if node.op_type == "MatMulInteger":
        new_nodes.append(
            helper.make_node("MatMul", [source, name], [rescale.output[0]], rescale.output[0] + "_float"))
    else:
        inputs = [source, name] + ([bias] if bias else [])
        new_nodes.append(helper.make_node("Conv", inputs, [rescale.output[0]], rescale.output[0] + "_float"))
        new_nodes[-1].attribute.extend(node.attribute)
    rescale.output[0] = rescale.output[0] + "_integer_path"


def replace_lstm(index: Graph, node, new_nodes: list) -> None:
    """Append the float ``LSTM`` of a ``DynamicQuantizeLSTM`` (inputs: X, W, R, B, sequence_lens,
    initial_h, initial_c, P, W_scale, W_zero_point, R_scale, R_zero_point; W: [dirs, in, 4h])."""
    from onnx import helper

    def dequantized(quantized: str, scale: str, zero: str) -> str:
        values = index.weights[quantized].astype(np.float32)  # [dirs, in or hidden, 4h]
        dirs = values.shape[0]
        shift = index.weights[zero].astype(np.float32).reshape(dirs, 1, -1)
        factor = index.weights[scale].astype(np.float32).reshape(dirs, 1, -1)
        return index.add_weight(quantized + "_dequantized", ((values - shift) * factor).transpose(0, 2, 1))

    inputs = list(node.input) + [""] * (12 - len(node.input))
    weights = dequantized(inputs[1], inputs[8], inputs[9])
    recurrent = dequantized(inputs[2], inputs[10], inputs[11])
    lstm = helper.make_node("LSTM", [inputs[0], weights, recurrent, *inputs[3:8]], list(node.output),
                            node.output[0] + "_float")
    lstm.attribute.extend(node.attribute)
    new_nodes.append(lstm)
    del node.output[:]


def prune(graph) -> None:
    """Drop nodes whose outputs nothing reads and initializers no node reads, until none are left."""
    needed = {out.name for out in graph.output}
    while True:
        read = needed | {name for node in graph.node for name in node.input}
        dead = [node for node in graph.node if not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)
    made = {out for node in graph.node for out in node.output}
    for info in [v for v in graph.value_info if v.name not in made]:
        graph.value_info.remove(info)


def dequantize(model):
    """``model`` (an int8 ``onnx.ModelProto``, changed in place and returned) with every integer
    chain replaced by float ops; raises ``ValueError`` on a chain of another shape."""
    index = Graph(model)
    new_nodes: list = []
    for node in list(model.graph.node):
        if node.op_type in ("MatMulInteger", "ConvInteger"):
            replace_integer_op(index, node, new_nodes)
        elif node.op_type == "DynamicQuantizeLSTM":
            replace_lstm(index, node, new_nodes)
    model.graph.node.extend(new_nodes)
    prune(model.graph)
    sort_topologically(model.graph)
    left = sorted({node.op_type for node in model.graph.node} & set(INTEGER_OPS))
    if left:
        raise ValueError(f"integer ops left after dequantizing: {left}")
    return model


def sort_topologically(graph) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (ONNX requires it)."""
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a missing input near {pending[0].name}")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


def float_model(int8_model: Path, out: Path | None = None) -> Path:
    """The dequantized float32 model beside ``int8_model`` (``FLOAT_NAME``), written once."""
    import onnx

    out = out or int8_model.with_name(FLOAT_NAME)
    if out.exists() and out.stat().st_mtime >= int8_model.stat().st_mtime:
        return out
    started = time.monotonic()
    model = dequantize(onnx.load(str(int8_model)))
    partial = out.with_suffix(".part")
    onnx.save(model, str(partial))
    partial.replace(out)
    log.info("dequantized %s -> %s (%.0f MB) in %.1f s", int8_model, out, out.stat().st_size / 1e6,
             time.monotonic() - started)
    return out


def magnitudes(samples: np.ndarray) -> np.ndarray:
    """[frames, SPECTRUM_BINS] STFT magnitudes of [samples] float audio (Hann window, ``HOP`` apart)."""
    frames = np.lib.stride_tricks.sliding_window_view(samples.astype(np.float64), WINDOW)[::HOP]
    return np.abs(np.fft.rfft(frames * np.hanning(WINDOW), axis=1))


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(SNR in dB of ``other``'s STFT magnitudes against ``reference``'s, correlation of the two
    magnitude spectrograms); [samples] float audio, cut to the shorter one. Magnitudes, not waveforms:
    the vocoder's harmonic source integrates F0 into a phase, so a tiny pitch difference decorrelates
    the waveforms of two renderings that sound alike."""
    n = min(len(reference), len(other))
    ref, oth = magnitudes(reference[:n]), magnitudes(other[:n])
    snr = 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - oth) ** 2), 1e-20))
    return float(snr), float(np.corrcoef(ref.ravel(), oth.ravel())[0, 1])


def check(int8_model: Path, float_path: Path, voice_dir: Path, count: int) -> list[dict]:
    """Synthesize ``count`` sentences with both models on one CPU thread (same voice, speed 1);
    per sentence: audio seconds, SNR and correlation of the float audio against the int8 audio, and
    each model's audio seconds per wall second."""
    from kokoro_onnx import Kokoro

    from training.synth.kokoro_dataset import voices_file
    from training.synth.kokoro_session import open_session

    voices = voices_file(voice_dir)
    engines = {name: Kokoro.from_session(open_session(path, "cpu"), str(voices))
               for name, path in (("int8", int8_model), ("float", float_path))}
    rows = []
    for text in CHECK_TEXTS[:count]:
        audio, speed = {}, {}
        for name, engine in engines.items():
            started = time.monotonic()
            samples, rate = engine.create(text, voice="af_heart", speed=1.0, lang="en-us")
            audio[name] = samples
            speed[name] = len(samples) / rate / (time.monotonic() - started)
        snr, correlation = agreement(audio["int8"], audio["float"])
        rows.append({"text": text, "seconds": round(len(audio["int8"]) / rate, 2),
                     "float_seconds": round(len(audio["float"]) / rate, 2), "snr_db": round(snr, 1),
                     "correlation": round(correlation, 4), "int8_x_real_time": round(speed["int8"], 2),
                     "float_x_real_time": round(speed["float"], 2)})
        log.info("%s", rows[-1])
    return rows


def main() -> None:
    from training.synth.kokoro_dataset import KokoroConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=KokoroConfig.model, help="Kokoro v1.0 int8 ONNX file")
    parser.add_argument("--out", type=Path, help=f"float model (default: {FLOAT_NAME} beside --model)")
    parser.add_argument("--voice-dir", type=Path, default=KokoroConfig.voice_dir)
    parser.add_argument("--check", type=int, default=0,
                        help="compare both models' audio on this many sentences "
                        f"(at most {len(CHECK_TEXTS)})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = float_model(args.model, args.out)
    if args.check:
        for row in check(args.model, out, args.voice_dir, args.check):
            print(f"{row['seconds']:6.2f} s  SNR {row['snr_db']:5.1f} dB  r {row['correlation']:.4f}  "
                  f"x real time int8 {row['int8_x_real_time']:.2f} float {row['float_x_real_time']:.2f}")


if __name__ == "__main__":
    main()
