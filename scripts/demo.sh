#!/usr/bin/env bash
# Set up and run the main job on the embedded default model: long-form transcription.
#   bash scripts/demo.sh                 # the shared real-speech dev set, if it sits beside the checkout
#   bash scripts/demo.sh talk.mp3 ...    # your own recordings
# Writes txt/json/srt/vtt per file into outputs/demo/, and for the dev set a WER summary.
set -euo pipefail
FILES=()
for arg in "$@"; do  # paths as given from the caller's directory, before the cd below
    if [ -e "$arg" ]; then FILES+=("$(realpath -- "$arg")"); else FILES+=("$arg"); fi
done
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
DEV=../shared/data/speech_dev
OUT=$(pwd)/outputs/demo
if [ $# -gt 0 ]; then
    asr transcribe "${FILES[@]}" --format all --output outputs/demo
    echo "transcripts (txt, json, srt, vtt per file): $OUT/"
elif [ -f "$DEV/manifest.jsonl" ]; then
    # three files through the command line, then the whole set as ~5-minute recordings, each one
    # growing decoder context, scored against the references
    asr transcribe "$DEV"/audio/jfk-*.flac "$DEV"/audio/ljspeech-LJ001-000[12].* --format all --output outputs/demo
    rm -rf outputs/demo/wer-longform  # a fresh score of this checkout's model (wer.py would resume)
    python -m eval.wer "$DEV/manifest.jsonl" --longform 5 --attention unique --budget 1024 --output outputs/demo/wer-longform
    echo "transcripts (txt, json, srt, vtt per file): $OUT/"
    echo "WER of the dev set as ~5-minute recordings: $OUT/wer-longform/summary.json (per utterance: utterances.csv)"
else
    echo "no dev set at $(realpath -m "$DEV") (the shared data must sit beside the checkout);" \
         "give audio files to transcribe: bash scripts/demo.sh FILE..." >&2
    exit 2
fi
