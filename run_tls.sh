#!/usr/bin/env bash
# Start MineStream over TLS from a fresh clone: virtual environment, install,
# the Qwen3-TTS weights on a GPU machine, certificates (made by the server at
# first start), then the server itself. Arguments go to the server.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
    cat <<'EOF'
usage: ./run_tls.sh [--no-fetch] [server options]

Sets up .venv (first run only), installs MineStream, and starts the server on
https://0.0.0.0:8443 with a local CA (phones: trust /ca.pem once) and a token
in data/token (printed in the URLs). Examples:

  ./run_tls.sh                           # the engine is chosen for this machine
  ./run_tls.sh --engine preview          # the CPU preview engine (Piper)
  ./run_tls.sh --host 127.0.0.1 --port 9443

On a machine with nvidia-smi (or MINESTREAM_QWEN=1) it also installs torch and
the Qwen3-TTS extra, and downloads Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign and
Qwen/Qwen3-TTS-12Hz-1.7B-Base (about 4.5 GB each) into the Hugging Face cache
when they are not there yet, with progress. --no-fetch (or MINESTREAM_NO_FETCH=1)
skips the download; without the weights the server uses the preview engine
and says why. Every server option also reads a MINESTREAM_* variable; with
.venv installed, `.venv/bin/python -m server --help` lists them all.
EOF
}

fetch=1
args=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; [ -x .venv/bin/python ] && .venv/bin/python -m server --help 2>/dev/null | sed -n '/^options:/,$p'; exit 0 ;;
        --no-fetch) fetch=0 ;;
        *) args+=("$arg") ;;
    esac
done
[ "${MINESTREAM_NO_FETCH:-0}" = 1 ] && fetch=0

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
qwen=0
if command -v nvidia-smi >/dev/null 2>&1 || [ "${MINESTREAM_QWEN:-0}" = 1 ]; then
    qwen=1
    .venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==${TORCH_VERSION:-2.13.0}"
fi
extras=$([ $qwen = 1 ] && echo "rtc,qwen" || echo "rtc")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
.venv/bin/python -c "import torch; print('torch==' + torch.__version__)" >"$constraints" 2>/dev/null || true
stamp=.venv/.minestream-install
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) ${extras} $(cat "$constraints")"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "run_tls.sh: installing MineStream (.[${extras}]) into .venv"
    "${pip[@]}" install -c "$constraints" -e ".[${extras}]"
    if [ $qwen = 1 ]; then
        # Without its declared dependencies: torchaudio, gradio, sox and onnxruntime serve its
        # 25 Hz tokenizer, which the 12 Hz models never load; `pip check` lists them, on purpose.
        "${pip[@]}" install --no-deps qwen-tts==0.1.1
    fi
    echo "$wanted" >"$stamp"
fi

if [ $qwen = 1 ] && [ $fetch = 1 ]; then
    .venv/bin/python - <<'EOF'
import sys
from huggingface_hub import snapshot_download

for repo in ("Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign", "Qwen/Qwen3-TTS-12Hz-1.7B-Base"):
    try:
        snapshot_download(repo, local_files_only=True)
        continue
    except Exception:
        pass
    print(f"run_tls.sh: fetching {repo} into the Hugging Face cache (Ctrl-C, then --no-fetch, to skip)", flush=True)
    try:
        snapshot_download(repo)
    except Exception as exc:  # offline, or the hub refused: the server explains the fallback
        print(f"run_tls.sh: could not fetch {repo}: {exc}", file=sys.stderr)
EOF
fi
exec .venv/bin/python -m server "${args[@]}"
