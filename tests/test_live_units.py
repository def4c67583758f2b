"""Parts of the live service that need no model: the streaming segmenter, the protocol's parsing
and audio input, and the fair model worker."""

import asyncio
import json
import threading
import time

import numpy as np
import pytest

from asr.live.agreement import LocalAgreement
from asr.live.protocol import AudioInput, ProtocolError, StreamFormat, parse_message, parse_start
from asr.live.vad import StreamSegmenter, StreamSegmenterConfig
from asr.live.worker import FINAL, IDLE, PARTIAL, ModelWorker

SR = 16000


def voiced(seconds, seed=0, level=0.2):
    """Speech-like sound: a modulated tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = level * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (tone + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def quiet(seconds, seed=1):
    return (0.001 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def feed_in_frames(segmenter, audio, frame):
    chunks = []
    for offset in range(0, len(audio), frame):
        chunks += segmenter.feed(audio[offset : offset + frame])
    return chunks + segmenter.flush()


@pytest.mark.parametrize(
    "frame", [pytest.param(160, id="10ms"), pytest.param(1601, id="100ms-odd"), pytest.param(SR * 3, id="3s")]
)
def test_segmenter_cuts_at_pauses_and_drops_silence(frame):
    audio = np.concatenate([quiet(1), voiced(2), quiet(1.5), voiced(3, seed=2), quiet(2)])
    chunks = feed_in_frames(StreamSegmenter(), audio, frame)
    spans = [(c.start / SR, c.end / SR) for c in chunks]
    assert len(spans) == 2, spans
    (a0, a1), (b0, b1) = spans
    assert 0.7 <= a0 <= 1.0 and 3.0 <= a1 <= 3.3  # pre-roll and tail of 0.2 s around the speech
    assert 4.2 <= b0 <= 4.5 and 7.5 <= b1 <= 7.8
    for chunk in chunks:  # chunks are the input's own samples, in place
        np.testing.assert_array_equal(chunk.audio, audio[chunk.start : chunk.end])


def test_segmenter_forces_a_cut_at_the_longest_chunk_and_keeps_every_sample():
    config = StreamSegmenterConfig(max_chunk_s=5.0)
    audio = np.concatenate([voiced(12), quiet(1)])
    audio[int(3.8 * SR) : int(3.85 * SR)] *= 0.05  # a dip too short to be a pause: the forced cut goes there
    chunks = feed_in_frames(StreamSegmenter(config), audio, 800)
    assert all(len(c.audio) <= 5.0 * SR for c in chunks)
    assert abs(chunks[0].end / SR - 3.82) < 0.05
    assert all(a.end == b.start for a, b in zip(chunks[:-1], chunks[1:])), "samples lost between forced cuts"


def test_segmenter_open_chunk_grows_with_speech_and_short_clicks_are_dropped():
    segmenter = StreamSegmenter()
    assert segmenter.feed(quiet(1)) == [] and segmenter.open_chunk() is None
    segmenter.feed(voiced(1.5))
    first = segmenter.open_chunk()
    segmenter.feed(voiced(1.0, seed=3))
    assert segmenter.open_chunk().start == first.start and len(segmenter.open_chunk().audio) > len(
        first.audio
    )
    click = np.concatenate([quiet(1), voiced(0.04), quiet(1)])
    assert feed_in_frames(StreamSegmenter(), click, 320) == []


def test_segmenter_keeps_a_word_or_two_open_over_a_pause_an_utterance_would_end_at():
    # 1.5 s of speech, a 0.7-s pause (ends a longer chunk, not this one), 2 s more: one chunk
    audio = np.concatenate([quiet(1), voiced(1.5), quiet(0.7), voiced(2, seed=2), quiet(2)])
    chunks = feed_in_frames(StreamSegmenter(), audio, 320)
    assert [(round(c.start / SR, 1), round(c.end / SR, 1)) for c in chunks] == [(0.8, 5.4)]
    # the same pause after 3 s of speech ends the chunk
    audio = np.concatenate([quiet(1), voiced(3), quiet(0.7), voiced(2, seed=2), quiet(2)])
    assert len(feed_in_frames(StreamSegmenter(), audio, 320)) == 2
    # a short utterance alone still closes, after the longer pause
    audio = np.concatenate([quiet(1), voiced(1.5), quiet(1.2)])
    assert len(feed_in_frames(StreamSegmenter(), audio, 320)) == 1


def test_segmenter_hears_a_quiet_recording_over_digital_silence():
    # speech at about -65 dBFS (a quiet FLEURS recording) between stretches of near-digital silence
    audio = np.concatenate([quiet(1) * 0.02, voiced(2) * 0.003, quiet(1.5) * 0.02])
    chunks = feed_in_frames(StreamSegmenter(), audio, 320)
    assert len(chunks) == 1
    assert 0.7 <= chunks[0].start / SR <= 1.0 and 3.0 <= chunks[0].end / SR <= 3.3


@pytest.mark.parametrize(
    "message, code",
    [
        pytest.param({"type": "start", "sample_rate": 7999}, "bad_rate", id="rate-too-low"),
        pytest.param({"type": "start", "sample_rate": True}, "bad_rate", id="rate-bool"),
        pytest.param({"type": "start", "sample_rate": float("nan")}, "bad_rate", id="rate-nan"),
        pytest.param({"type": "start", "format": "opus"}, "bad_format", id="format"),
        pytest.param({"type": "start", "prompt": 5}, "bad_prompt", id="prompt"),
    ],
)
def test_start_validation(message, code):
    with pytest.raises(ProtocolError) as refused:
        parse_start(message)
    assert refused.value.code == code


def test_start_defaults_and_message_parsing():
    assert parse_start({"type": "start", "sample_rate": 48000.0, "format": "pcm_f32le"}) == StreamFormat(
        48000, "f32le"
    )
    with pytest.raises(ProtocolError, match="JSON"):
        parse_message("[")
    assert parse_message(json.dumps({"type": "stop"})) == {"type": "stop"}


def test_audio_input_resamples_a_stream_without_losing_time():
    source = 48000
    t = np.arange(source * 2) / source
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype("<f4")
    audio = AudioInput(StreamFormat(source, "f32le"))
    pieces = [audio.decode(tone[i : i + 4799].tobytes()) for i in range(0, len(tone), 4799)] + [audio.flush()]
    out = np.concatenate(pieces)
    assert abs(len(out) - 2 * SR) <= 2
    spectrum = np.abs(np.fft.rfft(out[SR // 2 : SR // 2 + SR]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1  # 1 Hz bins over one second


def test_audio_input_refuses_odd_bytes_and_nan():
    with pytest.raises(ProtocolError) as odd:
        AudioInput(StreamFormat()).decode(b"\x00\x01\x02")
    assert odd.value.code == "odd_length"
    with pytest.raises(ProtocolError) as nan:
        AudioInput(StreamFormat(encoding="f32le")).decode(np.array([0.1, np.inf], "<f4").tobytes())
    assert nan.value.code == "bad_samples"


def test_worker_serves_finals_first_each_priority_oldest_due_first():
    """Finals before tentative captions whenever they fell due; among finals, the one due first (a
    stream's backlogged chunk) before one submitted earlier but due later."""
    order = []
    gate = threading.Event()

    async def scenario():
        worker = ModelWorker()
        try:
            blocker = worker.run("a", gate.wait)  # holds the worker while the others queue
            await asyncio.sleep(0.05)
            futures = [
                worker.run("b", lambda: order.append("b-partial"), PARTIAL, due=time.monotonic() - 60),
                worker.run("c", lambda: order.append("c-final"), FINAL),
                worker.run("d", lambda: order.append("d-final"), FINAL, due=time.monotonic() - 10),
            ]
            with pytest.raises(RuntimeError, match="already has a job"):
                worker.run("c", lambda: None)
            gate.set()
            await blocker
            await asyncio.gather(*futures)
            failing = worker.run("e", lambda: 1 / 0)
            with pytest.raises(ZeroDivisionError):
                await failing
            assert await worker.run("e", lambda: 42) == 42  # the worker survived the failure
            worker.run("f", lambda: time.sleep(0.5))
            doomed = worker.run("g", lambda: order.append("never"))
            worker.forget("g")
            with pytest.raises(asyncio.CancelledError):
                await doomed
        finally:
            worker.stop()

    asyncio.run(scenario())
    assert order == ["d-final", "c-final", "b-partial"]


def test_worker_withdraws_only_a_waiting_job_of_the_priority_asked():
    gate, ran = threading.Event(), []

    async def scenario():
        worker = ModelWorker()
        try:
            running = worker.run("a", gate.wait, PARTIAL)
            await asyncio.sleep(0.05)
            partial = worker.run("b", lambda: ran.append("b"), PARTIAL)
            final = worker.run("c", lambda: ran.append("c"), FINAL)
            assert not worker.withdraw("a", PARTIAL)  # running: it finishes
            assert not worker.withdraw("c", PARTIAL)  # a final is not a tentative caption
            assert worker.withdraw("b", PARTIAL) and not worker.withdraw("b", PARTIAL)
            assert await partial is None
            gate.set()
            await asyncio.gather(running, final)
        finally:
            worker.stop()

    asyncio.run(scenario())
    assert ran == ["c"]


def test_worker_runs_idle_work_piece_by_piece_only_while_no_job_waits():
    """Idle work starts when no job waits, yields to a job after the piece running, and stops when it
    says none is left (the worker sleeps then, until the next job)."""
    events, pieces, first_piece = [], [0.05, 0.05, 0.2], threading.Event()

    def idle():
        if not pieces:
            events.append("none left")
            return False
        first_piece.set()
        time.sleep(pieces.pop())
        events.append("idle")
        return True

    async def scenario():
        worker = ModelWorker(idle=idle)
        try:
            await asyncio.to_thread(first_piece.wait)
            await worker.run("a", lambda: events.append("job"))
            while "none left" not in events:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        finally:
            worker.stop()
        return worker

    worker = asyncio.run(scenario())
    assert events == ["idle", "job", "idle", "idle", "none left"]
    assert worker.busy_by_priority[IDLE] >= 0.3 - 1e-3


@pytest.mark.parametrize(
    "drafts, expected",
    [
        pytest.param(["Margaret said", "Margaret said Mr."], ("Margaret said", "Mr."), id="agreed-prefix"),
        pytest.param(["Margaret said Mr.", "margaret, said Mr Hale"], ("margaret, said Mr", "Hale"),
                     id="case-and-punctuation-agree"),
        pytest.param(["a b c", "a b c d", "a x"], ("a b c", ""), id="stable-never-shrinks"),
        pytest.param(["one", "two", "two three"], ("two", "three"), id="first-words-disagree"),
        pytest.param(["hello"], ("", "hello"), id="one-draft-is-all-unstable"),
    ],
)
def test_local_agreement_shows_what_two_drafts_agree_on(drafts, expected):
    agreement = LocalAgreement()
    for draft in drafts:
        shown = agreement.update(16000, draft)
    assert shown == expected


def test_local_agreement_starts_over_with_a_new_chunk():
    agreement = LocalAgreement()
    agreement.update(0, "the first chunk")
    assert agreement.update(0, "the first chunk ends") == ("the first chunk", "ends")
    assert agreement.update(48000, "the first words") == ("", "the first words")


def test_worker_batches_waiting_sessions_and_settles_each_item():
    calls = []
    gate = threading.Event()

    def batch(items):  # answers the last item first
        calls.append(list(items))
        for position in reversed(range(len(items))):
            item = items[position]
            yield position, ValueError(item) if item == "bad" else item.upper()

    def broken(items):
        calls.append(list(items))
        yield 0, "first"
        raise RuntimeError("encoder failed")

    async def scenario():
        worker = ModelWorker(max_batch=3)
        try:
            blocker = worker.run("z", gate.wait)
            await asyncio.sleep(0.05)
            partials = [worker.run_batched(s, batch, f"{s}-partial", PARTIAL) for s in "ab"]
            dues = [None, None, time.monotonic() - 5, None]  # e's chunk is the oldest: e leads
            finals = [worker.run_batched(s, batch, item, due=due)
                      for s, item, due in zip("cdef", ["c", "bad", "e", "f"], dues)]
            gate.set()
            await blocker
            results = await asyncio.gather(*finals, *partials, return_exceptions=True)
            assert results[0] == "C" and isinstance(results[1], ValueError) and results[2:] == [
                "E", "F", "A-PARTIAL", "B-PARTIAL"]
            failed = [worker.run_batched(s, broken, s) for s in "gh"]
            outcome = await asyncio.gather(*failed, return_exceptions=True)
            assert outcome[0] == "first" and isinstance(outcome[1], RuntimeError)
            assert await worker.run_batched("g", batch, "again") == "AGAIN"  # the worker survived
        finally:
            worker.stop()

    asyncio.run(scenario())
    # finals first, at most max_batch per call, in the order they fell due; partials batched after them
    assert calls[:3] == [["e", "c", "bad"], ["f"], ["a-partial", "b-partial"]]


class _DraftCounter:
    """A stand-in for ``LiveModel``: decoders that do nothing, drafts that count the audio they saw,
    finals that say which chunk they were (in ``calls``, as drafts do)."""

    def __init__(self):
        self.drafted, self.calls = [], []

    def encode_finals(self, requests):
        for position, _ in enumerate(requests):
            self.calls.append("encode")
            yield position, None

    def final(self, request, encoded):
        from asr.live.session import Caption

        self.calls.append("final")
        return Caption(request.start_s, request.end_s, "final words", 0.0)

    def open(self, engine, prompt=""):
        return type("Decoder", (), {"close": lambda self: None})()

    def drafts(self, requests):
        from asr.live.session import Caption

        for position, request in enumerate(requests):
            self.calls.append("draft")
            self.drafted.append(len(request.audio))
            yield position, Caption(request.start_s, request.end_s, "words", 0.0)


def run_draft_stream(model, config, body) -> list[dict]:
    """Open a real StreamSession on ``model`` with its own ModelWorker, await ``body(stream, worker)``,
    close both; the messages the stream sent."""
    from asr.live.stream import StreamSession

    sent = []

    async def send(message):
        sent.append(message)

    async def scenario():
        worker = ModelWorker()
        stream = StreamSession("s", model, None, worker, config, send)
        try:
            await stream.open()
            await body(stream, worker)
        finally:
            await stream.abort()
            worker.stop()

    asyncio.run(scenario())
    return sent


def test_no_tentative_draft_of_an_open_chunk_that_has_not_grown():
    """In a pause (too short to close the chunk) the open chunk stops growing: one draft of it, not one per
    interval; speech going on asks for the next at once."""
    from asr.live.stream import StreamConfig

    config = StreamConfig(partial_interval_s=0.05, segmenter=StreamSegmenterConfig(end_pause_s=5.0,
                                                                                   short_pause_s=5.0))
    model = _DraftCounter()

    async def body(stream, worker):
        stream.feed(np.concatenate([quiet(0.5), voiced(1.0), quiet(1.0)]))
        await asyncio.sleep(0.6)  # a dozen intervals
        assert len(model.drafted) == 1
        stream.feed(voiced(0.5, seed=4))
        await asyncio.sleep(0.2)
        assert len(model.drafted) == 2 and model.drafted[1] > model.drafted[0]

    sent = run_draft_stream(model, config, body)
    assert [m["type"] for m in sent] == ["partial", "partial"]


def test_a_waiting_tentative_caption_of_a_chunk_that_closed_is_withdrawn_for_its_final():
    """The worker busy (other streams' finals): a stream's tentative draft waits; its chunk closes
    meanwhile. The draft is withdrawn, the final asked for at once and run first; no draft runs."""
    from asr.live.stream import StreamConfig

    model, gate = _DraftCounter(), threading.Event()

    async def body(stream, worker):
        blocker = worker.run("other", gate.wait)  # another stream's long final
        stream.feed(np.concatenate([quiet(0.5), voiced(1.0)]))
        await asyncio.sleep(0.3)  # its tentative draft now waits behind the blocker
        stream.feed(quiet(1.5))  # the pause closes the chunk
        await asyncio.sleep(0.1)
        gate.set()
        await blocker
        await asyncio.sleep(0.3)

    sent = run_draft_stream(model, StreamConfig(partial_interval_s=0.05), body)
    assert model.calls == ["encode", "final"]
    assert [m["type"] for m in sent] == ["final"]


def test_live_schedule_runs_real_streams_against_modelled_costs(tmp_path):
    """eval.live_schedule: two short streams through the real server with a sleeping model on two worker
    threads; every final comes, its latency at least its modelled cost, each final one Whisper job and
    one LLM job in the job profile, the JSON written."""
    from eval.bench_live import DEV

    if not DEV.exists():
        pytest.skip(f"the shared speech dev set is absent ({DEV})")
    from eval.live_schedule import main

    assert main(["--streams", "2", "--seconds", "8", "--workers", "2", "--output", str(tmp_path),
                 "--name", "s"]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    run = report["streams"][0]
    assert run["finals"] >= 2 and run["calls"]["finals"] >= 1 and not run["errors"]
    assert run["latency_p50"] >= report["costs"]["final_base"]
    jobs = run["worker_jobs"]
    assert jobs["final_whisper"]["jobs"] == jobs["final_llm"]["jobs"] == run["finals"]
    assert jobs["final"]["jobs"] == 2 * run["finals"] + 2 * 2  # and each stream's opening and closing


def test_two_worker_threads_run_serial_jobs_one_at_a_time_and_others_beside_them():
    """Two threads: a serial job (the LLM's) and a job that is not (Whisper's) run at once; two serial
    jobs, or a serial job and idle work, never do; a thread free while the serial job runs takes the
    best job it may run, even of a lower priority."""
    running, overlaps, lock = set(), [], threading.Lock()
    idle_pieces = [0.05, 0.05]

    def work(name, seconds=0.15):
        def call():
            with lock:
                overlaps.append((name, frozenset(running)))
                running.add(name)
            time.sleep(seconds)
            with lock:
                running.discard(name)
            return name
        return call

    def idle():
        if not idle_pieces:
            return False
        work("idle", idle_pieces.pop())()
        return True

    async def scenario():
        worker = ModelWorker(idle=idle, threads=2)
        try:
            while idle_pieces:  # idle work first, as no job waits
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            futures = [worker.run("a", work("a-llm")),  # serial
                       worker.run("b", work("b-llm")),  # serial: after a-llm, though a thread is free
                       worker.run("c", work("c-draft", 0.1), PARTIAL, serial=False),
                       worker.run_batched("d", lambda items: [(0, work("d-whisper")())], "x", serial=False)]
            return await asyncio.gather(*futures), worker
        finally:
            worker.stop()

    results, worker = asyncio.run(scenario())
    assert results == ["a-llm", "b-llm", "c-draft", "d-whisper"]
    beside = dict(overlaps)
    serial = {"a-llm", "b-llm", "idle"}
    assert all(not (serial & others) for name, others in overlaps if name in serial), overlaps
    assert beside["d-whisper"] == {"a-llm"}  # the final's Whisper call beside a's LLM call
    assert beside["c-draft"] in ({"a-llm"}, {"b-llm"})  # the free thread took a tentative caption
    assert {call.thread for call in worker.calls} == {0, 1}
    assert worker.busy_seconds >= 0.15 * 3 + 0.1 + 0.1 - 1e-3  # both threads' seconds


def test_worker_refuses_no_threads():
    with pytest.raises(ValueError, match="at least one thread"):
        ModelWorker(threads=0)


def test_a_jobs_next_step_runs_before_a_job_that_waited_longer_and_not_after_forget():
    """One thread: a final's Whisper step answers while a tentative caption waits: its LLM step (``Then``)
    is queued at once and runs first, its result the future's; a failing step takes no next step; a
    session forgotten while its step runs gets none either."""
    from asr.live.worker import Then

    order, gate, second_gate = [], threading.Event(), threading.Event()

    def whisper(items):
        order.append(f"whisper {items[0]}")
        yield 0, items[0].upper()

    def broken(items):
        raise RuntimeError("encoder failed")

    async def scenario():
        worker = ModelWorker()
        try:
            blocker = worker.run("z", gate.wait)
            await asyncio.sleep(0.05)
            final = worker.run_batched("a", whisper, "a", serial=False,
                                       then=Then(lambda encoded: order.append(f"llm {encoded}") or encoded))
            partial_job = worker.run("b", lambda: order.append("partial b"), PARTIAL,
                                     due=time.monotonic() - 60)
            failing = worker.run_batched("c", broken, "c", serial=False,
                                         then=Then(lambda _: order.append("never")))
            gate.set()
            await blocker
            assert await final == "A"
            await partial_job
            with pytest.raises(RuntimeError, match="encoder failed"):
                await failing
            held = worker.run_batched("d", lambda items: [(0, second_gate.wait())], "d", serial=False,
                                      then=Then(lambda _: order.append("after forget")))
            await asyncio.sleep(0.05)
            worker.forget("d")  # its client left while its first step ran
            second_gate.set()
            with pytest.raises(asyncio.CancelledError):
                await held
            assert await worker.run("d", lambda: "closed") == "closed"  # the session's next job runs
        finally:
            worker.stop()

    asyncio.run(scenario())
    assert order == ["whisper a", "llm A", "partial b"]
