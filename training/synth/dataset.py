"""Generate a synthetic speech dataset: plans in, ogg files and ``manifest.jsonl`` out, in parallel.

Rows are appended to the manifest as utterances finish (in index order), so an interrupted run
leaves a usable dataset and a rerun with the same seed resumes after the last written index.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from training.synth.manifest import MANIFEST_NAME, ManifestRow, read_manifest
from training.synth.plan import Planner, UtterancePlan
from training.synth.synthesize import SAMPLE_RATE, SynthesisError, synthesize
from training.synth.text_corpus import build_corpus
from training.synth.voices import available_voices

log = logging.getLogger(__name__)

MIN_SECONDS, MAX_SECONDS = 2.0, 25.0
"""Utterances outside this range are dropped: shorter ones carry little text, longer ones exceed a
training chunk."""
BATCH = 64
"""Plans handed to the pool at a time; bounds memory and the overshoot past the target hours."""
FILES_PER_FOLDER = 1000


@dataclass(frozen=True)
class GenerateConfig:
    """out: dataset directory; hours: audio to produce; seed: sampler seed; workers: processes;
    corpus_cache: cleaned-corpus cache file (rebuilt when missing); codec: ``vorbis`` (~20 MB/h) or
    ``opus`` (~9 MB/h: cheaper to carry to a GPU machine 64 MiB at a time)."""

    out: Path
    hours: float
    seed: int = 0
    workers: int = 2
    corpus_cache: Path = Path(".cache/synth_corpus.jsonl")
    codec: str = "vorbis"


def utterance_id(seed: int, index: int) -> str:
    return f"s{seed}-{index:07d}"


CODECS = {"vorbis": dict(subtype="VORBIS"), "opus": dict(subtype="OPUS", compression_level=0.95)}


def render(job: tuple[Path, int, UtterancePlan, str]) -> ManifestRow | None:
    """Synthesize one plan and write its ogg; None when the engine fails or the length is out of range."""
    out, seed, plan, codec = job
    try:
        samples = synthesize(plan.text, plan.voice, plan.style)
    except (SynthesisError, RuntimeError, OSError, ValueError) as error:  # RuntimeError: libsndfile
        log.warning("utterance %d skipped: %s", plan.index, error)
        return None
    duration = len(samples) / SAMPLE_RATE
    if not MIN_SECONDS <= duration <= MAX_SECONDS:
        return None
    uid = utterance_id(seed, plan.index)
    relative = Path("audio") / f"{plan.index // FILES_PER_FOLDER:04d}" / f"{uid}.ogg"
    (out / relative).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out / relative), samples, SAMPLE_RATE, format="OGG", **CODECS[codec])
    return ManifestRow(uid, relative.as_posix(), plan.text, plan.voice.key, round(duration, 3),
                       asdict(plan.style), plan.source)


def _resume_point(manifest: Path) -> tuple[int, float]:
    """(next index, seconds already written) from an existing manifest."""
    if not manifest.exists():
        return 0, 0.0
    rows = read_manifest(manifest)
    if not rows:
        return 0, 0.0
    return int(rows[-1].id.rsplit("-", 1)[1]) + 1, sum(r.duration for r in rows)


def generate(config: GenerateConfig) -> Path:
    """Write utterances until ``config.hours`` of audio exist; returns the manifest path."""
    config.out.mkdir(parents=True, exist_ok=True)
    manifest = config.out / MANIFEST_NAME
    planner = Planner(build_corpus(config.corpus_cache), available_voices(), config.seed)
    index, seconds = _resume_point(manifest)
    target = config.hours * 3600
    progress = tqdm(total=round(target), initial=round(seconds), unit="s audio", desc="synthesizing")
    with multiprocessing.get_context("spawn").Pool(config.workers) as pool, manifest.open("a") as sink:
        while seconds < target:
            jobs = [
                (config.out, config.seed, planner.plan(i), config.codec) for i in range(index, index + BATCH)
            ]
            index += BATCH
            for row in pool.imap(render, jobs):
                if row is None:
                    continue
                if seconds >= target:
                    (config.out / row.audio).unlink()
                    continue
                sink.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
                sink.flush()
                seconds += row.duration
                progress.update(round(row.duration))
    progress.close()
    log.info("%s: %.2f h of audio", manifest, seconds / 3600)
    return manifest
