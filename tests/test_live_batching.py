"""The live model's batched calls on the real embedded model and real speech: finals of several
streams encoded as one batch, tentative drafts of open chunks from short encoder windows, and the
shared engine giving every page back."""

import json

import numpy as np
import pytest

from asr.normalize import error_rates
from tests.test_live_server import DEV, SR, live_model  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
UTTERANCES = ["ls-test-other-1688-142285-0001", "ls-test-other-1688-142285-0006"]


@pytest.fixture(scope="module")
def utterances():
    manifest = DEV / "manifest.jsonl"
    if not manifest.exists():
        pytest.skip(f"the shared speech dev set is absent ({manifest})")
    from asr.speech.audio import load_audio

    rows = {row["id"]: row for row in map(json.loads, manifest.read_text().splitlines())}
    return [(load_audio(DEV / rows[i]["audio"]), rows[i]["text"]) for i in UTTERANCES]


def finals_of(live_model, engine, chunks):  # noqa: F811
    """Each chunk as the first final of its own stream, all in one batched call."""
    from asr.live.session import ChunkRequest

    decoders = [live_model.open(engine) for _ in chunks]
    try:
        captions = list(live_model.finals([ChunkRequest(a, 0.0, d) for a, d in zip(chunks, decoders)]))
    finally:
        for decoder in decoders:
            decoder.close()
    return captions


def test_finals_of_two_streams_in_one_batch_match_one_at_a_time(live_model, utterances):  # noqa: F811
    engine = live_model.open_engine(max_streams=2, max_seconds=60)
    free_before = engine.cache.allocator.num_free
    audios = [audio for audio, _ in utterances]
    together = finals_of(live_model, engine, audios)
    alone = [finals_of(live_model, engine, [audio])[0] for audio in audios]
    assert engine.cache.allocator.num_free == free_before, "a closed stream kept pages"
    for (audio, reference), batched, single in zip(utterances, together, alone):
        assert batched.end == pytest.approx(len(audio) / SR)
        assert error_rates([single.text], [batched.text])[0] <= 0.1, (single.text, batched.text)
        assert error_rates([reference], [batched.text])[0] < 0.5, (reference, batched.text)


def test_drafts_of_open_chunks_read_their_words_from_short_windows(live_model, utterances):  # noqa: F811
    from asr.live.session import ChunkRequest

    encoder = live_model.model.encoder
    seconds = [4.0, 6.5]  # the open chunks so far: the first seconds of each utterance
    prefixes = [audio[: int(s * SR)] for (audio, _), s in zip(utterances, seconds)]
    assert encoder.window_samples(prefixes, 2.0) == 10 * SR  # the longest plus the margin in 5-s steps
    drafts = list(live_model.drafts([ChunkRequest(p, 0.0) for p in prefixes]))
    for (_, reference), draft, s in zip(utterances, drafts, seconds):
        words = reference.split()[: len(draft.text.split())]
        assert draft.text and error_rates([" ".join(words)], [draft.text])[0] < 0.35, (reference, draft.text)
        assert draft.end == pytest.approx(s) and draft.seconds > 0


@pytest.mark.parametrize(
    "backend, lengths, margin, window",
    [
        pytest.param("ctranslate2", [SR, 3 * SR + 5], 2.0, 10 * SR, id="longest-plus-margin-in-5s-steps"),
        pytest.param("ctranslate2", [3 * SR], 2.0, 5 * SR, id="exactly-one-step"),
        pytest.param("ctranslate2", [29 * SR], 2.0, 30 * SR, id="capped-at-30s"),
        pytest.param("ctranslate2", [SR], None, 30 * SR, id="no-margin-is-padded"),
        pytest.param("torch", [SR], 2.0, 30 * SR, id="torch-needs-30s"),
    ],
)
def test_window_samples(backend, lengths, margin, window):
    from types import SimpleNamespace

    from asr.speech.encoder import AudioEncoder

    encoder = AudioEncoder(SimpleNamespace(name=backend, dim=8), None, "cpu", None)
    assert encoder.window_samples([np.zeros(n, np.float32) for n in lengths], margin) == window


def test_short_windows_keep_memory_flat(live_model):  # noqa: F811
    """Drafts of chunks of ever new lengths (a live stream's): after a warm-up the process must not
    grow (one window length per chunk length grew CTranslate2's process ~2.7 MiB per call)."""
    import re
    from pathlib import Path

    def resident_mb() -> float:
        return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

    encoder, rng = live_model.model.encoder, np.random.default_rng(0)
    chunks = [0.01 * rng.standard_normal(int(rng.uniform(1, 25) * SR)).astype(np.float32) for _ in range(60)]
    for chunk in chunks[:20]:  # every window length once
        encoder.draft_short([chunk], 2.0)
    warm = resident_mb()
    for chunk in chunks[20:]:
        encoder.draft_short([chunk], 2.0)
    assert resident_mb() - warm < 30, (warm, resident_mb())
