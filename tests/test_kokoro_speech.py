"""Kokoro speech data: speaker drawing and mixing, deterministic plans, resumable manifests.

Everything but the last test runs without kokoro-onnx and the model (fake voice tables); the
end-to-end test needs training/setup_tts.sh's Kokoro packages and skips elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.synth.kokoro_dataset import (
    KokoroConfig,
    finish_audio,
    plan_utterance,
    resume_point,
    speakable,
)
from training.synth.kokoro_voices import (
    ACCENTED_SHARE,
    SPEED_RANGE,
    STYLE_SHAPE,
    KokoroSpeaker,
    draw_speaker,
    load_styles,
    voice_info,
)
from training.synth.plan import Planner
from training.synth.text_corpus import Corpus

NATIVE = [
    "af_heart",
    "af_bella",
    "af_nicole",
    "am_adam",
    "am_liam",
    "bf_emma",
    "bf_lily",
    "bm_george",
    "bm_lewis",
]
ACCENTED = ["ef_dora", "em_alex", "jf_alpha", "zm_yunxi", "hf_beta"]
NAMES = NATIVE + ACCENTED


def fake_corpus() -> Corpus:
    sentences = [f"Sentence number {word} of the little test corpus." for word in
                 ("one", "two", "three", "four", "five", "six", "seven", "eight")]
    sources = ["fortune:a"] * 3 + ["man:b"] * 2 + ["template"] * 2 + ["stdlib"]
    return Corpus(tuple(sentences), tuple(sources))


@pytest.mark.parametrize("seed", [0, 1, 12345], ids=["seed0", "seed1", "seed12345"])
def test_draw_speaker_is_valid_and_deterministic(seed):
    for index in range(200):
        speaker = draw_speaker(NAMES, np.random.default_rng([seed, index]))
        assert speaker == draw_speaker(NAMES, np.random.default_rng([seed, index]))
        assert 1 <= len(speaker.voices) <= 3 and len(set(speaker.voices)) == len(speaker.voices)
        assert len(speaker.weights) == len(speaker.voices)
        assert abs(sum(speaker.weights) - 1) < 1e-3 and list(speaker.weights) == sorted(
            speaker.weights, reverse=True
        )
        assert SPEED_RANGE[0] <= speaker.speed <= SPEED_RANGE[1]
        assert len({voice_info(v).gender for v in speaker.voices}) == 1, speaker
        main = voice_info(speaker.voices[0])
        assert speaker.lang == ("en-gb" if main.name.startswith("b") else "en-us")
        assert all(voice_info(v).native for v in speaker.voices[1:]), "only the main voice may be accented"


def test_speaker_mix_statistics():
    speakers = [draw_speaker(NAMES, np.random.default_rng([7, i])) for i in range(2000)]
    accented = sum(not voice_info(s.voices[0]).native for s in speakers) / len(speakers)
    assert abs(accented - ACCENTED_SHARE) < 0.03  # binomial sd ~0.008
    counts = {n: sum(len(s.voices) == n for s in speakers) for n in (1, 2, 3)}
    assert all(count > 300 for count in counts.values()), counts
    mixes = [(s.voices, s.weights) for s in speakers if len(s.voices) > 1]
    assert len(set(mixes)) > 0.95 * len(mixes), "mixed speakers should rarely repeat"
    assert len({s.voices[0] for s in speakers}) == len(NAMES)
    assert (
        len({draw_speaker(NAMES, np.random.default_rng([8, i])) for i in range(50)} & set(speakers[:50])) < 5
    )


def test_speaker_style_is_weighted_sum():
    rng = np.random.default_rng(0)
    styles = {name: rng.standard_normal(STYLE_SHAPE).astype(np.float32) for name in ("af_a", "af_b", "af_c")}
    speaker = KokoroSpeaker(("af_a", "af_b", "af_c"), (0.5, 0.3, 0.2), 1.0, "en-us")
    expected = 0.5 * styles["af_a"] + 0.3 * styles["af_b"] + 0.2 * styles["af_c"]
    mixed = speaker.style(styles)
    assert mixed.shape == STYLE_SHAPE and mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-6)
    single = KokoroSpeaker(("af_b",), (1.0,), 1.0, "en-us")
    np.testing.assert_array_equal(single.style(styles), styles["af_b"])
    assert speaker.name == "af_a.50+af_b.30+af_c.20"


def test_load_styles_reads_bins_and_rejects_bad_ones(tmp_path):
    table = np.arange(np.prod(STYLE_SHAPE), dtype=np.float32)
    table.tofile(tmp_path / "af_heart.bin")
    (table * 2).tofile(tmp_path / "bm_george.bin")
    table.tofile(tmp_path / "am_santa.bin")  # character voice: left out
    styles = load_styles(tmp_path)
    assert sorted(styles) == ["af_heart", "bm_george"]
    assert styles["bm_george"].shape == STYLE_SHAPE and styles["bm_george"][509, 0, 255] == 2 * (
        table.size - 1
    )
    table[:10].tofile(tmp_path / "bf_short.bin")
    with pytest.raises(ValueError, match="bf_short"):
        load_styles(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_styles(tmp_path / "missing")


def test_plans_depend_only_on_seed_and_index():
    planner = Planner(fake_corpus(), {}, seed=3)
    first = [plan_utterance(planner, NAMES, 3, i) for i in range(20)]
    again = [plan_utterance(Planner(fake_corpus(), {}, seed=3), NAMES, 3, i) for i in reversed(range(20))][
        ::-1
    ]
    assert first == again
    other = [plan_utterance(Planner(fake_corpus(), {}, seed=4), NAMES, 4, i) for i in range(20)]
    assert sum(a.speaker == b.speaker for a, b in zip(first, other)) < 3
    assert all(plan.text.startswith("Sentence number") and plan.index == i for i, plan in enumerate(first))


@pytest.mark.parametrize("text, ok", [
    pytest.param("A plain sentence, with punctuation; and a 'quote'.", True, id="plain"),
    pytest.param("\"Who am I?\" he asked (twice).", True, id="leading-quote"),
    pytest.param("It costs 25 dollars.", False, id="digits"),
    pytest.param("Tom & Jerry", False, id="ampersand"),
    pytest.param("Fifty % off", False, id="percent"),
    pytest.param("...", False, id="no-letters"),
    pytest.param("word " * 61, False, id="too-long"),
])
def test_speakable(text, ok):
    assert speakable(text) is ok


def _row(index: int, duration: float) -> str:
    return (
        json.dumps(
            {
                "id": f"k5-{index:07d}",
                "audio": f"audio/0000/k5-{index:07d}.ogg",
                "text": "t",
                "voice": "kokoro/af_heart.100",
                "duration": duration,
                "style": {},
                "source": "s",
            }
        )
        + "\n"
    )


def test_resume_point_continues_after_last_row_and_cuts_torn_line(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    assert resume_point(manifest) == (0, 0.0)
    manifest.write_text("")
    assert resume_point(manifest) == (0, 0.0)
    complete = _row(0, 2.5) + _row(1, 3.0) + _row(4, 4.25)  # 2 and 3 were skipped (out of range)
    manifest.write_text(complete)
    assert resume_point(manifest) == (5, 9.75)
    manifest.write_text(complete + _row(5, 9.0)[:30])  # killed while writing row 5
    assert resume_point(manifest) == (5, 9.75)
    assert manifest.read_text() == complete


def test_resumed_manifest_reads_as_a_corpus(tmp_path):
    from asr.corpus import read_corpus

    (tmp_path / "manifest.jsonl").write_text(_row(0, 2.5) + _row(1, 3.0))
    rows = read_corpus(tmp_path)
    assert [r.duration for r in rows] == [2.5, 3.0] and rows[
        1
    ].audio == tmp_path / "audio/0000/k5-0000001.ogg"


def test_finish_audio_resamples_pads_and_normalizes():
    pytest.importorskip("soxr")
    seconds = 1.5
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(24000 * seconds)) / 24000).astype(np.float32)
    samples = finish_audio(tone, 24000)
    assert samples.dtype == np.float32
    assert abs(len(samples) - round(16000 * (seconds + 0.2))) <= 2
    assert abs(float(np.abs(samples).max()) - 0.9) < 0.02
    assert not samples[:1600].any() and not samples[-1600:].any()
    with pytest.raises(ValueError, match="silent"):
        finish_audio(np.zeros(24000, dtype=np.float32), 24000)


def test_generate_resumes_to_the_same_dataset(tmp_path):
    """Real Kokoro: a run stopped early and resumed equals one uninterrupted run."""
    pytest.importorskip("kokoro_onnx")
    pytest.importorskip("soxr")
    from training.synth.kokoro_dataset import generate

    config = KokoroConfig(tmp_path / "x", 0.0, seed=2, workers=1)
    if not config.voice_dir.is_dir() or not config.model.exists():
        pytest.skip("Kokoro voices/model not set up (training/setup_tts.sh)")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "source": "template"}) + "\n" for t in (
        "Hi, this is Erica, I'm calling about the appointment on Sunday.",
        "Thanks for calling, I'll pass the message on to Chad.",
        "The meeting moved to Tuesday afternoon at three thirty.")))

    def run(out: Path, hours: float) -> list[dict]:
        generate(KokoroConfig(out, hours, seed=2, workers=1, corpus_cache=corpus))
        return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]

    run(tmp_path / "resumed", 0.001)
    resumed = run(tmp_path / "resumed", 0.003)
    straight = run(tmp_path / "straight", 0.003)
    assert len(resumed) >= 2
    assert [(r["id"], r["text"], r["voice"], r["duration"]) for r in resumed] == \
           [(r["id"], r["text"], r["voice"], r["duration"]) for r in straight]
    for row in resumed:
        import soundfile as sf

        info = sf.info(str(tmp_path / "resumed" / row["audio"]))
        assert info.samplerate == 16000 and info.channels == 1 and abs(info.duration - row["duration"]) < 0.05
    assert not list((tmp_path / "resumed").rglob("*.partial"))  # every file renamed into place
