"""AudioEncoder on the embedded Whisper base: frame counts, truncation, batching, no gradients; the
CTranslate2 backend against the torch one."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.errors import AudioError, ModelLoadError
from asr.speech.encoder import CHUNK_SAMPLES, AudioEncoder, num_frames
from tests.tolerances import assert_close

DEV = Path("/work/shared/data/speech_dev")
INT8_MAX_REL_RMS = 0.15  # measured 0.04 on speech and a chirp, 0.07 on white noise


@pytest.mark.parametrize(
    "samples,frames",
    [(1, 1), (320, 1), (321, 2), (16000, 50), (45360, 142), (CHUNK_SAMPLES - 1, 1500), (CHUNK_SAMPLES, 1500)],
)
def test_num_frames_is_ceil_of_50_per_second(samples, frames):
    assert num_frames(samples) == frames


@pytest.fixture(scope="module")
def encoder():
    return AudioEncoder.load(None, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def chunks() -> list[np.ndarray]:
    """A real utterance (2.835 s) and 1.001 s of a 30 s-capped chirp; synthetic when the data is absent."""
    if (DEV / "manifest.jsonl").is_file():
        from asr.speech.audio import load_audio

        row = json.loads((DEV / "manifest.jsonl").read_text().splitlines()[2])
        speech = load_audio(DEV / row["audio"])
    else:
        speech = np.random.default_rng(0).standard_normal(45360).astype(np.float32) * 0.05
    t = np.arange(16016) / 16000
    chirp = (0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.float32)
    return [speech, chirp]


@pytest.fixture(scope="module")
def padded(encoder, chunks) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_padded one chunk at a time (the reference below runs both in one batch)."""
    return encoder.encode_padded(chunks, batch_size=1)


@pytest.mark.slow
def test_frames_are_the_whisper_encoder_output_truncated(encoder, chunks, padded):
    from transformers import WhisperFeatureExtractor

    frames, lengths = padded
    assert lengths.tolist() == [num_frames(len(chunk)) for chunk in chunks] == [142, 51]
    assert frames.shape == (2, 142, 512) and frames.dtype == torch.float32
    assert torch.all(frames[1, 51:] == 0) and torch.isfinite(frames).all()
    # Reference: the numpy log-mel of the feature extractor and the whole 1500-frame encoder output.
    extractor = WhisperFeatureExtractor(feature_size=80)
    padded_audio = np.stack([np.pad(chunk, (0, CHUNK_SAMPLES - len(chunk))) for chunk in chunks])
    features = torch.from_numpy(extractor._np_extract_fbank_features(padded_audio, "cpu")).float()
    with torch.no_grad():
        full = encoder.backend(features)
    assert full.shape == (2, 1500, 512)
    for index, length in enumerate(lengths.tolist()):
        # log-mel paths differ ~1e-6
        assert_close(frames[index, :length], full[index, :length], dtype=torch.float16)
    listed = encoder.encode(chunks[1:])  # the list form: same frames, cut to length
    assert listed[0].shape == (51, 512)
    assert_close(listed[0], frames[1, :51], dtype=torch.float32)


@pytest.mark.slow
def test_frames_carry_no_graph_but_feed_a_trainable_layer(encoder, padded):
    frames = padded[0]
    assert not frames.requires_grad and not any(p.requires_grad for p in encoder.backend.module.parameters())
    layer = torch.nn.Linear(encoder.dim, 4)
    layer(frames).square().mean().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "chunk",
    [np.zeros(CHUNK_SAMPLES + 1, np.float32), np.zeros(0, np.float32), np.zeros((2, 1600), np.float32)],
    ids=["over-30s", "empty", "stereo"],
)
def test_bad_chunks_raise(encoder, chunk):
    with pytest.raises(AudioError, match="split long audio first"):
        encoder.encode([np.zeros(1600, np.float32), chunk])


@pytest.fixture(scope="module")
def ct2_encoder():
    pytest.importorskip("ctranslate2")
    return AudioEncoder.load(None, device="cpu", ct2_compute_type="float32")


@pytest.fixture(scope="module")
def ct2_int8_encoder():
    pytest.importorskip("ctranslate2")
    return AudioEncoder.load(None, device="cpu")


def test_auto_backend_is_ctranslate2_on_the_cpu_and_torch_when_asked(ct2_encoder, encoder):
    assert ct2_encoder.backend.name == "ctranslate2" and encoder.backend.name == "torch"
    assert ct2_encoder.dim == encoder.dim == 512


def test_ctranslate2_backend_refuses_a_hugging_face_directory(tmp_path):
    pytest.importorskip("ctranslate2")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="backend='torch'"):
        AudioEncoder.load(tmp_path, device="cpu", backend="ctranslate2")


@pytest.mark.slow
def test_ctranslate2_frames_match_the_torch_backend(ct2_encoder, chunks, padded):
    """The projector is trained on torch-backend frames: CT2's fp32 encoder must give the same ones."""
    frames, lengths = ct2_encoder.encode_padded(chunks, batch_size=2)
    expected, expected_lengths = padded
    assert frames.dtype == torch.float32 and frames.device.type == "cpu"
    assert torch.equal(lengths, expected_lengths) and frames.shape == expected.shape
    assert torch.all(frames[1, 51:] == 0)
    for index, length in enumerate(lengths.tolist()):
        actual, reference = frames[index, :length].double(), expected[index, :length].double()
        rel_rms = (actual - reference).norm() / reference.norm()
        assert rel_rms < 1e-4, f"chunk {index}: relative RMS {rel_rms:.2e}"
        assert_close(actual, reference, dtype=torch.float16)
    listed = ct2_encoder.encode(chunks[:1])
    assert listed[0].shape == (142, 512) and not listed[0].requires_grad


@pytest.mark.slow
def test_default_int8_ctranslate2_frames_stay_near_the_torch_backend(ct2_int8_encoder, chunks, padded):
    """The CPU default quantises the encoder's weights to int8: frames move a little, not a lot."""
    frames, lengths = ct2_int8_encoder.encode_padded(chunks, batch_size=2)
    expected, _ = padded
    for index, length in enumerate(lengths.tolist()):
        actual, reference = frames[index, :length].double(), expected[index, :length].double()
        rel_rms = float((actual - reference).norm() / reference.norm())
        assert 1e-4 < rel_rms < INT8_MAX_REL_RMS, f"chunk {index}: relative RMS {rel_rms:.2e}"
