#!/usr/bin/env bash
# Stage training inputs on a lent GPU machine that receives at most 64 MiB per call. Here, pack
# everything (wheels, the GGUF, the Whisper encoder, speech datasets) into ONE tar split into parts
# that each fit a call; there, append one part per call, back to back while the machine stays warm
# (files outside the copied tree survive between calls only then), and unpack after the last.
# Everything lands in $STAGE (default /tmp/asr).
#   gpu_stage.sh pack OUT MB PATH...  (here) tar PATHs (by their base names, links followed) into
#                                     OUT/p00/part, OUT/p01/part, ... of at most MB megabytes each,
#                                     and write OUT/SHA256 of the whole tar
#   gpu_stage.sh part FILE            (there) append FILE to $STAGE/bundle.tar
#   gpu_stage.sh unpack SHA256        (there) check the joined tar, extract it into $STAGE, install
#                                     the wheels in it into /tmp/site
#   gpu_stage.sh llm SHA256           (there) check $STAGE/model.gguf, dequantise it into $STAGE/llm
#   gpu_stage.sh back DEST PATH...    (there) bring back what was written under PATHs (relative to
#                                     $STAGE) since `unpack`: tarred once into parts of BACK_MB
#                                     (default 15) megabytes, each
#                                     call moves the next 4 (a call brings back at most 64 MB) and
#                                     SHA256 to DEST ($OUT) and prints how many are left
#   gpu_stage.sh join DEST SHA256 PART... (here) join the parts brought back (in the order of their
#                                     names), check them against the file SHA256, extract into DEST
set -euo pipefail
STAGE=${STAGE:-/tmp/asr}
case "$1" in
    pack)
        out=$2 mb=$3; shift 3
        links=$(mktemp -d)
        for path in "$@"; do ln -s "$(realpath "$path")" "$links/$(basename "$path")"; done
        rm -rf "$out" && mkdir -p "$out"
        tar -chf "$out/bundle.tar" -C "$links" .
        sha256sum "$out/bundle.tar" | cut -d' ' -f1 > "$out/SHA256"
        split -d -b "${mb}000000" "$out/bundle.tar" "$out/part-"
        rm "$out/bundle.tar" "$links"/* && rmdir "$links"
        for part in "$out"/part-*; do
            mkdir "$out/p${part##*-}" && mv "$part" "$out/p${part##*-}/part"
        done
        ls -l "$out"/p*/part; cat "$out/SHA256" ;;
    part)
        mkdir -p "$STAGE"
        cat "$2" >> "$STAGE/bundle.tar"
        ls -l "$STAGE/bundle.tar" ;;
    unpack)
        echo "$2  $STAGE/bundle.tar" | sha256sum -c -
        tar -xf "$STAGE/bundle.tar" -C "$STAGE" && rm "$STAGE/bundle.tar"
        touch "$STAGE/unpacked"  # what `back` brings back is newer than this
        wheels=$(find "$STAGE" -maxdepth 2 -name '*.whl')
        if [ -n "$wheels" ]; then
            # shellcheck disable=SC2086
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels
        fi
        ls -la "$STAGE" ;;
    llm)
        echo "$2  $STAGE/model.gguf" | sha256sum -c -
        PYTHONPATH=/tmp/site:. python3 -c "from pathlib import Path; from asr.llm.embedded import gguf_to_hf_dir; \
gguf_to_hf_dir(Path('$STAGE/model.gguf'), Path('$STAGE/llm'))"
        ls -la "$STAGE/llm" ;;
    back)
        dest=$2; shift 2
        parts="$STAGE/back"
        if [ ! -e "$parts/SHA256" ]; then
            mkdir -p "$parts"
            (cd "$STAGE" && find "$@" -type f -newer "$STAGE/unpacked" -print0 \
                | tar --null -cf "$parts/back.tar" -T -)
            sha256sum "$parts/back.tar" | cut -d' ' -f1 > "$parts/SHA256"
            split -d -b "${BACK_MB:-15}000000" "$parts/back.tar" "$parts/part-" && rm "$parts/back.tar"
        fi
        find "$parts" -name 'part-*' | sort | head -4 | xargs -r mv -t "$dest"
        cp "$parts/SHA256" "$dest/"
        echo "parts left: $(find "$parts" -name 'part-*' | wc -l)" ;;
    join)
        dest=$2 sha=$3; shift 3
        joined=$(mktemp)
        for part in $(printf '%s\n' "$@" | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2); do
            cat "$part" >> "$joined"
        done
        echo "$(cat "$sha")  $joined" | sha256sum -c -
        mkdir -p "$dest" && tar -xf "$joined" -C "$dest" && rm "$joined" ;;
    *)
        echo "usage: gpu_stage.sh pack OUT MB PATH... | part FILE | unpack SHA256 | llm SHA256" \
            "| back DEST PATH... | join DEST SHA256 PART..." >&2; exit 2 ;;
esac
