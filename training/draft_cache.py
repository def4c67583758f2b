"""Whisper drafts decoded once per utterance and stored beside its manifest, for ``train_asr --drafts``.

A training chunk's draft is Whisper's greedy transcript of exactly the waveform the LLM hears. Chunks
are augmented (noise, reverb, speed, gain), so a cache holds, per utterance, the draft of its clean
audio (variant 0) and of ``variants`` seeded augmentations of it (1..N): ``variant_wave`` rebuilds
variant v of an utterance bit for bit from (audio key, v) alone, here when drafting and in the
training data stream, which then picks a cached variant instead of drawing a fresh augmentation.

File: ``<manifest stem>.drafts-<whisper digest>.jsonl`` beside the manifest. Its first line is a
header (``{"header": {"whisper": digest, "backend": ...}}``), every other line one draft:
``{"audio": path relative to the cache's folder, "variant": v, "draft": text}``. The digest
fingerprints the Whisper weights, so a cache is never read by a model it was not drafted with.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr.speech.audio import SAMPLE_RATE
from asr.speech.encoder import CHUNK_SAMPLES
from training.synth.augment import augment_waveform

VARIANT_SEED = 20261204
"""Seed of the augmentations behind cached variants (with the audio key and the variant number)."""
DIGEST_CHARS = 16


def whisper_digest(whisper_dir: str | Path | None) -> str:
    """Fingerprint of a Whisper directory's weights (None: the embedded base): the first
    ``DIGEST_CHARS`` hex digits of the SHA-256 of its weight files (``*.safetensors``, else
    ``model.bin``, the CTranslate2 file) in name order."""
    from asr.speech.whisper_weights import faster_whisper_dir

    folder = Path(whisper_dir) if whisper_dir is not None else faster_whisper_dir()
    files = sorted(folder.glob("*.safetensors")) or [folder / "model.bin"]
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as weights:
            while block := weights.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()[:DIGEST_CHARS]


def manifest_file(source: str | Path) -> Path:
    """The manifest that ``asr.corpus.read_corpus(source)`` reads: the file itself, or
    ``manifest.jsonl`` in a folder (for a LibriSpeech tree: the path it would have)."""
    source = Path(source)
    return source if source.is_file() else source / "manifest.jsonl"


def cache_file(source: str | Path, digest: str) -> Path:
    """Where the drafts of ``source``'s utterances by the Whisper of ``digest`` live."""
    manifest = manifest_file(source)
    return manifest.with_name(f"{manifest.stem}.drafts-{digest}.jsonl")


def variant_wave(wave: np.ndarray, key: str, variant: int) -> np.ndarray:
    """Variant ``variant`` of one utterance's waveform [samples] float32 (key: its audio path as the
    cache names it): 0 is the clean audio, others a seeded ``augment_waveform`` of it; cut to the
    encoder's 30 s either way."""
    wave = wave[:CHUNK_SAMPLES]
    if variant == 0:
        return wave
    rng = np.random.default_rng([VARIANT_SEED, zlib.crc32(key.encode()), variant])
    return augment_waveform(wave, SAMPLE_RATE, rng)[:CHUNK_SAMPLES]


def audio_key(audio: Path, cache_folder: Path) -> str:
    """How a cache names an utterance: its audio path relative to the cache's folder (posix), the same
    on every machine the dataset is copied to."""
    return Path(os.path.relpath(Path(audio).absolute(), cache_folder.absolute())).as_posix()


def read_rows(path: Path) -> list[dict]:
    """The draft rows of one cache file (header dropped; so is a torn last line of a killed run)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "header" not in row:
            rows.append(row)
    return rows


@dataclass
class UtteranceDrafts:
    """key: the utterance's audio key (``audio_key``), which seeds its augmented variants;
    by_variant: draft text by variant number (0: clean audio)."""

    key: str
    by_variant: dict[int, str] = field(default_factory=dict)

    def playable(self, augment: bool) -> list[int]:
        """The cached variants training may play, in order: the augmented ones (1..N) when it
        augments, else the clean one (0)."""
        return sorted(variant for variant in self.by_variant if (variant > 0) == augment)


@dataclass
class DraftCache:
    """The drafts of one or more cache files, by absolute audio path."""

    entries: dict[str, UtteranceDrafts] = field(default_factory=dict)

    def add_file(self, path: Path) -> int:
        """Add every draft of the cache file ``path``; returns how many it held."""
        rows = read_rows(path)
        for row in rows:
            audio = str((path.parent / row["audio"]).resolve())
            entry = self.entries.setdefault(audio, UtteranceDrafts(row["audio"]))
            entry.by_variant[row["variant"]] = row["draft"]
        return len(rows)

    @classmethod
    def for_sources(cls, sources: list[str], digest: str) -> DraftCache:
        """The caches of ``sources`` (manifests or folders) drafted by the Whisper of ``digest``; sources
        without one add nothing (their chunks are drafted on the fly)."""
        cache = cls()
        for source in sources:
            path = cache_file(source, digest)
            if path.is_file():
                cache.add_file(path)
        return cache

    def lookup(self, audio: Path) -> UtteranceDrafts | None:
        """The cached drafts of the utterance at ``audio``, or None."""
        return self.entries.get(str(Path(audio).resolve()))

    def __len__(self) -> int:
        """Cached drafts, all variants counted."""
        return sum(len(entry.by_variant) for entry in self.entries.values())
