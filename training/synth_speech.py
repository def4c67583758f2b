"""Generate synthetic English speech for training, or pack/unpack it into transport shards.

    python -m training.synth_speech --out .cache/tts_v1 --hours 3 --seed 0
    python -m training.synth_speech --out .cache/tts_v1 --pack-mb 45          # shards in OUT/shards
    python -m training.synth_speech --out .cache/tts_v1 --unpack 'shards/*.tar'
    python -m training.synth_speech --out .cache/tts_v1 --benchmark           # RTF per engine family

Writes OUT/audio/NNNN/<id>.ogg (16 kHz mono Vorbis) and OUT/manifest.jsonl with
{"id", "audio", "text", "voice", "duration", "style", "source"} per line. Rerunning with the same
seed resumes after the last written utterance.
"""

from __future__ import annotations

import argparse
import glob
import logging
from pathlib import Path

from training.synth.benchmark import benchmark_families
from training.synth.dataset import GenerateConfig, generate
from training.synth.shards import pack_shards, unpack_shards
from training.synth.text_corpus import build_corpus
from training.synth.voices import available_voices


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset directory")
    parser.add_argument("--hours", type=float, default=0.0, help="hours of audio to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--codec", choices=["vorbis", "opus"], default="vorbis",
                        help="Ogg audio codec: opus is about half the bytes (for carrying data to a GPU)")
    parser.add_argument("--corpus-cache", type=Path, default=Path(".cache/synth_corpus.jsonl"))
    parser.add_argument(
        "--pack-mb", type=float, default=0.0, help="after generating, pack into tar shards of this size"
    )
    parser.add_argument("--shard-dir", type=Path, help="where shards go (default OUT/shards)")
    parser.add_argument("--unpack", help="glob of shard tars to extract into OUT")
    parser.add_argument("--benchmark", action="store_true", help="print synthesis speed per engine family")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.benchmark:
        print(f"{'family':10} {'voices':>6} {'audio s':>8} {'compute s':>9} {'RTF':>6}")
        for speed in benchmark_families(build_corpus(args.corpus_cache), available_voices()):
            print(
                f"{speed.family:10} {speed.voices:6d} {speed.audio_seconds:8.1f} "
                f"{speed.compute_seconds:9.2f} {speed.rtf:6.3f}"
            )
        return
    if args.unpack:
        print(unpack_shards([Path(p) for p in glob.glob(args.unpack)], args.out))
        return
    if args.hours > 0:
        generate(GenerateConfig(args.out, args.hours, args.seed, args.workers, args.corpus_cache, args.codec))
    if args.pack_mb > 0:
        for shard in pack_shards(args.out, args.shard_dir or args.out / "shards", args.pack_mb):
            print(shard, f"{shard.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
