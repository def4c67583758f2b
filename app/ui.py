"""``asr ui``: a Gradio app with two tabs, transcription (upload or record) and long-document QA.

Thin: it checks inputs against the limits, calls the transcriber, the writers and ``asr.llm.qa``,
and formats what they return. Models load once (the speech model at start, the QA model on first use).
"""

from __future__ import annotations

import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from asr.errors import AsrError
from asr.speech.audio import SAMPLE_RATE
from asr.transcript import TranscriptStats
from asr.writers import WRITERS, format_timestamp, get_writer

QA_MODEL_NOTE = (
    "The embedded 135M model is small: its answers are often wrong or repeat themselves (repetition "
    "is cut). Start `asr ui --qa-model DIR` with a larger chat model (Hugging Face directory or GGUF) "
    "for useful answers."
)


@dataclass(frozen=True)
class UiLimits:
    """max_upload_mb: largest audio or document upload; max_audio_s: longest recording transcribed
    (a 2-core CPU runs at ~0.3-0.8 x real time); max_answer_tokens: longest QA answer."""

    max_upload_mb: int = 200
    max_audio_s: float = 1800.0
    max_answer_tokens: int = 512


class UiBackend:
    """The models behind the app: ``transcribe(path, attention, budget)`` and ``answer(...)`` (a stream)."""

    def __init__(
        self,
        speech_model,
        qa_model: str | None = None,
        device: str | None = None,
        limits: UiLimits = UiLimits(),
    ) -> None:
        self.speech_model, self.qa_model, self.device, self.limits = speech_model, qa_model, device, limits
        self._qa_engines: dict = {}
        self._lock = threading.Lock()  # one model call at a time (the CPU is already busy with one)

    @classmethod
    def load(
        cls,
        model_dir: str | None = None,
        qa_model: str | None = None,
        device: str | None = None,
        limits: UiLimits = UiLimits(),
    ) -> UiBackend:
        from asr.speech.pipeline import TranscribeOptions, load_transcriber

        return cls(
            load_transcriber(model_dir, TranscribeOptions(device=device)).model, qa_model, device, limits
        )

    def transcriber(self, attention: str, budget: int):
        from asr.speech.pipeline import TranscribeOptions, Transcriber

        options = TranscribeOptions(attention=attention, budget_tokens=int(budget), device=self.device)
        return Transcriber(self.speech_model, options)  # each recording opens its own engine from the options

    def check_upload(self, path: str, what: str) -> None:
        size = Path(path).stat().st_size
        if size > self.limits.max_upload_mb * 1024 * 1024:
            raise gr.Error(
                f"the {what} is {size / 2**20:.0f} MB, above the {self.limits.max_upload_mb} MB limit; "
                f"cut it (or raise --max-upload-mb)"
            )

    def transcribe(self, path: str, attention: str, budget: int):
        from asr.speech.audio import load_audio

        self.check_upload(path, "recording")
        try:
            audio = load_audio(path)
        except AsrError as error:
            raise gr.Error(str(error)) from None
        seconds = len(audio) / SAMPLE_RATE
        if seconds > self.limits.max_audio_s:
            raise gr.Error(
                f"the recording is {seconds / 60:.1f} minutes long, above the "
                f"{self.limits.max_audio_s / 60:g}-minute limit here; cut it (or raise --max-audio-minutes)"
            )
        with self._lock:
            return self.transcriber(attention, budget).transcribe(audio, progress=True, name=Path(path).name)

    def qa_engine(self, attention: str, budget: int):
        from asr.attention import UniqueConfig
        from asr.llm.config import EngineConfig
        from asr.llm.embedded import qa_adapter_dir
        from asr.llm.engine import LLMEngine

        if "engine" not in self._qa_engines:
            config = EngineConfig(attention="dense", device=self.device, max_batch=1, cuda_graphs=False)
            self._qa_engines["engine"] = LLMEngine.from_pretrained(
                self.qa_model or qa_adapter_dir(), config
            )
        engine = self._qa_engines["engine"]
        engine.set_attention(
            attention, UniqueConfig(page_size=engine.cache.page_size, budget_tokens=int(budget))
        )
        return engine

    def answer(self, document: str, question: str, attention: str, budget: int, max_tokens: int):
        """Yields the answer so far as it grows; the last value is the final answer."""
        from app.commands.qa import qa_loop_start
        from asr.llm.config import SamplingParams
        from asr.llm.qa import answer

        pieces: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            try:
                with self._lock:
                    engine = self.qa_engine(attention, budget)
                    outcome["text"] = answer(
                        engine,
                        document,
                        question,
                        SamplingParams(max_tokens=min(int(max_tokens), self.limits.max_answer_tokens)),
                        on_text=pieces.put,
                        loop_start=qa_loop_start,
                    )
            except Exception as error:  # handed to the UI thread
                outcome["error"] = error
            finally:
                pieces.put(None)

        threading.Thread(target=work, daemon=True).start()
        text = ""
        while (piece := pieces.get()) is not None:
            text += piece
            yield text
        if "error" in outcome:
            raise gr.Error(str(outcome["error"]))
        yield outcome["text"]


def speed_figures(stats: TranscriptStats) -> str:
    """One line: real-time factor, generated tokens per second, share of KV pages read per decode step."""
    seconds = stats.seconds or float("nan")
    parts = [
        f"real-time factor {stats.rtf:.3f}",
        f"{stats.text_tokens / seconds:.1f} tokens/s",
        f"KV pages read per step {100 * stats.kv_pages_read:.1f}%",
        f"{stats.duration:.1f} s of audio in {seconds:.1f} s ({stats.chunks} chunks, "
        f"{stats.attention} attention)",
    ]
    return " · ".join(parts)


def transcript_outputs(transcript, name: str):
    """(timestamped text, segment rows, download paths, speed figures) of a transcript."""
    lines = [
        f"[{format_timestamp(s.start, '.')} → {format_timestamp(s.end, '.')}] {s.text}"
        for s in transcript.segments
    ]
    rows = [[round(s.start, 2), round(s.end, 2), s.text] for s in transcript.segments]
    folder = Path(tempfile.mkdtemp(prefix="asr-ui-"))
    stem = Path(name).stem or "transcript"
    files = []
    for fmt in WRITERS:
        path = folder / f"{stem}.{fmt}"
        get_writer(fmt)(transcript, path)
        files.append(str(path))
    return "\n".join(lines) or "(no speech found)", rows, files, speed_figures(transcript.stats)


def build_app(backend: UiBackend) -> gr.Blocks:
    limits = backend.limits
    with gr.Blocks(title="asr: speech LLM with UNIQUE sparse decoding") as app:
        gr.Markdown("# asr — long-form transcription with UNIQUE sparse decoding")
        with gr.Tab("Transcribe"):
            gr.Markdown(
                f"Upload or record audio (up to {limits.max_upload_mb} MB and "
                f"{limits.max_audio_s / 60:g} minutes). The whole recording goes through one growing context."
            )
            with gr.Row():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio")
                with gr.Column():
                    attention = gr.Radio(
                        ["unique", "dense"],
                        value="unique",
                        label="Attention",
                        info="unique: top-k KV pages per decode step; dense: every page",
                    )
                    budget = gr.Slider(
                        256, 8192, value=2048, step=256, label="Sparse budget (tokens per step)"
                    )
                    run = gr.Button("Transcribe", variant="primary", elem_id="transcribe-button")
            speed = gr.Markdown(elem_id="speed")
            text = gr.Textbox(label="Transcript", lines=10, elem_id="transcript")
            table = gr.Dataframe(headers=["start (s)", "end (s)", "text"], label="Segments", wrap=True)
            downloads = gr.File(label="Downloads (txt, srt, vtt, json)", file_count="multiple")

            def transcribe(path, attention_choice, budget_tokens, progress=gr.Progress(track_tqdm=True)):
                if not path:
                    raise gr.Error("give a recording first: upload a file or record one")
                transcript = backend.transcribe(path, attention_choice, budget_tokens)
                return transcript_outputs(transcript, path)

            run.click(
                transcribe, [audio, attention, budget], [text, table, downloads, speed], api_name="transcribe"
            )
        with gr.Tab("Ask a document"):
            gr.Markdown(QA_MODEL_NOTE)
            with gr.Row():
                document = gr.Textbox(label="Document (paste)", lines=12)
                upload = gr.File(
                    label="…or upload a UTF-8 text file", file_types=[".txt", ".md"], type="filepath"
                )
            question = gr.Textbox(label="Question")
            with gr.Row():
                qa_attention = gr.Radio(["dense", "unique"], value="dense", label="Attention")
                qa_budget = gr.Slider(256, 8192, value=1024, step=256, label="Sparse budget")
                max_tokens = gr.Slider(
                    16, limits.max_answer_tokens, value=128, step=16, label="Longest answer (tokens)"
                )
            ask = gr.Button("Ask", variant="primary")
            reply = gr.Textbox(label="Answer", lines=6, elem_id="answer")

            def ask_document(pasted, uploaded, asked, attention_choice, budget_tokens, longest):
                from asr.llm.qa import read_document

                if uploaded:
                    backend.check_upload(uploaded, "document")
                    try:
                        pasted = read_document(uploaded, limits.max_upload_mb * 1024 * 1024)
                    except AsrError as error:
                        raise gr.Error(str(error)) from None
                if not (pasted or "").strip() or not (asked or "").strip():
                    raise gr.Error("give a document (paste or upload) and a question")
                yield from backend.answer(pasted, asked, attention_choice, budget_tokens, longest)

            ask.click(
                ask_document,
                [document, upload, question, qa_attention, qa_budget, max_tokens],
                reply,
                api_name="answer",
            )
    return app
