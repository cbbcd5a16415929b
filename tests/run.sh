#!/usr/bin/env bash
# The test command (README, .ci/run): sets up everything the suite needs on a
# fresh machine, then runs it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools: the browser for the page tests, speech and sound tools for test audio,
# PostgreSQL's server binaries for the shared voice library's tests (tests/postgres.py).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null; then
        echo "tests/run.sh: missing ${missing[*]}; this platform has no apt-get, so install them by hand" >&2
        echo "  (Chromium at /usr/bin/chromium, espeak-ng, sox, PostgreSQL's server with initdb), then run this again." >&2
        exit 1
    fi
    echo "tests/run.sh: installing ${missing[*]} with apt-get (only what is missing)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
# torch first and pinned: a bare requirement pulls the CUDA build, gigabytes this
# machine has no use for. Nothing installed after it may replace it (the constraint).
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==${TORCH_VERSION:-2.13.0}"
torch_version=$(.venv/bin/python -c "import torch; print(torch.__version__)")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==${torch_version}" >"$constraints"
# Install only when the project's requirements changed since the last install.
stamp=.venv/.minestream-test-install
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) torch==${torch_version}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "${pip[@]}" install -c "$constraints" -e ".[test,rtc,qwen]"
    # Last, and without its declared dependencies: qwen-tts asks for torchaudio, gradio, sox
    # and onnxruntime for its 25 Hz tokenizer, which the 12 Hz models never load
    # (server/engines/qwen/compat.py). `pip check` lists those four as missing, on purpose.
    "${pip[@]}" install --no-deps qwen-tts==0.1.1
    echo "$wanted" >"$stamp"
fi

.venv/bin/python -m ruff check server client bench tests
.venv/bin/python -m mypy
# The suite starts some fifty Python processes (servers, Ray replicas, the CLI) on the project's
# modules. Where PYTHONDONTWRITEBYTECODE is set (CI machines often set it), each of them compiles
# those modules again; with it unset they are compiled once, into __pycache__/ (ignored by git).
unset PYTHONDONTWRITEBYTECODE
# Two workers, a test file each at a time (module fixtures stay whole; one Ray cluster at a time),
# the longest files first (tests/conftest.py). MINESTREAM_TEST_WORKERS=0 runs in one process.
exec .venv/bin/python -m pytest -n "${MINESTREAM_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
