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
        answered = live_model.finals([ChunkRequest(a, 0.0, d) for a, d in zip(chunks, decoders)])
        captions = [caption for _, caption in sorted(answered, key=lambda pair: pair[0])]
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


def test_a_final_is_sent_before_the_next_window_length_is_encoded(live_model, utterances,  # noqa: F811
                                                                   monkeypatch):
    """Chunks of two encoder window lengths in one batched call: the first chunk's final comes before
    the other chunk's encoder call (a final waits for the Whisper work of its own window length only)."""
    from asr.live.session import FINAL_MARGIN_S, ChunkRequest

    events = []
    encode = live_model.model.encode_chunks

    def logged(audios, *args):
        events.append(("encode", len(audios)))
        return encode(audios, *args)

    monkeypatch.setattr(live_model.model, "encode_chunks", logged)
    chunks = [utterances[0][0][: 2 * SR], utterances[1][0][: 9 * SR]]
    encoder = live_model.model.encoder
    assert len({encoder.window_samples([chunk], FINAL_MARGIN_S) for chunk in chunks}) == 2
    engine = live_model.open_engine(max_streams=2, max_seconds=60)
    decoders = [live_model.open(engine) for _ in chunks]
    try:
        requests = [ChunkRequest(audio, 0.0, decoder) for audio, decoder in zip(chunks, decoders)]
        for position, caption in live_model.finals(requests):
            assert caption.text, caption
            events.append(("final", position))
    finally:
        for decoder in decoders:
            decoder.close()
    assert events == [("encode", 1), ("final", 0), ("encode", 1), ("final", 1)]


def test_drafts_of_open_chunks_read_their_words_from_short_windows(live_model, utterances):  # noqa: F811
    from asr.live.session import ChunkRequest

    encoder = live_model.model.encoder
    seconds = [4.0, 6.5]  # the open chunks so far: the first seconds of each utterance
    prefixes = [audio[: int(s * SR)] for (audio, _), s in zip(utterances, seconds)]
    assert encoder.window_samples(prefixes, 2.0) == 10 * SR  # the longest plus the margin in 2.5-s steps
    drafts = [caption for _, caption in sorted(live_model.drafts([ChunkRequest(p, 0.0) for p in prefixes]),
                                                key=lambda pair: pair[0])]
    for (_, reference), draft, s in zip(utterances, drafts, seconds):
        words = reference.split()[: len(draft.text.split())]
        assert draft.text and error_rates([" ".join(words)], [draft.text])[0] < 0.35, (reference, draft.text)
        assert draft.end == pytest.approx(s) and draft.seconds > 0


def test_whisper_calls_run_beside_each_other_and_beside_the_llm_with_the_same_results(live_model,  # noqa: F811
                                                                                    utterances):
    """The live model for two workers (this CPU's default where it has two threads): CTranslate2 takes two
    calls at once; two threads encoding finals at once while a third runs a final's LLM call get the
    drafts, readings and embeddings one thread gets alone, and the final the same transcript."""
    import threading

    import torch

    from asr.live.session import ChunkRequest

    if live_model.workers < 2:
        pytest.skip("one thread: the live model takes one call at a time")
    assert live_model.model.encoder.backend.model.num_workers == live_model.workers
    chunks = [audio[: 6 * SR] for audio, _ in utterances]
    requests = [ChunkRequest(chunk, 0.0) for chunk in chunks]

    def encoded(request):
        return next(live_model.encode_finals([request]))[1]

    alone = [encoded(request) for request in requests]
    engine = live_model.open_engine(max_streams=2, max_seconds=60)
    decoders = [live_model.open(engine) for _ in range(2)]
    try:
        first_alone = live_model.final(ChunkRequest(chunks[0], 0.0, decoders[0]), alone[0])
        beside, captions = [None, None], []
        threads = [threading.Thread(target=lambda i=i: beside.__setitem__(i, encoded(requests[i])))
                   for i in range(2)]
        threads.append(threading.Thread(target=lambda: captions.append(
            live_model.final(ChunkRequest(chunks[0], 0.0, decoders[1]), alone[0]))))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for decoder in decoders:
            decoder.close()
    for one, other in zip(alone, beside):
        assert one.chunk.draft == other.chunk.draft  # text, word probabilities and readings
        torch.testing.assert_close(one.chunk.embeds, other.chunk.embeds)
    assert alone[0].chunk.draft.text and captions[0].text == first_alone.text


@pytest.mark.parametrize(
    "backend, lengths, margin, window",
    [
        pytest.param("ctranslate2", [SR, 3 * SR + 5], 2.0, int(7.5 * SR), id="longest-plus-margin-steps"),
        pytest.param("ctranslate2", [SR // 2], 1.0, 5 * SR, id="at-least-5s"),
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


def test_each_chunk_gets_its_own_window_and_only_equal_windows_share_a_batch():
    """Short windows: a long chunk does not stretch its batch mates' windows; frames come back in order."""
    from types import SimpleNamespace

    import torch

    from asr.speech.encoder import AudioEncoder

    batches = []  # (window samples, chunks in the batch)

    def backend(features):  # [batch, mels, window / 160] -> [batch, window / 320, dim], row i filled with i
        batches.append((features.shape[2] * 160, features.shape[0]))
        return torch.arange(features.shape[0], dtype=torch.float32)[:, None, None].expand(
            -1, features.shape[2] // 2, 8).clone()

    def log_mel(chunks, sampling_rate, return_tensors, device, max_length):
        return SimpleNamespace(input_features=torch.zeros(len(chunks), 80, max_length // 160))

    class Backend:  # CTranslate2 by name: it takes short windows
        name, dim = "ctranslate2", 8
        __call__ = staticmethod(backend)

    encoder = AudioEncoder(Backend(), log_mel, "cpu", torch.float32)
    chunks = [np.zeros(n, np.float32) for n in (SR, 12 * SR, 2 * SR)]
    frames, _ = encoder.encode_with_drafts(chunks, drafts=False, margin_s=2.0)
    assert sorted(batches) == [(5 * SR, 2), (15 * SR, 1)]
    assert [f.shape[0] for f in frames] == [50, 600, 100]
    # rows of one batch keep their chunks' order: the 1-s chunk first, the 2-s chunk second
    assert (frames[0] == 0).all() and (frames[2] == 1).all() and (frames[1] == 0).all()


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
        encoder.draft([chunk], margin_s=2.0)
    warm = resident_mb()
    for chunk in chunks[20:]:
        encoder.draft([chunk], margin_s=2.0)
    assert resident_mb() - warm < 30, (warm, resident_mb())
