#!/usr/bin/env bash
# Start MineStream over TLS from a fresh clone: virtual environment, install,
# certificates (made by the server at first start), then the server itself.
# Arguments go to the server: ./run_tls.sh --port 9443 --engine preview
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    # Reuse a torch that is already installed system-wide (GPU machines
    # usually have one) rather than downloading another.
    if python3 -c "import torch" 2>/dev/null; then
        python3 -m venv --system-site-packages .venv
    else
        python3 -m venv .venv
    fi
fi
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
extras="rtc"
# The Qwen3-TTS engine needs torch and a GPU; the preview engine needs neither.
if command -v nvidia-smi >/dev/null 2>&1 || [ "${MINESTREAM_QWEN:-0}" = 1 ]; then
    .venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==${TORCH_VERSION:-2.13.0}"
    "${pip[@]}" install --no-deps qwen-tts==0.1.1
    extras="rtc,qwen"
fi
if .venv/bin/python -c "import torch" 2>/dev/null; then
    constraints=$(mktemp)
    trap 'rm -f "$constraints"' EXIT
    .venv/bin/python -c "import torch; print('torch==' + torch.__version__)" >"$constraints"
    "${pip[@]}" install -c "$constraints" -e ".[${extras}]"
else
    "${pip[@]}" install -e ".[${extras}]"
fi
exec .venv/bin/python -m server "$@"
