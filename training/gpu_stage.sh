#!/usr/bin/env bash
# Stage training inputs on a lent GPU machine that receives at most 64 MiB per call: run it once per
# call, back to back, while the machine stays warm (files outside the copied tree survive between
# calls only then). Everything lands in $STAGE (default /tmp/asr).
#   gpu_stage.sh copy DIR      copy DIR's files into $STAGE; install any wheels among them into /tmp/site
#   gpu_stage.sh llm SHA256    join $STAGE/gguf.part*, check the checksum, dequantise into $STAGE/llm
#   gpu_stage.sh tts NAME GLOB unpack the speech shards $STAGE/GLOB into the dataset $STAGE/NAME
#                              (one dataset per generated set: their shards share manifest names)
set -euo pipefail
STAGE=${STAGE:-/tmp/asr}
mkdir -p "$STAGE"
case "$1" in
    copy)
        cp -r "$2"/. "$STAGE"/
        if ls "$STAGE"/*.whl >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$STAGE"/*.whl
        fi
        ls -la "$STAGE" ;;
    llm)
        cat "$STAGE"/gguf.part* > "$STAGE/model.gguf"
        echo "$2  $STAGE/model.gguf" | sha256sum -c -
        PYTHONPATH=/tmp/site:. python3 -c "from pathlib import Path; from asr.llm.embedded import gguf_to_hf_dir; \
gguf_to_hf_dir(Path('$STAGE/model.gguf'), Path('$STAGE/llm'))"
        ls -la "$STAGE/llm" ;;
    tts)
        PYTHONPATH=/tmp/site:. python3 -c "import glob; from pathlib import Path; \
from training.synth.shards import unpack_shards; unpack_shards(sorted(map(Path, glob.glob('$STAGE/$3'))), Path('$STAGE/$2'))"
        wc -l "$STAGE/$2/manifest.jsonl" ;;
    *)
        echo "usage: gpu_stage.sh copy DIR | llm SHA256 | tts NAME GLOB" >&2; exit 2 ;;
esac
