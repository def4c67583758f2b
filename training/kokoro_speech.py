"""Generate natural multi-speaker English training speech with Kokoro-82M on the CPU or a GPU.

    python -m training.kokoro_speech --out /work/data/kokoro_v1 --hours 40 --seed 11 --workers 2
    python -m training.kokoro_speech --out /tmp/asr/kokoro --hours 18 --seed 21 --workers 8 --device cuda

Each utterance reads 1-4 corpus sentences (training/synth/text_corpus.py) with a random speaker:
one Kokoro voice or a Dirichlet-weighted mix of 2-3, at speed 0.8-1.25. Writes
OUT/audio/NNNN/<id>.ogg (16 kHz mono Opus; --codec flac for FLAC) and appends
{"id", "audio", "text", "voice", "duration", "style", "source"} rows to OUT/manifest.jsonl
("voice" is "kokoro/<speaker>", e.g. "kokoro/bf_emma.62+bf_lily.38"). Rerunning with the same
seed resumes after the last row. Needs training/setup_tts.sh (kokoro-onnx, model parts, voices).
--device cuda runs the dequantized float32 graph (training/synth/kokoro_float.py, written beside
--model once) on onnxruntime-gpu's CUDA provider, each worker process its own session on the GPU;
it stops with an error when the session does not get the CUDA provider.

Validation speech that no training run has read (held-out text, a seed of its own):

    python -m training.kokoro_speech --out /work/data/kokoro_heldout --hours 0.165 --seed 2126 --heldout-text
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.synth.kokoro_dataset import CODECS, KokoroConfig, generate
from training.synth.kokoro_session import DEVICES


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset directory")
    parser.add_argument("--hours", type=float, required=True, help="hours of audio to reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="stop after this many minutes even short of --hours "
                        "(0: no limit; a rerun continues)")
    parser.add_argument("--workers", type=int, default=2, help="processes, one onnxruntime thread each")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cuda: the float32 graph on onnxruntime-gpu's CUDA provider "
                        "(workers share the GPU)")
    parser.add_argument("--codec", choices=sorted(CODECS), default="opus")
    parser.add_argument(
        "--voice-dir", type=Path, default=KokoroConfig.voice_dir, help="kokoro-js voices/*.bin"
    )
    parser.add_argument("--model", type=Path, default=KokoroConfig.model, help="Kokoro v1.0 int8 ONNX file")
    parser.add_argument("--corpus-cache", type=Path, default=KokoroConfig.corpus_cache)
    parser.add_argument("--heldout-text", action="store_true",
                        help="read Debian package descriptions the training corpus lacks (validation speech)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    generate(KokoroConfig(args.out, args.hours, args.seed, args.workers, args.voice_dir, args.model,
                          args.corpus_cache, args.codec, args.heldout_text, args.device, args.minutes))


if __name__ == "__main__":
    main()
