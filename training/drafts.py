"""Decode Whisper's draft of every training utterance once, so ``train_asr --drafts`` need not every step.

    python -m training.drafts MANIFEST... [--variants 4] [--device cpu|cuda] [--batch 16]

For each manifest (or folder holding ``manifest.jsonl``) writes ``<stem>.drafts-<digest>.jsonl``
beside it (``training.draft_cache``): the greedy draft of each utterance's clean audio (variant 0)
and of ``--variants`` seeded augmentations of it. Drafts come from the same ``AudioEncoder`` and
drafters that training and inference use (``asr.speech.draft``): CTranslate2 int8 on the CPU,
transformers in fp16 on CUDA. A rerun appends only what is missing, so a killed run resumes.
Prints one row per manifest (drafts written, audio seconds, seconds taken, audio seconds per
second, and the CPU seconds all its threads took, which a shared machine's load distorts less);
``--report FILE`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from asr.corpus import Utterance, read_corpus
from asr.speech.audio import SAMPLE_RATE
from asr.speech.encoder import AudioEncoder
from training.draft_cache import audio_key, cache_file, read_rows, variant_wave, whisper_digest

log = logging.getLogger(__name__)


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return models[0] if models else "CPU"


def drafter_name(encoder: AudioEncoder) -> str:
    """The drafting backend and its precision, e.g. ``Ct2Drafter/int8`` (recorded in the header)."""
    drafter = encoder.drafter
    precision = getattr(getattr(drafter, "model", None), "compute_type", None)
    if precision is None:
        precision = str(next(drafter.whisper.parameters()).dtype).removeprefix("torch.")
    return f"{type(drafter).__name__}/{precision}"


def open_cache(path: Path, header: dict) -> set[tuple[str, int]]:
    """The (audio key, variant) pairs ``path`` already holds; a new file gets ``header`` as its first
    line, and a torn last line (a killed run) is cut off so appending continues cleanly."""
    if not path.exists():
        path.write_text(json.dumps({"header": header}) + "\n")
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
    return {(row["audio"], row["variant"]) for row in read_rows(path)}


def pending(utterances: list[Utterance], folder: Path, variants: int,
            done: set[tuple[str, int]]) -> list[tuple[Utterance, str, int]]:
    """(utterance, audio key, variant) still to draft, longest audio first (a batch then pads little;
    an utterance's variants stay together, so its audio loads once per batch)."""
    keys = [audio_key(utt.audio, folder) for utt in utterances]
    jobs = [(utt, key, variant) for utt, key in zip(utterances, keys) for variant in range(variants + 1)
            if (key, variant) not in done]
    return sorted(jobs, key=lambda job: (-job[0].duration, job[1], job[2]))


def precompute(source: str | Path, encoder: AudioEncoder, digest: str, variants: int, batch: int) -> dict:
    """Draft what ``source``'s cache lacks; returns the manifest's row of the summary table."""
    path = cache_file(source, digest)
    header = {"whisper": digest, "backend": drafter_name(encoder), "variants": variants}
    jobs = pending(read_corpus(source), path.parent, variants, open_cache(path, header))
    started, cpu_started, seconds = time.perf_counter(), time.process_time(), 0.0
    with path.open("a") as sink, tqdm(total=len(jobs), unit="draft", desc=path.name, mininterval=10) as bar:
        for start in range(0, len(jobs), batch):
            group = jobs[start : start + batch]
            audio = {}  # an utterance's variants share one load
            for utt, key, _ in group:
                if key not in audio:
                    audio[key] = utt.load()
            waves = [variant_wave(audio[key], key, variant) for _, key, variant in group]
            for (_, key, variant), draft in zip(group, encoder.draft(waves, batch_size=batch)):
                sink.write(json.dumps({"audio": key, "variant": variant, "draft": draft.text}) + "\n")
            sink.flush()
            seconds += sum(len(wave) for wave in waves) / SAMPLE_RATE
            bar.update(len(group))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"cache": str(path), "drafts": len(jobs), "audio_seconds": round(seconds, 1),
            "seconds": round(elapsed, 1), "audio_per_second": round(seconds / elapsed, 2) if jobs else None,
            "cpu_seconds": round(cpu, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifests", nargs="+", help="manifest.jsonl files or folders holding one")
    parser.add_argument("--whisper", help="Whisper directory (default: the embedded Whisper base)")
    parser.add_argument("--variants", type=int, default=4,
                        help="seeded augmentations drafted per utterance besides its clean audio "
                        "(train_asr draws one of them for an augmented chunk; 0: clean audio only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16, help="chunks per Whisper batch")
    parser.add_argument("--report", type=Path, help="also write the summary table here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    digest = whisper_digest(args.whisper)
    encoder = AudioEncoder.load(args.whisper, device=args.device, drafts=True)
    rows = [precompute(source, encoder, digest, args.variants, args.batch) for source in args.manifests]
    print(f"{'cache':60} {'drafts':>7} {'audio s':>9} {'seconds':>8} {'audio s/s':>9} {'CPU s':>7}")
    for row in rows:
        print(f"{row['cache'][-60:]:60} {row['drafts']:7d} {row['audio_seconds']:9.1f} {row['seconds']:8.1f} "
              f"{row['audio_per_second'] or 0:9.2f} {row['cpu_seconds']:7.1f}")
    if args.report:
        args.report.write_text(json.dumps(
            {"command": "python -m training.drafts " + " ".join(sys.argv[1:] if argv is None else argv),
             "whisper": digest, "device": device_name(args.device),
             "backend": drafter_name(encoder), "threads": torch.get_num_threads(),
             "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
