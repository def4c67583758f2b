#!/usr/bin/env bash
# Set up and run the main job on the embedded default model.
# Until the speech model lands this is the attention-recall evaluation on the CPU (a real run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python eval/recall.py --model embedded --output outputs/recall "$@"
