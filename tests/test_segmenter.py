"""The file segmenter: chunking from per-frame speech probabilities (synthetic layouts), and the speech
detector that gives them on real speech, silence and noise."""

import json
from pathlib import Path

import numpy as np
import pytest

from asr.speech.audio import SAMPLE_RATE, load_audio
from asr.speech.segmenter import SegmenterConfig, segment, speech_frames
from asr.speech.speech_detector import FRAME_S, FRAME_SAMPLES, levelled, shared_detector

SR = SAMPLE_RATE
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev"
needs_dev = pytest.mark.skipif(not (DEV / "manifest.jsonl").is_file(), reason="shared speech_dev data absent")


def layout(*pieces, seed=0):
    """Audio and per-frame speech probabilities of (seconds, is_speech) pieces: speech is a
    syllable-modulated tone at probability 0.9, the rest faint noise at 0.05."""
    rng = np.random.default_rng(seed)
    audio, probabilities = [], []
    for seconds, is_speech in pieces:
        t = np.arange(int(seconds * SR)) / SR
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
        wave = 0.3 * envelope * np.sin(2 * np.pi * 220 * t) if is_speech else np.zeros_like(t)
        audio.append((wave + 0.001 * rng.standard_normal(len(t))).astype(np.float32))
        probabilities.append(np.full(int(round(seconds / FRAME_S)), 0.9 if is_speech else 0.05))
    audio, probabilities = np.concatenate(audio), np.concatenate(probabilities)
    frames = -(-len(audio) // FRAME_SAMPLES)
    # rounding: the last piece gives or takes a frame
    return audio, np.pad(probabilities, (0, max(0, frames - len(probabilities))), mode="edge")[:frames]


def assert_covers(regions, n):
    assert regions[0].start == 0 and regions[-1].end == n
    assert all(a.end == b.start for a, b in zip(regions[:-1], regions[1:])), "gap or overlap"


def test_long_silence_becomes_its_own_region_padded_and_everything_is_covered():
    audio, probabilities = layout((5, True), (10, False), (4, True))
    config = SegmenterConfig()
    regions = segment(audio, probabilities, config)
    assert_covers(regions, len(audio))
    assert [r.kind for r in regions] == ["speech", "silence", "speech"]
    silence = regions[1]
    pad = config.speech_pad_s
    assert abs(silence.start / SR - (5 + pad)) < 0.05 and abs(silence.end / SR - (15 - pad)) < 0.05


def test_chunks_respect_the_bounds_and_cut_at_pauses():
    audio, probabilities = layout(*[piece for _ in range(12) for piece in ((4.5, True), (0.5, False))])
    config = SegmenterConfig()
    regions = segment(audio, probabilities, config)
    assert_covers(regions, len(audio))
    assert all(r.kind == "speech" for r in regions) and len(regions) >= 3
    assert all(config.min_chunk_s <= (r.end - r.start) / SR <= config.max_chunk_s + 1e-6 for r in regions)
    for r in regions[:-1]:  # each cut lies inside a pause: (t mod 5) in [4.5, 5)
        t = r.end / SR
        assert 4.45 <= t % 5.0 <= 5.0 or t % 5.0 < 0.05, t


def test_speech_that_fits_stays_whole_and_longer_speech_is_cut_at_its_longest_pause():
    audio, probabilities = layout((8, True), (0.3, False), (8, True), (0.4, False), (8, True))
    assert len(segment(audio, probabilities)) == 1  # 24.7 s: one chunk, pauses and all
    audio, probabilities = layout((8, True), (0.3, False), (8, True), (0.8, False), (8, True), (0.3, False),
                                  (8, True))
    regions = segment(audio, probabilities)
    assert len(regions) == 2 and 16.3 < regions[0].end / SR < 17.1  # the 0.8-s pause, not the first one


def test_unbroken_speech_longer_than_the_maximum_is_still_cut():
    audio, probabilities = layout((70, True))
    regions = segment(audio, probabilities)
    assert_covers(regions, len(audio))
    assert len(regions) >= 3 and all((r.end - r.start) / SR <= 28.0 + 1e-6 for r in regions)


def test_no_speech_is_one_silence_region_even_when_short_and_empty_input_has_none():
    for seconds in (5, 0.5):
        audio, probabilities = layout((seconds, False))
        assert [r.kind for r in segment(audio, probabilities)] == ["silence"]
    assert segment(np.zeros(0, dtype=np.float32), np.zeros(0)) == []


def test_probabilities_must_match_the_frames():
    audio, probabilities = layout((3, True))
    with pytest.raises(ValueError, match="probabilities"):
        segment(audio, probabilities[:-2])


def test_a_short_stub_of_speech_stays_with_its_chunk():
    # 30.8 s: the pause that leaves 1 s of speech on its own is longer, but the cut takes the other one
    audio, probabilities = layout((25, True), (0.4, False), (4, True), (0.6, False), (1, True))
    regions = segment(audio, probabilities)
    assert len(regions) == 2 and 25.0 < regions[0].end / SR < 25.4


@pytest.mark.parametrize("quiet_first", [pytest.param(False, id="loud-then-quiet"),
                                         pytest.param(True, id="quiet-then-loud")])
@pytest.mark.parametrize("quieter_db, cut", [pytest.param(30, True, id="30dB"),
                                             pytest.param(20, True, id="20dB"),
                                             pytest.param(5, False, id="5dB")])
def test_a_pause_between_a_loud_and_a_far_quieter_speaker_is_a_cut_however_short_the_chunks(quieter_db, cut,
                                                                                           quiet_first):
    audio, probabilities = layout((4, True), (0.5, False), (3, True))
    quiet = slice(0, 4 * SR) if quiet_first else slice(int(4.5 * SR), None)
    audio[quiet] *= 10 ** (-quieter_db / 20)
    regions = segment(audio, probabilities)
    assert_covers(regions, len(audio))
    assert all(r.kind == "speech" for r in regions)
    assert len(regions) == (2 if cut else 1)
    if cut:
        assert 4.0 < regions[0].end / SR < 4.5  # inside the pause


def test_a_click_beside_a_pause_is_no_speaker_to_cut_off():
    audio, probabilities = layout((0.3, True), (0.5, False), (6, True))
    audio[: int(0.3 * SR)] *= 10 ** (-30 / 20)
    assert len(segment(audio, probabilities)) == 1


def test_speech_lasts_from_the_threshold_down_to_the_release():
    config = SegmenterConfig(threshold=0.5, release=0.35)
    probabilities = np.array([0.4, 0.6, 0.4, 0.36, 0.3, 0.45, 0.5])
    assert speech_frames(probabilities, config).tolist() == [False, True, True, True, False, False, True]


def test_levelling_brings_quiet_and_loud_stretches_to_one_level_but_leaves_silence_alone():
    rng = np.random.default_rng(0)
    loud = (0.3 * rng.standard_normal(5 * SR)).astype(np.float32)
    quiet = (0.001 * rng.standard_normal(5 * SR)).astype(np.float32)
    audio = np.concatenate([loud, quiet, np.zeros(5 * SR, np.float32)])
    out = levelled(audio)
    rms = [np.sqrt(np.mean(out[i * SR:(i + 1) * SR] ** 2)) for i in (1, 8)]  # away from the transitions
    assert 0.05 < rms[0] < 0.2 and 0.05 < rms[1] < 0.2
    assert np.abs(out[11 * SR:]).max() == 0.0


def test_levelling_brings_a_quiet_stretch_up_from_its_edges_next_to_loud_ones_without_spikes():
    """A quiet stretch right after a loud one (and right before one) is levelled from its first and to
    its last frames, not only once the loud one is 2 s away; no sample is blown up at the joins."""
    rng = np.random.default_rng(0)
    loud, quiet = 0.3, 0.001
    audio = np.concatenate([(level * rng.standard_normal(3 * SR)).astype(np.float32)
                            for level in (loud, quiet, loud)])
    out = levelled(audio)
    edge = int(0.3 * SR)
    quiet_part = out[3 * SR + FRAME_SAMPLES : 6 * SR - FRAME_SAMPLES]  # a frame off the joins
    for piece in (quiet_part[:edge], quiet_part[-edge:]):
        assert 0.05 < np.sqrt(np.mean(piece ** 2)) < 0.2
    assert np.abs(out).max() < 1.0


@needs_dev
def test_a_quiet_speaker_right_after_a_loud_one_is_speech_from_the_first_word():
    """A speaker 40 dB quieter, half a second after a loud one (as the dev set's FLEURS utterances after
    LibriSpeech ones): the detector finds the quiet one's speech where it finds it alone, so no opening
    word is cut off as silence."""
    row = json.loads((DEV / "manifest.jsonl").read_text().splitlines()[1])
    speech = load_audio(str(DEV / row["audio"]), SR)
    detector = shared_detector()
    alone = detector.probabilities(speech) > 0.5
    gap = np.zeros(SR // 2, np.float32)
    audio = np.concatenate([speech, gap, speech * 0.01])
    after_loud = detector.probabilities(audio)[-len(alone):] > 0.5
    first = int(np.argmax(alone))
    assert abs(int(np.argmax(after_loud)) - first) <= 3  # frames of 32 ms
    assert np.mean(after_loud[first : first + 31]) > 0.8  # its first second
    assert all(region.kind == "speech" for region in segment(audio, detector.probabilities(audio)))


@needs_dev
def test_detector_finds_real_speech_of_any_level_and_none_in_silence_or_noise():
    rows = [json.loads(line) for line in (DEV / "manifest.jsonl").read_text().splitlines()[:3]]
    speech = [load_audio(str(DEV / row["audio"]), SR) for row in rows]
    rng = np.random.default_rng(1)
    pieces = [speech[0], np.zeros(3 * SR, np.float32), speech[1] * 0.001,  # 60 dB quieter after a loud one
              (0.02 * rng.standard_normal(4 * SR)).astype(np.float32), speech[2]]
    audio = np.concatenate(pieces)
    probabilities = shared_detector().probabilities(audio)
    assert len(probabilities) == -(-len(audio) // FRAME_SAMPLES)
    bounds = np.cumsum([0] + [len(p) for p in pieces]) // FRAME_SAMPLES
    shares = [float(np.mean(probabilities[a:b] > 0.5)) for a, b in zip(bounds[:-1], bounds[1:])]
    assert min(shares[0], shares[2], shares[4]) > 0.5, shares
    assert max(shares[1], shares[3]) < 0.1, shares
    regions = segment(audio, probabilities)
    assert_covers(regions, len(audio))
    noise_start, noise_end = bounds[1] * FRAME_SAMPLES, bounds[2] * FRAME_SAMPLES
    assert any(r.kind == "silence" and r.start < noise_end and r.end > noise_start for r in regions)


@needs_dev
def test_short_recordings_in_short_blocks_keep_the_regions_of_long_blocks(monkeypatch):
    """Short recordings run as 1-s rows (far fewer network steps); their regions are the ones 10-s rows
    give, to 0.4 s at an edge: the network heard less before the edge, and a soft ending or breath,
    levelled up next to silence, sits near the threshold (a FLEURS utterance's tail: 11 frames)."""
    import asr.speech.speech_detector as speech_detector

    rows = [json.loads(line) for line in (DEV / "manifest.jsonl").read_text().splitlines()[::10]]
    pause = np.zeros(3 * SR, np.float32)
    recordings = [np.concatenate([pause, load_audio(str(DEV / row["audio"]), SR), pause]) for row in rows]
    detector = shared_detector()
    short = [segment(audio, detector.probabilities(audio)) for audio in recordings]
    monkeypatch.setattr(speech_detector, "SHORT_RECORDING_FRAMES", 0)
    long = [segment(audio, detector.probabilities(audio)) for audio in recordings]
    for in_short, in_long in zip(short, long):
        assert [r.kind for r in in_short] == [r.kind for r in in_long]
        edges = np.array([(r.start, r.end) for r in in_short]) - np.array([(r.start, r.end) for r in in_long])
        assert np.abs(edges).max() <= 0.4 * SR
    assert all(any(region.kind == "silence" for region in regions) for regions in short)
