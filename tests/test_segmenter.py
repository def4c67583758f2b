import numpy as np

from asr.speech.segmenter import SegmenterConfig, segment

SR = 16000


def tone(seconds, freq=220.0, amp=0.3, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    # syllable-like amplitude modulation so it is not a flat tone
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return (amp * envelope * np.sin(2 * np.pi * freq * t) + 0.001 * rng.standard_normal(len(t))).astype(
        np.float32
    )


def quiet(seconds, seed=1):
    return (0.001 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def assert_covers(regions, n):
    assert regions[0].start == 0 and regions[-1].end == n
    assert all(a.end == b.start for a, b in zip(regions[:-1], regions[1:])), "gap or overlap"


def test_long_silence_becomes_its_own_region_and_everything_is_covered():
    audio = np.concatenate([tone(5), quiet(10), tone(4)])
    regions = segment(audio, SR)
    assert_covers(regions, len(audio))
    kinds = [r.kind for r in regions]
    assert kinds == ["speech", "silence", "speech"]
    silence = regions[1]
    assert abs(silence.start / SR - 5) < 0.1 and abs(silence.end / SR - 15) < 0.1


def test_chunks_respect_the_maximum_and_cut_at_pauses():
    pieces = []
    for i in range(12):  # 12 x (4.5 s speech + 0.5 s pause)
        pieces += [tone(4.5, 200 + 10 * i, seed=i), quiet(0.5, seed=i)]
    audio = np.concatenate(pieces)
    config = SegmenterConfig()
    regions = segment(audio, SR, config)
    assert_covers(regions, len(audio))
    assert all(r.kind == "speech" for r in regions)
    assert all((r.end - r.start) / SR <= config.max_chunk_s + 1e-6 for r in regions)
    for r in regions[:-1]:  # each cut lies inside a pause: (t mod 5) in [4.5, 5)
        t = r.end / SR
        assert 4.45 <= t % 5.0 <= 5.0 or t % 5.0 < 0.05, t


def test_unbroken_speech_longer_than_the_maximum_is_still_cut():
    audio = tone(70)
    regions = segment(audio, SR)
    assert_covers(regions, len(audio))
    assert len(regions) >= 3 and all((r.end - r.start) / SR <= 28.0 + 1e-6 for r in regions)


def test_pure_silence_and_empty_input():
    regions = segment(quiet(5), SR)
    assert [r.kind for r in regions] == ["silence"]
    assert segment(np.zeros(0, dtype=np.float32), SR) == []


def test_a_short_stub_of_speech_stays_with_its_chunk():
    # 7 s of speech, a 0.4 s pause, then 0.6 s more: one chunk, not a 0.6-s chunk of its own
    audio = np.concatenate([tone(7), quiet(0.4), tone(0.6, seed=3), quiet(5, seed=4)])
    regions = segment(audio, SR)
    assert_covers(regions, len(audio))
    speech = [r for r in regions if r.kind == "speech"]
    assert len(speech) == 1 and speech[0].end / SR > 7.9
    # a longer second part is still cut off at the pause
    audio = np.concatenate([tone(7), quiet(0.4), tone(4, seed=3)])
    assert len([r for r in segment(audio, SR) if r.kind == "speech"]) == 2
