"""Long training sessions: real speech joined, cut by the inference segmenter, texts kept in order."""

import random
from pathlib import Path

import numpy as np
import pytest

from asr.corpus import read_manifest
from asr.speech.audio import SAMPLE_RATE
from asr.speech.speech_detector import shared_detector
from training.long_sessions import LongSessionConfig, chunk_turns, join_utterances, long_session

MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev" / "manifest.jsonl"
needs_dev = pytest.mark.skipif(not MANIFEST.is_file(), reason="shared speech_dev data absent")


def test_join_places_each_utterance_at_its_span():
    rng = random.Random(0)
    waves = [np.full(n, value, dtype=np.float32) for n, value in ((1600, 0.5), (800, -0.25), (2400, 0.75))]
    recording, spans = join_utterances(waves, rng, LongSessionConfig(gap_s=(0.1, 0.2)))
    for wave, (start, end) in zip(waves, spans):
        np.testing.assert_array_equal(recording[start:end], wave)
    gaps = [spans[i + 1][0] - spans[i][1] for i in range(2)] + [len(recording) - spans[-1][1]]
    assert all(0.1 * SAMPLE_RATE <= gap <= 0.2 * SAMPLE_RATE for gap in gaps)
    assert np.abs(recording[spans[0][1] : spans[1][0]]).max() < 0.01  # faint noise in the pauses


@needs_dev
def test_chunks_are_inference_sized_and_keep_every_text_in_order():
    utterances = read_manifest(MANIFEST)[:14]
    waves = [utt.load() for utt in utterances]
    texts = [utt.text for utt in utterances]
    recording, spans = join_utterances(waves, random.Random(1), LongSessionConfig())
    turns = chunk_turns(recording, spans, texts, shared_detector())
    assert len(turns) > 1
    assert all(len(wave) <= 28.0 * SAMPLE_RATE + 1 for wave, _, _ in turns)
    assert " ".join(text for _, text, _ in turns) == " ".join(texts)
    assert all(learn for _, _, learn in turns)


@needs_dev
def test_long_session_lasts_the_drawn_length():
    utterances = read_manifest(MANIFEST)[:30]
    config = LongSessionConfig(minutes=(1.0, 1.0))
    turns = long_session(utterances, random.Random(2), shared_detector(), config)
    seconds = sum(len(wave) for wave, _, _ in turns) / SAMPLE_RATE
    assert 50 <= seconds <= 90
    assert len(turns) >= 3
