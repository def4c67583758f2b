"""Batch WER/CER of a transcription system over a manifest, resumable, shardable with torchrun.

    python -m eval.wer ../shared/data/speech_dev/manifest.jsonl --output outputs/wer-dev
    python -m eval.wer MANIFEST --system faster-whisper --output outputs/wer-fw     # outside anchor
    python -m eval.wer MANIFEST --longform 5 --attention unique --budget 512       # long recordings
    torchrun --nproc-per-node 4 -m eval.wer MANIFEST --device cuda --output DIR   # one shard a rank

Manifest lines: {"id", "audio" (relative to the manifest), "text"}. Writes per-utterance
``utterances.csv`` (appended as it goes: a rerun skips finished ids) and ``summary.json`` with
top-level ``wer`` and ``cer`` (fractions over normalised text) and the real-time factor.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr.corpus import read_manifest
from asr.errors import AsrError
from asr.normalize import error_rates
from asr.speech.arguments import add_transcribe_arguments, options_from_args
from asr.speech.audio import SAMPLE_RATE

LONGFORM_GAP_S = 0.5  # silence between concatenated utterances
FIELDS = ["id", "duration", "seconds", "wer", "cer", "reference", "hypothesis"]


@dataclass
class Item:
    """One scored recording: a manifest utterance or a concatenation of consecutive ones."""

    id: str
    audio: list[Path]
    text: str

    def load(self) -> np.ndarray:
        from asr.speech.audio import load_audio

        gap = np.zeros(int(LONGFORM_GAP_S * SAMPLE_RATE), dtype=np.float32)
        parts = []
        for path in self.audio:
            parts += [load_audio(str(path), SAMPLE_RATE), gap]
        return np.concatenate(parts[:-1])


def build_items(manifest: Path, longform_minutes: float, limit: int | None) -> list[Item]:
    """Utterances in manifest order; with longform, consecutive ones joined into ~M-minute recordings."""
    rows = read_manifest(manifest)[: limit or None]
    ids = [json.loads(line)["id"] for line in manifest.read_text().splitlines() if line.strip()][: len(rows)]
    if not longform_minutes:
        return [Item(i, [r.audio], r.text) for i, r in zip(ids, rows)]
    items, current, seconds = [], [], 0.0
    for utt_id, row in zip(ids, rows):
        current.append((utt_id, row))
        # A manifest without durations would otherwise join everything into one recording.
        seconds += (row.duration or sf.info(str(row.audio)).duration) + LONGFORM_GAP_S
        if seconds >= longform_minutes * 60:
            items.append(current)
            current, seconds = [], 0.0
    if current:
        items.append(current)
    return [
        Item(
            f"{group[0][0]}..{group[-1][0]}", [r.audio for _, r in group], " ".join(r.text for _, r in group)
        )
        for group in items
    ]


def load_system(args):
    """A function audio [samples] float32 16 kHz -> transcript text. ``args.device`` "cuda" means this
    rank's GPU (``cuda:$LOCAL_RANK``) under torchrun."""
    if args.device == "cuda":
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if args.system == "speech-llm":
        from asr.speech.pipeline import load_transcriber

        options = options_from_args(args)
        transcriber = load_transcriber(args.model, options)
        return lambda audio: transcriber.transcribe(audio).text
    if args.system == "faster-whisper":
        from faster_whisper import WhisperModel

        from asr.speech.whisper_weights import faster_whisper_dir

        on_cpu = args.device == "cpu"
        model = WhisperModel(str(faster_whisper_dir()), device="cpu" if on_cpu else "cuda",
                             device_index=0 if on_cpu else torch_device_index(args.device),
                             compute_type="int8" if on_cpu else "float16", cpu_threads=os.cpu_count() or 2)
        return lambda audio: " ".join(
            s.text.strip() for s in model.transcribe(audio, language="en", beam_size=5)[0]
        )
    if args.system == "whisper-hf":
        from asr.speech.whisper_reference import WhisperReference

        reference = WhisperReference(args.model, device=args.device)
        return reference.transcribe
    raise AsrError(f"unknown system {args.system!r}")


def torch_device_index(device: str) -> int:
    """"cuda:1" -> 1, "cuda" -> 0."""
    return int(device.partition(":")[2] or 0)


def shard() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def finished_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with path.open() as f:
        return {row["id"] for row in csv.DictReader(f)}


def drop_partial_row(path: Path) -> None:
    """Cut a row a killed run left half-written (no closing newline), so appending starts a clean row."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def score(reference: str, hypothesis: str) -> tuple[float | str, float | str]:
    """(wer, cer) of one item, blank when its normalised reference is empty (nothing to score)."""
    try:
        wer, cer = error_rates([reference], [hypothesis])
    except ValueError:
        return "", ""
    return round(wer, 4), round(cer, 4)


def run_shard(items: list[Item], transcribe, path: Path, desc: str) -> None:
    """Transcribe and score the items whose id ``path`` lacks, appending one CSV row each."""
    drop_partial_row(path)
    done = finished_ids(path)
    todo = [item for item in items if item.id not in done]
    new_file = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new_file:
            writer.writeheader()
        for item in tqdm(todo, desc=desc):
            audio = item.load()
            start = time.perf_counter()
            hypothesis = transcribe(audio)
            seconds = time.perf_counter() - start
            wer, cer = score(item.text, hypothesis)
            writer.writerow(
                {
                    "id": item.id,
                    "duration": round(len(audio) / SAMPLE_RATE, 3),
                    "seconds": round(seconds, 3),
                    "wer": wer,
                    "cer": cer,
                    "reference": item.text,
                    "hypothesis": hypothesis,
                }
            )
            f.flush()


def run_config(args) -> dict:
    """What makes two runs' rows comparable: the system and its settings, the model's weights (a
    digest of the speech adapter, so a retrained embedded model is a new run), the manifest."""
    config = {"system": args.system, "attention": args.attention, "budget": args.budget,
              "max_distance": args.max_distance, "dtype": args.dtype, "longform_minutes": args.longform,
              "device": args.device, "manifest": str(args.manifest), "drafts": args.drafts,
              "draft_gate": args.draft_gate, "draft_tolerance": args.draft_tolerance,
              "draft_end_tolerance": args.draft_end_tolerance}
    if args.system == "speech-llm":
        from asr.speech.encoder import CT2_COMPUTE_TYPE
        from asr.speech.model import EMBEDDED_ADAPTER

        config["encoder_ct2_compute_type"] = CT2_COMPUTE_TYPE if args.device == "cpu" else None

        adapter = Path(args.model) if args.model else EMBEDDED_ADAPTER
        digest = hashlib.sha256()
        for name in ("adapter.json", "adapter.safetensors"):
            if (adapter / name).is_file():
                digest.update((adapter / name).read_bytes())
        config["model"] = f"{adapter.resolve()} sha256:{digest.hexdigest()[:16]}"
    return config


def claim_output(out: Path, config: dict) -> None:
    """Resume only a run of the same configuration: ``out/run.json`` records it; another one is an error."""
    record = out / "run.json"
    if record.exists():
        previous = json.loads(record.read_text())
        if previous != config:
            changed = ", ".join(
                f"{k}: {previous.get(k)} -> {config.get(k)}"
                for k in sorted(set(previous) | set(config))
                if previous.get(k) != config.get(k)
            )
            raise SystemExit(f"wer.py: {out} holds results of another run ({changed}); give another --output "
                             "or delete it to start over")
    elif any(out.glob("utterances.rank*.csv")):
        raise SystemExit(f"wer.py: {out} holds results of a run that did not record its configuration; give "
                         "another --output or delete it to start over")
    else:
        record.write_text(json.dumps(config, indent=1))


def merge(out: Path, world: int, items: list[Item], args) -> dict:
    """Join the ranks' CSVs into ``utterances.csv`` (item order) and write ``summary.json``."""
    rows = {}
    for rank in range(world):
        with (out / f"utterances.rank{rank}.csv").open() as f:
            rows.update({row["id"]: row for row in csv.DictReader(f)})
    ordered = [rows[item.id] for item in items if item.id in rows]
    with (out / "utterances.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(ordered)
    wer, cer = error_rates([r["reference"] for r in ordered], [r["hypothesis"] for r in ordered])
    audio_s = sum(float(r["duration"]) for r in ordered)
    compute_s = sum(float(r["seconds"]) for r in ordered)
    summary = {
        "wer": wer,
        "cer": cer,
        "rtf": compute_s / audio_s,
        "items": len(ordered),
        "audio_seconds": audio_s,
        **run_config(args),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--output", type=Path, default=Path("outputs/wer"))
    parser.add_argument(
        "--system", default="speech-llm", choices=["speech-llm", "faster-whisper", "whisper-hf"]
    )
    add_transcribe_arguments(parser, device_default="cpu")
    parser.add_argument(
        "--longform", type=float, default=0, help="join consecutive utterances into ~M-minute recordings"
    )
    parser.add_argument("--limit", type=int, help="only the first N manifest lines")
    args = parser.parse_args()

    rank, world = shard()
    items = build_items(args.manifest, args.longform, args.limit)
    args.output.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        claim_output(args.output, run_config(args))
    transcribe = load_system(args)
    run_shard(items[rank::world], transcribe, args.output / f"utterances.rank{rank}.csv", f"wer rank {rank}")
    if rank != 0:
        return
    while not all(
        (args.output / f"utterances.rank{r}.csv").exists()
        and len(finished_ids(args.output / f"utterances.rank{r}.csv")) == len(items[r::world])
        for r in range(world)
    ):
        time.sleep(2)  # other ranks still running
    summary = merge(args.output, world, items, args)
    print(f"{summary['system']:<14} {summary['attention']:<7} items {summary['items']:>4}  "
          f"WER {100 * summary['wer']:.2f}%  CER {100 * summary['cer']:.2f}%  RTF {summary['rtf']:.3f}")


if __name__ == "__main__":
    main()
