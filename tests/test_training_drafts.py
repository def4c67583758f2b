"""Whisper drafts decoded once per utterance (training/drafts.py, training/draft_cache.py) and read by
train_asr's session stream instead of being decoded every step. Real dev-set audio, the embedded
Whisper base (CTranslate2 on the CPU)."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from asr.corpus import read_corpus
from asr.normalize import error_rates
from asr.speech.audio import SAMPLE_RATE
from training.draft_cache import DraftCache, audio_key, cache_file, read_rows, variant_wave, whisper_digest
from training.drafts import precompute
from training.train_asr import POOL_BATCHES, SessionStream, chunk_drafts, with_cached_drafts

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev"
pytestmark = pytest.mark.skipif(not (DEV / "manifest.jsonl").is_file(), reason="shared dev data absent")
DIGEST = "0123456789abcdef"


def _dev_manifest(folder: Path, count: int = 3) -> Path:
    """A manifest in ``folder`` of the ``count`` shortest dev utterances (audio stays where it is)."""
    rows = [json.loads(line) for line in (DEV / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = sorted(rows, key=lambda row: row["duration_s"])[:count]
    manifest = folder / "manifest.jsonl"
    lines = [{"audio": str(DEV / row["audio"]), "text": row["text"], "duration": row["duration_s"]}
             for row in rows]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture(scope="module")
def encoder():
    from asr.speech.encoder import AudioEncoder

    return AudioEncoder.load(drafts=True)


def test_precomputed_drafts_are_the_drafts_of_the_audio_training_plays(tmp_path, encoder):
    manifest = _dev_manifest(tmp_path)
    row = precompute(manifest, encoder, DIGEST, variants=1, batch=4)
    assert row["drafts"] == 6
    cache = DraftCache.for_sources([str(manifest)], DIGEST)
    utterances = read_corpus(manifest)
    clean = []
    for utt in utterances:
        entry = cache.lookup(utt.audio)
        assert sorted(entry.by_variant) == [0, 1]
        wave = utt.load()
        assert entry.by_variant[0] == encoder.draft([wave])[0].text
        assert entry.by_variant[1] == encoder.draft([variant_wave(wave, entry.key, 1)])[0].text
        clean.append(entry.by_variant[0])
    wer, _ = error_rates([utt.text for utt in utterances], clean)
    assert wer < 0.25  # Whisper base reads these short dev utterances well


def test_rerun_drafts_only_what_is_missing_after_a_torn_line(tmp_path, encoder):
    manifest = _dev_manifest(tmp_path)
    assert precompute(manifest, encoder, DIGEST, variants=0, batch=4)["drafts"] == 3
    path = cache_file(manifest, DIGEST)
    with path.open("a") as sink:
        sink.write('{"audio": "torn')  # a run killed mid-line
    assert precompute(manifest, encoder, DIGEST, variants=1, batch=4)["drafts"] == 3  # variant 1 only
    rows = read_rows(path)
    assert sorted((row["audio"], row["variant"]) for row in rows) == sorted(
        (audio_key(utt.audio, tmp_path), variant) for utt in read_corpus(manifest) for variant in (0, 1))
    assert json.loads(path.read_text().splitlines()[0])["header"]["backend"].startswith("Ct2Drafter/int8")
    assert precompute(manifest, encoder, DIGEST, variants=1, batch=4)["drafts"] == 0


def test_a_cache_belongs_to_one_whisper_weights(tmp_path):
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"weights one")
    first = whisper_digest(folder)
    (folder / "model.bin").write_bytes(b"weights two")
    second = whisper_digest(folder)
    assert first != second and len(first) == 16
    manifest = _dev_manifest(tmp_path)
    cache_file(manifest, first).write_text(
        json.dumps({"audio": audio_key(read_corpus(manifest)[0].audio, tmp_path), "variant": 0, "draft": "x"})
        + "\n")
    assert len(DraftCache.for_sources([str(tmp_path)], first)) == 1
    assert len(DraftCache.for_sources([str(tmp_path)], second)) == 0


def test_variants_are_seeded_by_audio_key_and_number():
    wave = read_corpus(DEV / "manifest.jsonl")[0].load()
    assert np.array_equal(variant_wave(wave, "a.flac", 0), wave[: 30 * SAMPLE_RATE])
    first = variant_wave(wave, "a.flac", 1)
    assert np.array_equal(first, variant_wave(wave, "a.flac", 1))
    others = [variant_wave(wave, "a.flac", 2), variant_wave(wave, "b.flac", 1)]
    assert all(len(other) != len(first) or not np.allclose(other, first) for other in others)


def _fake_cache(manifest: Path, cached: int) -> DraftCache:
    """Drafts naming their own variant for the first ``cached`` utterances of ``manifest``."""
    rows = []
    for utt in read_corpus(manifest)[:cached]:
        key = audio_key(utt.audio, manifest.parent)
        rows += [{"audio": key, "variant": v, "draft": f"{utt.text} | variant {v}"} for v in (0, 1, 2)]
    cache_file(manifest, DIGEST).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return DraftCache.for_sources([str(manifest)], DIGEST)


@pytest.mark.parametrize("augment", [pytest.param(False, id="clean"), pytest.param(True, id="augmented")])
def test_session_stream_plays_a_cached_variant_with_its_draft(tmp_path, augment):
    manifest = _dev_manifest(tmp_path)
    utterances = read_corpus(manifest)
    cache = _fake_cache(manifest, cached=2)
    by_text = {utt.text: utt for utt in utterances}
    stream = SessionStream(utterances, augment=augment, seed=0, batch=4, drafts=cache)
    variants_seen, uncached = set(), 0
    for batch in itertools.islice(iter(stream), POOL_BATCHES):
        for wave, text, _, *draft in (turn for session in batch for turn in session):
            if not text:
                assert not draft  # noise chunks are drafted on the fly
                continue
            utt = by_text[text]
            entry = cache.lookup(utt.audio)
            if entry is None:
                assert not draft
                uncached += 1
                continue
            reference, variant = draft[0].split(" | variant ")
            assert reference == text
            variants_seen.add(int(variant))
            assert np.array_equal(wave, variant_wave(utt.load(), entry.key, int(variant)))
    assert variants_seen == ({1, 2} if augment else {0})
    assert uncached > 0


def test_chunk_drafts_decode_only_the_uncached_chunks(encoder):
    waves = [utt.load() for utt in read_corpus(DEV / "manifest.jsonl")[:2]]
    decoded = []

    class CountingEncoder:
        def draft(self, chunks, batch_size):
            decoded.append(len(chunks))
            return encoder.draft(chunks, batch_size)

    batch = [[(waves[0], "", True, "A cached draft."), (waves[1], "", True)]]
    drafts = chunk_drafts(batch, waves, CountingEncoder())
    assert drafts == ["A cached draft.", encoder.draft([waves[1]])[0].text]
    assert decoded == [1]
    assert chunk_drafts([[(waves[0], "", True, "Cached.")]], waves[:1], CountingEncoder()) == ["Cached."]
    assert decoded == [1]


def test_cached_drafts_only_keeps_the_utterances_with_a_variant_to_play(tmp_path):
    manifest = _dev_manifest(tmp_path, count=4)  # the fourth has no cached draft
    utterances = read_corpus(manifest)
    cache = _fake_cache(manifest, cached=3)
    first = cache.lookup(utterances[0].audio)
    first.by_variant = {0: first.by_variant[0]}  # only its clean draft: nothing to play augmented
    assert [u.text for u in with_cached_drafts(utterances, cache, augment=True)] == [
        u.text for u in utterances[1:3]
    ]
    assert [u.text for u in with_cached_drafts(utterances, cache, augment=False)] == [
        u.text for u in utterances[:3]
    ]
