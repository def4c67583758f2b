#!/usr/bin/env bash
# Speech-adapter training data and training on a GPU, in three resumable phases. Run from the
# repository root (past the 10-minute call limit under training/gpu_background.sh):
#   bash training/speech_gpu.sh STAGE OUT [HOURS] [SYNTH_MIN] [DRAFT_MIN] [TRAIN_MIN] [DEVICE]
# STAGE: the inputs training/gpu_stage.sh unpacked there: kokoro/ (kokoro-v1.0.int8.onnx, voices/),
# synth_corpus.jsonl, so762_train/, so762_test100/ and kokoro_heldout/ (manifest.jsonl + audio/),
# whisper-base-ct2/ (the embedded Whisper, found through ASR_CACHE_DIR=STAGE) and llm/ (`gpu_stage.sh
# llm`). OUT: where the Kokoro set, its drafts, the adapter and the logs go (kept between runs).
#   A. Kokoro-82M speech (training.kokoro_speech --device DEVICE, seed 21) until OUT/kokoro holds
#      HOURS (default 18) or SYNTH_MIN (default 7) minutes pass; meanwhile the drafts of
#      speechocean762 train (4 augmented variants each) are made beside it.
#   B. Whisper drafts of the Kokoro set (KOKORO_VARIANTS=1 augmented variant each: ~1-2 epochs fit
#      the time) for at most DRAFT_MIN (default 4) minutes: what is left is drafted per step in training.
#   C. train_asr --drafts on OUT/kokoro + so762 train for TRAIN_MIN (default 9) minutes, continuing
#      OUT/adapter when it holds a checkpoint, else the shipped asr/speech/weights/default; saves every
#      SAVE_EVERY (100) steps, validates on KOKORO_HELDOUT/SO762_TEST (VALIDATE_LIMIT each) at the end;
#      CACHED_ONLY=1 trains only on the utterances whose draft is cached (steps 2-3x faster on an H100).
# A rerun continues every phase where the last one stopped (SYNTH_MIN or DRAFT_MIN 0 skips that phase).
# DEVICE cuda (default) or cpu (a test of the whole chain: int8 Kokoro, CTranslate2 drafts, train_asr
# on the CPU with STEPS=2 BATCH=2 TRAIN_WORKERS=0). The mix: Kokoro speech is native (15% of its
# speakers have an accented main voice) and Whisper's draft of it is mostly right (2.7% WER held out),
# so most of its targets equal the draft; train_asr draws utterances uniformly, so ~10k Kokoro
# utterances (18 h) against so762's 2,500 make about 4 chunks in 5 Kokoro's.
set -euo pipefail
stage=$(realpath "$1") out=$2 hours=${3:-18} synth_min=${4:-7} draft_min=${5:-4} train_min=${6:-9}
device=${7:-cuda}
on_gpu() { [ "$device" = cuda ]; }
kokoro_workers=${KOKORO_WORKERS:-$(on_gpu && echo 14 || echo 1)}
draft_batch=${DRAFT_BATCH:-$(on_gpu && echo 128 || echo 4)}
kokoro_variants=${KOKORO_VARIANTS:-1}
steps=${STEPS:-100000} batch=${BATCH:-24} train_workers=${TRAIN_WORKERS:-8} save_every=${SAVE_EVERY:-100}
# CACHED_ONLY=1: phase C trains only on utterances with a cached draft (only noise chunks drafted per step)
cached_only=${CACHED_ONLY:+--cached-drafts-only}
validate_limit=${VALIDATE_LIMIT:-40}
kokoro_heldout=${KOKORO_HELDOUT:-$stage/kokoro_heldout/heldout70.jsonl}
so762_test=${SO762_TEST:-$stage/so762_test100/manifest.jsonl}
site=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false ASR_CACHE_DIR=${ASR_CACHE_DIR:-$stage}
# the staged wheels (onnxruntime-gpu first) only on the GPU machine: they are built for its Python
site_path=$(on_gpu && echo "$site:" || true)
export PYTHONPATH=$site_path$PWD${PYTHONPATH:+:$PYTHONPATH}
python=${PYTHON:-python3}
mkdir -p "$out"
if on_gpu; then
    "$python" -c "import torch; assert torch.cuda.is_available(), 'no GPU'; \
print(torch.cuda.get_device_name())"
fi

# timeout's exit status 124 (time is up) is the expected end of a time-limited phase
limited() {
    local status=0
    timeout -k 60 -s INT "$1m" "${@:2}" || status=$?
    [ "$status" -eq 0 ] || [ "$status" -eq 124 ]
}
hours_in() {
    "$python" -c "import json, sys; \
print(round(sum(json.loads(line)['duration'] for line in open(sys.argv[1])) / 3600, 3))" "$1"
}

so762_drafts=
if [ "$synth_min" != 0 ]; then
    echo "== A: Kokoro speech to $hours h or $synth_min min ($device, $kokoro_workers workers), $(date +%T)"
    limited "$synth_min" "$python" -m training.drafts "$stage/so762_train" --device "$device" \
        --batch "$draft_batch" --report "$out/drafts_so762.json" > "$out/drafts_so762.log" 2>&1 &
    so762_drafts=$!
    "$python" -m training.kokoro_speech --out "$out/kokoro" --hours "$hours" --minutes "$synth_min" \
        --seed 21 --workers "$kokoro_workers" --device "$device" \
        --model "$stage/kokoro/kokoro-v1.0.int8.onnx" \
        --voice-dir "$stage/kokoro/voices" --corpus-cache "$stage/synth_corpus.jsonl" \
        2>&1 | tee -a "$out/kokoro.log"
    echo "kokoro: $(hours_in "$out/kokoro/manifest.jsonl") h in $out/kokoro"
fi
if [ -n "$so762_drafts" ]; then
    wait "$so762_drafts" || echo "so762 drafts stopped early (exit $?): the rest are drafted per step"
    tail -3 "$out/drafts_so762.log"
fi
if [ "$draft_min" != 0 ]; then
    echo "== B: drafts of the Kokoro set for at most $draft_min min $(date +%T)"
    limited "$draft_min" "$python" -m training.drafts "$out/kokoro" "$stage/so762_train" \
        --device "$device" --variants "$kokoro_variants" --batch "$draft_batch" \
        --report "$out/drafts_kokoro.json" \
        2>&1 | tee -a "$out/drafts_kokoro.log"
fi

echo "== C: train_asr for $train_min min $(date +%T)"
resume=asr/speech/weights/default
[ -f "$out/adapter/adapter.json" ] && resume=$out/adapter
echo "continuing $resume"
"$python" -m training.train_asr --data "$out/kokoro" "$stage/so762_train" --drafts $cached_only --resume "$resume" \
    --out "$out/adapter" --llm "$stage/llm" --time-limit "$train_min" --steps "$steps" --batch "$batch" \
    --workers "$train_workers" --save-every "$save_every" --lr 6e-4 --lora-lr-scale 0.5 \
    --validate "$kokoro_heldout" "$so762_test" --validate-limit "$validate_limit" \
    2>&1 | tee -a "$out/train.log"
