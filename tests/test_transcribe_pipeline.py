"""The transcription pipeline end to end on real weights (embedded Whisper base + SmolLM2) with an
untrained adapter built here: it checks plumbing, coverage of the timeline and error handling, not
accuracy (the accuracy test needs the trained adapter)."""

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from app.cli import main as cli_main
from asr.errors import AudioError
from asr.llm.lora import LoraConfig
from asr.speech.adapter import SpeechAdapter
from asr.speech.pipeline import TranscribeOptions, Transcriber
from asr.speech.projector import FrameStackProjector, ProjectorConfig
from asr.speech.repetition import LoopConfig
from tests.loudness_detector import LoudnessDetector

pytestmark = pytest.mark.slow
SR = 16000
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev"
SHORT_BUDGET = LoopConfig(tokens_per_second=1.0, extra_tokens=3)  # keep generation short on the CPU


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    torch.manual_seed(0)
    projector = FrameStackProjector(ProjectorConfig())
    directory = tmp_path_factory.mktemp("adapter")
    SpeechAdapter(
        ProjectorConfig(), LoraConfig(rank=2), projector.state_dict(), {}, {"note": "untrained"}
    ).save(directory)
    return directory


@pytest.fixture(scope="module")
def transcriber(adapter_dir):
    from asr.speech.model import load_speech_model

    options = TranscribeOptions(attention="unique", budget_tokens=128, loop=SHORT_BUDGET, device="cpu")
    # the test audio is tones: speech where it is loud
    return Transcriber(load_speech_model(adapter_dir, options.engine_config()), options, LoudnessDetector())


def speechlike(seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (
        0.2 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        + 0.01 * rng.standard_normal(len(t))
    ).astype(np.float32)


def test_every_second_is_a_segment_or_reported(transcriber):
    quiet = np.zeros(int(4 * SR), dtype=np.float32)
    audio = np.concatenate([speechlike(3, 0), quiet, speechlike(2, 1)])
    transcript = transcriber.transcribe(audio)
    spans = sorted(
        [(s.start, s.end) for s in transcript.segments] + [(a, b) for a, b, _ in transcript.skipped]
    )
    assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(len(audio) / SR)
    assert all(abs(a[1] - b[0]) < 1e-6 for a, b in zip(spans[:-1], spans[1:])), "a gap: audio was dropped"
    assert any(reason == "silence" and b - a > 3.5 for a, b, reason in transcript.skipped)
    stats = transcript.stats
    assert stats.chunks == 2 and 0 < stats.kv_pages_read <= 1 and stats.rtf > 0
    assert stats.context_tokens > 2 * 12  # audio tokens of both chunks are in one context


def test_progress_bar_ends_at_the_audio_length(transcriber, capsys):
    """A duration that rounds down (5.04 s) once overflowed the bar: tqdm warned "clamping frac to range
    [0, 1]" and showed an ETA of <-00:00. The bar now ends exactly at the audio's length."""
    import warnings

    audio = np.concatenate([speechlike(2.52, 60), np.zeros(int(2.52 * SR), np.float32)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm's TqdmWarning fails the test
        transcriber.transcribe(audio, progress=True, name="bar")
    shown = capsys.readouterr().err.replace("\r", "\n").splitlines()
    final = [line for line in shown if line.startswith("bar:")][-1]
    assert "100%" in final and "5/5 s audio" in final and "<-" not in final, final


def test_pure_silence_gives_no_text_and_empty_audio_is_an_error(transcriber):
    transcript = transcriber.transcribe(np.zeros(3 * SR, dtype=np.float32))
    assert transcript.segments == [] and transcript.skipped[0][2] == "silence"
    with pytest.raises(AudioError, match="empty"):
        transcriber.transcribe(np.zeros(0, dtype=np.float32))


def test_cli_writes_outputs_and_keeps_going_past_bad_files(adapter_dir, tmp_path, capsys):
    good = tmp_path / "good.wav"
    sf.write(good, speechlike(2, 2), SR)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(200))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    code = cli_main(["transcribe", str(corrupt), str(good), str(empty), "--model", str(adapter_dir),
                     "--format", "all", "--output", str(out), "--device", "cpu", "--budget", "128"])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.srt", "good.txt", "good.vtt"]
    captured = capsys.readouterr()
    assert (
        "corrupt.flac" in captured.err
        and "empty.wav" in captured.err
        and "2 of 3 files failed" in captured.err
    )
    assert "good.wav: 0:00:02 of audio, real-time factor" in captured.out


@pytest.mark.parametrize("option", [["--budget", "-5"], ["--max-distance", "-1"]])
def test_cli_refuses_bad_options_before_loading_anything(tmp_path, capsys, option):
    audio = tmp_path / "a.wav"
    sf.write(audio, speechlike(1, 3), SR)
    code = cli_main(
        ["transcribe", str(audio), "--model", str(tmp_path / "missing"), "--output", str(tmp_path), *option]
    )
    assert code == 2
    assert "asr transcribe:" in capsys.readouterr().err
    assert not (tmp_path / "a.txt").exists()


def test_cli_checks_paths_before_loading_the_model(tmp_path, capsys):
    """Missing and empty files are reported at once; with none left the model is never loaded (a missing
    --model directory would fail to load)."""
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    code = cli_main(
        [
            "transcribe",
            str(tmp_path / "missing.wav"),
            str(empty),
            "--model",
            str(tmp_path / "none"),
            "--output",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "missing.wav does not exist" in err and "empty.wav is empty" in err
    assert "2 of 2 files failed" in err


def test_default_model_error_says_what_to_do(tmp_path, capsys, monkeypatch):
    import asr.speech.model as model

    monkeypatch.setattr(model, "EMBEDDED_ADAPTER", tmp_path / "none")
    sf.write(tmp_path / "a.wav", speechlike(1, 3), SR)
    assert cli_main(["transcribe", str(tmp_path / "a.wav"), "--output", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


def test_long_context_moves_old_pages_closer(transcriber):
    """With a small distance ceiling, a session of several chunks collapses its oldest pages and still
    transcribes every chunk into the same context."""
    from asr.llm.distance_cap import DistanceCap

    model = transcriber.model
    engine = model.open_engine(transcriber.options.engine_config(), expected_seconds=24)
    with model.open_session(engine, SHORT_BUDGET, DistanceCap(max_distance=96, slack=32)) as session:
        for index in range(4):
            chunk = speechlike(6, 10 + index)
            session.transcribe_chunk(chunk, 6.0 * index, encoded=model.encode_chunks([chunk])[0])
        seq = session.seq
        assert session.stats.chunks == 4
        assert seq.collapsed_pages > 0
        assert seq.num_tokens - seq.collapsed_position <= 96 + 32 + 6 * 13 + 40  # cap + one chunk's tokens


def test_chunks_encoded_as_a_batch_match_one_at_a_time(transcriber):
    chunks = [speechlike(3, 20), speechlike(7.5, 21), speechlike(1.2, 22)]
    together = [encoded.embeds for encoded in transcriber.model.encode_chunks(chunks)]
    for chunk, embeds in zip(chunks, together):
        alone = transcriber.model.encode_chunks([chunk])[0].embeds
        assert embeds.shape == alone.shape == (math.ceil(len(chunk) / 320 / 4), alone.shape[1])
        torch.testing.assert_close(embeds.float(), alone.float(), rtol=2e-2, atol=2e-2)


def test_model_loaded_once_and_each_recording_gets_its_own_sized_engine(transcriber, monkeypatch):
    """No engine at load time; every recording opens one engine over the shared weights, sized for its
    duration, and transcribing the same audio again gives the same transcript."""
    from asr.speech.model import context_tokens

    model = transcriber.model
    assert not hasattr(model, "engine")
    opened = []
    open_engine = model.open_engine

    def spy(config, expected_seconds=None):
        opened.append(open_engine(config, expected_seconds))
        return opened[-1]

    monkeypatch.setattr(model, "open_engine", spy)
    short, long = (
        speechlike(2, 30),
        np.concatenate([speechlike(3, 31), np.zeros(4 * SR, np.float32), speechlike(3, 32)]),
    )
    first, second, again = (transcriber.transcribe(audio) for audio in (short, long, short))
    assert len(opened) == 3 and len({id(engine) for engine in opened}) == 3
    assert all(engine.model is model.llm for engine in opened)
    assert [engine.max_context for engine in opened] == [
        context_tokens(2),
        context_tokens(10),
        context_tokens(2),
    ]
    assert first.text == again.text and second.stats.chunks == 2


def test_live_sessions_can_share_one_engine(transcriber):
    """Two sessions interleaving chunks in one shared engine each get their own sequence and the
    transcripts of sessions in engines of their own."""
    from dataclasses import replace

    model, options = transcriber.model, transcriber.options
    chunks = {name: [speechlike(3, seed), speechlike(2, seed + 1)] for name, seed in (("a", 40), ("b", 50))}
    encoded = {name: model.encode_chunks(audio) for name, audio in chunks.items()}

    def run(sessions):
        texts = {name: [] for name in sessions}
        for index in range(2):
            for name, session in sessions.items():
                piece = session.transcribe_chunk(
                    chunks[name][index], 3.0 * index, encoded=encoded[name][index]
                )
                texts[name].append(piece.text if piece else "")
        return texts

    shared = model.open_engine(replace(options.engine_config(), max_batch=2), expected_seconds=5)
    together = {name: model.open_session(shared, options.loop, options.distance_cap()) for name in chunks}
    assert together["a"].seq.seq_id != together["b"].seq.seq_id
    shared_texts = run(together)
    together["a"].close()
    assert together["b"].seq.num_tokens > 0 and shared.cache.length(together["b"].seq.seq_id) > 0
    together["b"].close()
    alone = {name: model.open_session(model.open_engine(options.engine_config(), 5), options.loop,
                                      options.distance_cap()) for name in chunks}
    assert run(alone) == shared_texts


@pytest.mark.parametrize("budget, blocks", [(2048, 32), (1024, 16), (100, 1)])
def test_a_prefill_reads_at_most_the_decode_budget_of_key_blocks(budget, blocks):
    config = TranscribeOptions(budget_tokens=budget, dtype="float32").engine_config()
    assert config.unisparse.max_blocks == blocks
    assert config.sparse.budget_tokens == budget
