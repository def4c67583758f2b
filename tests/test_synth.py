"""Synthetic-speech pipeline: text cleaning, one real espeak-ng utterance, augmentation, manifest
and shards."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from asr.speech.audio import SAMPLE_RATE
from training.synth.augment import (
    NOISE_COLORS,
    add_noise,
    apply_gain,
    augment_waveform,
    colored_noise,
    reverberate,
    speed_perturb,
)
from training.synth.manifest import ManifestRow, read_manifest, write_manifest
from training.synth.shards import pack_shards, unpack_shards
from training.synth.text_clean import clean_sentence, expand_numbers, speakable_sentences


def speech_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """[samples] float32: a 150 Hz harmonic tone under a 4 Hz syllable envelope."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    tone = sum(np.sin(2 * np.pi * 150 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    return (0.3 * tone * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)).astype(np.float32)


@pytest.mark.parametrize("text", [
    pytest.param("See https://docs.python.org/3/library/os.html for the details here.", id="url"),
    pytest.param("Send mail to someone@example.com if the build breaks again.", id="email"),
    pytest.param("Call os.path.join(a, b) to build the final path here.", id="call"),
    pytest.param("Set the option x = [1, 2, 3] before running the tool.", id="assignment"),
    pytest.param("Use the --verbose flag to print more messages to stdout.", id="flag"),
    pytest.param("The x86 build needs at least 4GB of memory to link.", id="alnum"),
    pytest.param("Too short.", id="short"),
    pytest.param(" ".join(["word"] * 45) + ".", id="long"),
])
def test_cleaner_drops_unspeakable(text):
    assert speakable_sentences(text) == []


@pytest.mark.parametrize(
    "raw, spoken",
    [
        pytest.param(
            "It cost $3.50 in 1999.",
            "It cost three dollars and fifty cents in nineteen ninety-nine.",
            id="money-year",
        ),
        pytest.param(
            "Meet at 7:05 on the 21st.", "Meet at seven oh five on the twenty-first.", id="time-ordinal"
        ),
        pytest.param(
            "About 2,500 people, or 4.5% of them.",
            "About two thousand five hundred people, or four point five% of them.",
            id="count-decimal",
        ),
        pytest.param(
            "Back in the 1980s it was 12:00.",
            "Back in the nineteen eighties it was twelve o'clock.",
            id="decade-clock",
        ),
    ],
)
def test_numbers_become_words(raw, spoken):
    assert expand_numbers(raw) == spoken


def test_cleaner_keeps_prose_and_expands_abbreviations():
    paragraph = "Mr. Smith paid $20 for 3 books, e.g. novels. Then he went home to read them all night."
    assert speakable_sentences(paragraph) == [
        "Mister Smith paid twenty dollars for three books, for example novels.",
        "Then he went home to read them all night.",
    ]
    assert (
        clean_sentence("The rate rose by 5% last year, they said.")
        == "The rate rose by five percent last year, they said."
    )


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (training/setup_tts.sh)"
)
def test_espeak_utterance_has_speech():
    from training.synth.synthesize import synthesize
    from training.synth.voices import Voice, VoiceStyle

    wave = synthesize("The quick brown fox jumps over the lazy dog near the river bank.",
                      Voice("espeak", "en-us+m3"), VoiceStyle())
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 2.0 < len(wave) / SAMPLE_RATE < 8.0
    frame_rms = np.sqrt(np.mean(wave[: len(wave) // 400 * 400].reshape(-1, 400) ** 2, axis=1))
    assert np.sqrt(np.mean(wave**2)) > 0.03
    assert (frame_rms > 0.05).mean() > 0.4, "most 25 ms frames should carry speech energy"


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (training/setup_tts.sh)"
)
@pytest.mark.parametrize("codec", ["vorbis", "opus"])
def test_rendered_utterance_round_trips_in_either_codec(codec, tmp_path):
    from training.synth.dataset import render
    from training.synth.plan import UtterancePlan
    from training.synth.voices import Voice, VoiceStyle

    text = "Please call me back at half past four, or leave a message after the tone."
    plan = UtterancePlan(
        index=3, text=text, voice=Voice("espeak", "en-us+f2"), style=VoiceStyle(), source="test"
    )
    row = render((tmp_path, 5, plan, codec))
    assert row is not None and row.text == text and row.id == "s5-0000003"
    audio, rate = sf.read(str(tmp_path / row.audio))
    assert rate == SAMPLE_RATE and abs(len(audio) / rate - row.duration) < 0.1
    assert sf.info(str(tmp_path / row.audio)).subtype == codec.upper()


@pytest.mark.parametrize("color", NOISE_COLORS)
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_add_noise_hits_snr(color, snr_db):
    rng = np.random.default_rng(1)
    clean = speech_like()
    noisy = add_noise(clean, snr_db, color, rng)
    assert noisy.shape == clean.shape and noisy.dtype == np.float32
    measured = 10 * np.log10(
        np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2)
    )
    assert measured == pytest.approx(snr_db, abs=0.1)


def test_noise_colors_have_their_slopes():
    rng = np.random.default_rng(2)
    power = {c: np.abs(np.fft.rfft(colored_noise(2**16, c, rng))) ** 2 for c in NOISE_COLORS}
    low, high = slice(50, 500), slice(5000, 30000)
    ratios = {c: p[low].mean() / p[high].mean() for c, p in power.items()}
    assert ratios["white"] < ratios["pink"] < ratios["brown"]
    assert 0.5 < ratios["white"] < 2.0


def test_reverb_gain_keep_shape_and_speed_changes_length():
    rng = np.random.default_rng(3)
    clean = speech_like(1.5)
    wet = reverberate(clean, SAMPLE_RATE, 0.5, rng)
    assert wet.shape == clean.shape and not np.allclose(wet, clean)
    assert np.abs(wet).max() == pytest.approx(np.abs(clean).max(), rel=1e-4)
    assert apply_gain(clean, -6.0) == pytest.approx(clean * 10 ** (-6 / 20), abs=1e-6)
    assert np.abs(apply_gain(clean, 20.0)).max() <= 1.0
    assert len(speed_perturb(clean, 1.1)) == pytest.approx(len(clean) / 1.1, abs=2)
    assert len(speed_perturb(clean, 0.9)) == pytest.approx(len(clean) / 0.9, abs=2)


def test_augment_chain_is_seeded_and_finite():
    clean = speech_like()
    first = [augment_waveform(clean, SAMPLE_RATE, np.random.default_rng(s)) for s in range(8)]
    again = [augment_waveform(clean, SAMPLE_RATE, np.random.default_rng(s)) for s in range(8)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(
        w.dtype == np.float32 and np.isfinite(w).all() and np.abs(w).max() <= 1.0 + 1e-6 for w in first
    )


def test_manifest_and_shards_round_trip(tmp_path):
    dataset = tmp_path / "data"
    rows = []
    for n in range(6):
        audio = f"audio/0000/u{n}.ogg"
        (dataset / audio).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(dataset / audio), speech_like(2.0, seed=n), SAMPLE_RATE, format="OGG", subtype="VORBIS")
        rows.append(
            ManifestRow(
                f"u{n}",
                audio,
                f'Sentence number {n}, said "aloud".',
                "espeak/en-us+m1",
                2.0,
                {"rate": 1.0, "pitch": 1.0, "noise": 0.667},
                "template",
            )
        )
    write_manifest(dataset / "manifest.jsonl", rows)
    assert read_manifest(dataset / "manifest.jsonl") == rows

    file_mb = max((dataset / r.audio).stat().st_size for r in rows) / 2**20
    shards = pack_shards(dataset, tmp_path / "shards", max_mb=2.5 * file_mb)
    assert len(shards) >= 2
    assert all(s.stat().st_size <= 2.5 * file_mb * 2**20 for s in shards)
    manifest = unpack_shards(shards, tmp_path / "copy")
    assert read_manifest(manifest) == rows
    for row in rows:
        assert (tmp_path / "copy" / row.audio).read_bytes() == (dataset / row.audio).read_bytes()


def test_planner_is_seeded_and_keeps_documents_together():
    from training.synth.plan import MAX_MULTI_WORDS, Planner
    from training.synth.text_corpus import Corpus
    from training.synth.voices import Voice

    sentences = tuple(f"Sentence {chr(65 + n % 26)} of document number {n // 10} is here." for n in range(60))
    sources = tuple(f"fortune:doc{n // 10}" if n < 30 else "template" for n in range(60))
    voices = {
        "espeak": [Voice("espeak", f"en-us+m{n}") for n in range(1, 4)],
        "flite": [Voice("flite", "slt")],
    }
    planner, again = (
        Planner(Corpus(sentences, sources), voices, seed=5),
        Planner(Corpus(sentences, sources), voices, seed=5),
    )
    plans = [planner.plan(i) for i in range(200)]
    assert plans == [again.plan(i) for i in range(200)]
    assert plans != [Planner(Corpus(sentences, sources), voices, seed=6).plan(i) for i in range(200)]
    assert {p.voice.family for p in plans} == {"espeak", "flite"}
    multi = [p for p in plans if p.text.count(".") > 1]
    assert multi, "some utterances should read several sentences"
    for plan in multi:
        positions = [n for n, sentence in enumerate(sentences) if sentence in plan.text]
        assert positions == list(range(positions[0], positions[0] + len(positions)))
        assert len({sources[n] for n in positions}) == 1
        assert len(plan.text.split()) <= MAX_MULTI_WORDS
