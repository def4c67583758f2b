#!/usr/bin/env bash
# Soft-mask fine-tuning of SmolLM2-135M on a GPU, then long-context QA of the base and the trained
# model at budgets 1/8 and 1/16 (dense, unique, quest). Run from the repository root:
#   bash training/softmask_gpu.sh BASE_DIR CORPUS_DIR OUT_DIR [MINUTES] [NPROC]
# BASE_DIR: the embedded model as a Hugging Face directory (asr.llm.embedded; training/gpu_stage.sh
# llm makes it there); CORPUS_DIR: built here by `python -m training.text_corpus --out DIR` (17 MB);
# MINUTES of training (default 10); NPROC GPUs through torchrun (default 1). Past the 10-minute call
# limit run it with training/gpu_background.sh. An adapter already in OUT_DIR/adapter is continued
# (--resume: with its trainer_state.pt where that is there too, else from its weights with a fresh
# optimizer, e.g. a copy of the shipped asr/llm/weights/qa). Writes OUT_DIR/adapter (LoRA adapter,
# eval.jsonl), OUT_DIR/longqa-base and OUT_DIR/longqa-trained (longqa.json, longqa.md) and OUT_DIR/*.log.
set -euo pipefail
base=$1 corpus=$2 out=$3 minutes=${4:-10} nproc=${5:-1}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
resume=()
[ -f "$out/adapter/lora_adapter.json" ] && resume=(--resume)
python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())"
# seq 8192 = SmolLM2-135M's trained context; budgets 512 and 1024 = 1/16 and 1/8 of it. Query blocks of
# 2048: the blockwise op is launch-bound at 256 (H100: 6 s a step at 8192 x 2, 3.6 s at 4096 x 1)
python3 -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m training.softmask \
    --base "$base" --corpus "$corpus" --out "$out/adapter" --time-limit "$minutes" --steps 100000 \
    --seq-len 8192 --batch 2 --query-block 2048 --budgets 512 1024 --lora-rank 16 --lr 3e-4 --t-start 30 --t-end 0.5 \
    --anneal 0.7 --eval-every 200 --eval-docs 8 --probes 32 --save-every 200 --checkpointing "${resume[@]}" \
    2>&1 | tee "$out/train.log"
for model in base trained; do
    path=$base; [ "$model" = trained ] && path=$out/adapter
    python3 -m eval.longqa --model "$path" --contexts 2048 4096 7680 --samples 3 --budgets 8 16 \
        --methods unique quest --batch 8 --output "$out/longqa-$model" 2>&1 | tee "$out/longqa-$model.log"
done
