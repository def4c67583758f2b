"""File transcription: load audio, cut it at pauses, run a long-form session, report everything.

Every second of the input ends up in a segment (speech) or in ``Transcript.skipped`` (silence, or a
chunk that could not be decoded), never silently dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from asr.attention.config import UniqueConfig, UniSparseConfig
from asr.errors import AudioError
from asr.llm.config import EngineConfig
from asr.llm.cpu_defaults import default_speech_dtype, default_threads
from asr.llm.distance_cap import DistanceCap
from asr.speech.audio import SAMPLE_RATE
from asr.speech.draft_decoding import DEFAULT_END_TOLERANCE, DEFAULT_GATE, DEFAULT_TOLERANCE, DraftDecoding
from asr.speech.longform import LongformSession
from asr.speech.model import EncodedChunk, SpeechModel, load_speech_model
from asr.speech.repetition import LoopConfig
from asr.speech.segmenter import SegmenterConfig, segment
from asr.speech.speech_detector import FrameSpeechDetector, shared_detector
from asr.transcript import Transcript, TranscriptStats

log = logging.getLogger(__name__)

# speech chunks encoded (and drafted) together, files only: a live stream encodes as it goes. On the CPU a
# batch of 4 costs ~25% less per chunk than one at a time; on a GPU the batched draft generation is what
# keeps Whisper's decoder from dominating a long recording.
ENCODER_BATCH = {"cpu": 4, "cuda": 32}


@dataclass(frozen=True)
class TranscribeOptions:
    """attention: ``unique``/``quest`` read the top-k KV pages per decode step, ``dense`` all of them;
    budget_tokens / page_size: the sparse budget and the cache page size; device: ``None`` picks CUDA
    when available; dtype: the LLM's weights and cache (None: bfloat16 on a GPU and on a CPU with
    native bf16; on other CPUs, where bf16 runs emulated and slower, ``int8``: int8 linear layers over
    a float32 model and cache, CPU only; ``asr.llm.cpu_defaults``); threads: CPU threads
    (None: one per physical core, ``asr.llm.cpu_defaults``); segmenter / loop: chunking and runaway
    control; max_distance: the farthest a key may sit from the next position before old pages are
    moved closer (``asr.llm.distance_cap``; None keeps every key at its own position); drafts: put
    each chunk's Whisper draft into the context and verify it as the LLM's proposal (None: as the
    model was trained; ``asr.speech.draft``); draft_gate: Whisper's word probability from which a
    draft word is kept unchecked (a draft sure throughout is kept whole, with no LLM decoding);
    draft_tolerance: nats by which an unsure draft token may trail the LLM's own choice and still be
    kept; draft_end_tolerance: the same where the LLM would end the transcript early (all three in
    ``asr.speech.draft_decoding``; gate above 1 and tolerance 0: the LLM's exact greedy transcript);
    prefill: how a chunk appended to a long context attends to it: ``unisparse`` (default: the key
    blocks ``asr.attention.block_selection`` picks, at most ``budget_tokens`` of them per query block,
    once the context holds ``UniSparseConfig.min_context`` tokens; on a 15-minute recording it cut the
    real-time factor from 0.54 to 0.36 on one CPU thread at 22.2% WER against dense's 23.3%,
    BENCHMARKS.md) or ``dense`` (every key)."""

    attention: str = "unique"
    budget_tokens: int = 2048
    page_size: int = 16
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    max_distance: int | None = DistanceCap.max_distance
    drafts: bool | None = None
    draft_gate: float = DEFAULT_GATE
    draft_tolerance: float = DEFAULT_TOLERANCE
    draft_end_tolerance: float = DEFAULT_END_TOLERANCE
    prefill: str = "unisparse"

    def __post_init__(self) -> None:
        """Refuse a bad budget, page size, dtype or distance now (ValueError), not mid-file."""
        self.engine_config()
        if self.max_distance is not None:
            DistanceCap(self.max_distance)
        if self.dtype not in (None, "int8", "float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {self.dtype!r}: use bfloat16, float32, float16 or int8")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")

    def engine_config(self, max_context: int | None = None) -> EngineConfig:
        """The engine set-up of these options (one sequence; ``SpeechModel.open_engine`` sizes its
        context for a recording, ``load_speech_model`` reads its device and dtype)."""
        sparse = UniqueConfig(page_size=self.page_size, budget_tokens=self.budget_tokens)
        # a prefill's query block reads at most a decode step's budget of chosen key blocks, so past that
        # a chunk costs the same however long the recording (BENCHMARKS.md, "Flat per-chunk time")
        blocks = UniSparseConfig(max_blocks=max(1, self.budget_tokens // UniSparseConfig.block_size))
        dtype = self.dtype or default_speech_dtype(self.device)
        int8 = dtype == "int8"
        return EngineConfig(attention=self.attention, sparse=sparse, prefill=self.prefill, unisparse=blocks,
                            device=self.device, dtype="float32" if int8 else dtype, int8_weights=int8,
                            max_context=max_context, max_batch=1, extend_context=True)

    def draft_decoding(self) -> DraftDecoding:
        """How a session decodes against each chunk's draft."""
        return DraftDecoding(self.draft_gate, self.draft_tolerance, self.draft_end_tolerance)

    def distance_cap(self) -> DistanceCap | None:
        """The distance ceiling of a session (None: keys keep their own positions)."""
        return None if self.max_distance is None else DistanceCap(self.max_distance)


class Transcriber:
    """Transcribes whole recordings with one speech model (loaded once); each recording gets its own
    engine, sized for its duration. It owns encoding: a file's speech chunks are encoded ahead in
    batches of ``ENCODER_BATCH[device]``. Safe to reuse across files. ``detector``: where speech is
    (default: the shared Silero one)."""

    def __init__(self, model: SpeechModel, options: TranscribeOptions,
                 detector: FrameSpeechDetector | None = None) -> None:
        self.model, self.options = model, options
        self.detector = detector or shared_detector()

    def open_session(self, seconds: float) -> LongformSession:
        """A session for a ``seconds``-long recording, in an engine whose cache holds its whole context."""
        options = self.options
        engine = self.model.open_engine(options.engine_config(), expected_seconds=seconds)
        return self.model.open_session(engine, options.loop, options.distance_cap(), options.draft_decoding())

    def transcribe(self, audio: np.ndarray, progress: bool = False, name: str = "") -> Transcript:
        """audio: [samples] float32 mono 16 kHz."""
        if audio.size == 0:
            raise AudioError("the audio is empty (0 samples); nothing to transcribe")
        started = time.perf_counter()
        duration = len(audio) / SAMPLE_RATE
        regions = segment(audio, self.detector.probabilities(audio), self.options.segmenter)
        model = self.model
        segments, skipped = [], []
        # counted in samples, so the regions' updates add up to exactly the total (seconds rounded for the
        # total overflowed it: "clamping frac", ETA "<-00:00"); unit_scale shows the counts as seconds
        bar = tqdm(total=len(audio), unit_scale=1 / SAMPLE_RATE, desc=name or "transcribing",
                   disable=not progress,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]")
        speech = [r for r in regions if r.kind == "speech"]
        encoded: dict[int, EncodedChunk] = {}  # speech region index -> embeddings (and draft), a batch ahead
        speech_index = 0
        encoder_batch = ENCODER_BATCH[model.projector.up.weight.device.type]
        chunk_seconds = []  # (audio start, seconds of LLM work) per decoded chunk
        with self.open_session(duration) as session:
            for region in regions:
                start_s, end_s = region.start / SAMPLE_RATE, region.end / SAMPLE_RATE
                if region.kind == "silence":
                    skipped.append((start_s, end_s, "silence"))
                else:
                    if speech_index not in encoded:
                        chunks = [
                            audio[r.start : r.end]
                            for r in speech[speech_index : speech_index + encoder_batch]
                        ]
                        search = self.options.draft_decoding().search()
                        encoded = dict(enumerate(model.encode_chunks(chunks, search), start=speech_index))
                    chunk_started = time.perf_counter()
                    piece = session.transcribe_chunk(audio[region.start : region.end], start_s, SAMPLE_RATE,
                                                     encoded=encoded.pop(speech_index))
                    chunk_seconds.append((round(start_s, 3), round(time.perf_counter() - chunk_started, 4)))
                    speech_index += 1
                    if piece is None:
                        skipped.append((start_s, end_s, "no speech recognised"))
                    else:
                        segments.append(piece)
                bar.update(region.end - region.start)
            bar.close()
            elapsed = time.perf_counter() - started
            stats = TranscriptStats(
                duration=round(duration, 3), seconds=round(elapsed, 3), rtf=elapsed / duration,
                kv_pages_read=session.kv_read_share, attention=self.options.attention,
                budget_tokens=self.options.budget_tokens, chunks=session.stats.chunks,
                loops_cut=session.stats.loops_cut, budget_stops=session.stats.budget_stops,
                context_tokens=session.seq.num_tokens, text_tokens=session.stats.text_tokens,
                max_distance=self.options.max_distance,
                drafts=model.drafts, draft_tokens_accepted=session.stats.accepted_tokens,
                draft_tokens=session.stats.draft_tokens, prefill=self.options.prefill,
                chunk_seconds=chunk_seconds)
        return Transcript(segments, duration, skipped, stats)


def load_transcriber(
    model_dir: str | None = None, options: TranscribeOptions = TranscribeOptions(), parallel_calls: int = 1
) -> Transcriber:
    """A transcriber for a speech model directory (default: the embedded model); sets torch's CPU
    threads to ``options.threads`` (default: one per physical core) first, as the encoder takes them.
    parallel_calls: model calls that may run at once from different threads, each on ``options.threads``
    (the live server's worker threads; ``AudioEncoder.load``)."""
    torch.set_num_threads(options.threads or default_threads())
    return Transcriber(load_speech_model(model_dir, options.engine_config(), options.drafts, parallel_calls),
                       options)
