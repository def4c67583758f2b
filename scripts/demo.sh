#!/usr/bin/env bash
# Set up and run the main job on the embedded default model: long-form transcription.
#   bash scripts/demo.sh                 # the shared real-speech dev set, if it sits beside the checkout
#   bash scripts/demo.sh talk.mp3 ...    # your own recordings
# Writes txt/json/srt/vtt per file into outputs/demo/, and for the dev set a WER summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
DEV=../shared/data/speech_dev
if [ $# -gt 0 ]; then
    asr transcribe "$@" --format all --output outputs/demo
elif [ -f "$DEV/manifest.jsonl" ]; then
    # three files through the command line, then the whole set as ~5-minute recordings, each one
    # growing decoder context, scored against the references
    asr transcribe "$DEV"/audio/jfk-*.flac "$DEV"/audio/ljspeech-LJ001-000[12].* --format all --output outputs/demo
    rm -rf outputs/demo/wer-longform  # a fresh score of this checkout's model (wer.py would resume)
    python eval/wer.py "$DEV/manifest.jsonl" --longform 5 --attention unique --budget 1024 --output outputs/demo/wer-longform
else
    echo "give audio files to transcribe: bash scripts/demo.sh FILE..." >&2
    exit 2
fi
