#!/usr/bin/env bash
# Build the validation sets of BENCHMARKS.md ("Validation sets for the draft gate ...") and the hour-long
# benchmark recording from public sources, and check each against the committed results:
#   ROOT/so762/test/manifest.jsonl       speechocean762 test, all 2,500 (Opus), from jimbozhang/speechocean762
#   ROOT/so762/test100.jsonl             its lines [::25]: 100 utterances, 383.096 s (paths audio/X over a
#                                        link ROOT/so762/audio -> test/audio, as training/speech_pack.sh reads)
#   ROOT/kokoro_heldout/manifest.jsonl   Kokoro-82M reading held-out text, seed 2126: 98 utterances, 597.861 s
#   ROOT/kokoro_heldout/heldout70.jsonl  its first 70 lines: 408.901 s
#   ROOT/hour.jsonl                      dev set, the 98 Kokoro, test100, dev set x3: 606 lines, absolute paths
#   HOUR_LINK (/work/runs/s12/hour.jsonl) -> ROOT/hour.jsonl, the name older commands use
# Usage, from anywhere, as root (Kokoro needs training/setup_tts.sh, which installs Debian packages):
#   bash scripts/validation_data.sh [ROOT]          (ROOT: /work/data)
# speechocean762 comes from SO762_SRC (a checkout; ROOT/src/speechocean762), filled when missing from
# SO762_GIT (a bare snapshot of the repository, read with git archive) or else cloned from GitHub.
# DEV names the dev manifest (../shared/data/speech_dev/manifest.jsonl). Idempotent and resumable: audio
# already written is kept and Kokoro continues after its last row; the heavy steps hold a shared lock on
# /tmp/cpu.lock. About 10 minutes on 2 cores: Kokoro 4 (2.9x real time), the 2,500 Opus files 6.
set -euo pipefail
root=$(realpath -m "${1:-/work/data}")
cd "$(dirname "$0")/.."
so762_src=${SO762_SRC:-$root/src/speechocean762}
so762_git=${SO762_GIT:-/work/.mirror/jimbozhang+speechocean762/repo}
dev=$(realpath "${DEV:-../shared/data/speech_dev/manifest.jsonl}")
hour_link=${HOUR_LINK:-/work/runs/s12/hour.jsonl}
python=.venv/bin/python
heavy() { flock -s /tmp/cpu.lock "$@"; }

# check MANIFEST COUNT SECONDS: fail unless it holds the committed results' utterance count and total
# audio (eval/results: wer_so762_test100_*, wer_kokoro_heldout70_*, bench_cpu_avx2_hour_*) and every file.
check() { "$python" -m asr.corpus "$1" --expect "$2" "$3"; }

# 1. speechocean762 test, every 25th
if [ ! -f "$so762_src/test/wav.scp" ]; then
    mkdir -p "$so762_src"
    if [ -d "$so762_git" ]; then  # the snapshot lacks resource/scores*.json; these paths are whole
        git --git-dir="$so762_git" archive HEAD README.md WAVE train test | tar -x -C "$so762_src"
    else
        git clone --depth 1 https://github.com/jimbozhang/speechocean762 "$so762_src"
    fi
fi
heavy "$python" -m training.speechocean "$so762_src" "$root/so762" --halves test
awk 'NR % 25 == 1' "$root/so762/test/manifest.jsonl" > "$root/so762/test100.jsonl"
ln -sfn test/audio "$root/so762/audio"
check "$root/so762/test100.jsonl" 100 383.096

# 2. Kokoro held out (its text: Debian package descriptions of this machine's dpkg status, minus the
# training corpus's sentences; the same 98 texts came back on a fresh machine after setup and setup_tts)
kokoro=$root/kokoro_heldout
if [ ! -f "$kokoro/manifest.jsonl" ] || [ "$(wc -l < "$kokoro/manifest.jsonl")" -lt 98 ]; then
    [ -f .cache/kokoro/kokoro-v1.0.int8.onnx ] && [ -f /usr/share/dict/words ] || bash training/setup_tts.sh
    heavy "$python" -m training.kokoro_speech --out "$kokoro" --hours 0.165 --seed 2126 --heldout-text
fi
check "$kokoro/manifest.jsonl" 98 597.861
head -n 70 "$kokoro/manifest.jsonl" > "$kokoro/heldout70.jsonl"
check "$kokoro/heldout70.jsonl" 70 408.901

# 3. The hour: 606 utterances; eval.bench_cpu --long-minutes 60 reads its first 518 (3599.647 s with gaps)
"$python" -m asr.corpus "$root/hour.jsonl" --expect 606 3990.725 \
    --join "$dev" "$kokoro/manifest.jsonl" "$root/so762/test100.jsonl" "$dev" "$dev" "$dev"
mkdir -p "$(dirname "$hour_link")"
ln -sfn "$root/hour.jsonl" "$hour_link"
