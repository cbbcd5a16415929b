#!/usr/bin/env bash
# The Qwen engine's one-script GPU run (issues 11 and 16): every result in one folder, in under 8 minutes.
#
#   here, once:  bash bench/gpu/run_qwen.sh --fetch-wheels        # pip download into .whl/ (git-ignored, never committed)
#   device:      run(command="bash bench/gpu/run_qwen.sh", carry=[".whl"], timeout_s=540)
#                (OUT is the device's $OUT; its files come back: env.txt, pytest.log, load.json, load-compiled.json, results.md, run.log)
#   here, dry:   PYTHON=.venv/bin/python bash bench/gpu/run_qwen.sh --dry-run [DIR]   # every step on CPU, tiny models
#
# Steps, each under its own time limit, in order of what matters if time runs out:
#   1. install the carried wheels (bench/gpu/qwen-wheels.txt) into /tmp/site; stop at once if qwen-tts then does not import;
#   2. the batch's parity tests on the GPU (float32, step graphs captured; codes equal upstream's);
#   3. build random-weight 1.7B VoiceDesign + Base dirs on the GPU (bench/qwen_models.py);
#   4. the load table (bench/qwen_load.py): clone at 1, 8, 16, 32, 64 streams, design at 1 and 64,
#      32 design + 32 clone at once; EOS suppressed at 48 frames; engine start captures the graphs;
#   5. faster-qwen3-tts 0.3.2 beside it (one request at a time): clone at 1 and 16 streams, design at 1;
#   6. the step profile by batch size (bench/qwen_profile.py): predictor (folded, eager), talker,
#      prefill, codec (replayed and eager), first audio from its parts;
#   7. where time is left: the compiled predictor's and talker's profile (batch 1 and 64), their
#      parity tests, and the load with both (clone at 1 and 64 streams);
#   8. results.md: every table, the GPU's name, the versions (remade after every step, so a run killed at its limit keeps them).
set -uo pipefail
cd "$(dirname "$0")/../.."
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry; shift ;;
  --fetch-wheels) MODE=fetch; shift ;;
esac
WHEELS=bench/gpu/qwen-wheels.txt

if [ "$MODE" = fetch ]; then
  mkdir -p .whl
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r "$WHEELS"
fi

if [ "$MODE" = dry ]; then
  OUT=${1:-$(mktemp -d /tmp/qwen-gpu-dry-XXXX)}
  PY=${PYTHON:-python3}
  SIZE=tiny; DEVICE=cpu; FRAMES=8; MODELS=/tmp/qwen-dry-tiny
  LEVELS="clone:1,2 design:1 mixed:1+1"; COMPILED_LEVELS="clone:1,2"; COMPILED_BATCHES=1,2; WINDOW=2; WARMUP=0.5; BATCHES=1,2,4
  SCALE=3  # the CPU is slow: longer limits
  export MINESTREAM_COMPILE_BACKEND=aot_eager  # the compiled predictor and talker's graphs without a minute of C++ compiling
else
  OUT=${OUT:-${1:-bench/out/qwen-gpu}}
  PY=python3
  SIZE=1.7b; DEVICE=cuda:0; FRAMES=48; MODELS=/tmp/q17
  LEVELS="clone:1,8,16,32,64 design:1,64 mixed:32+32"; COMPILED_LEVELS="clone:1,64"; COMPILED_BATCHES=1,64; WINDOW=6; WARMUP=2; BATCHES=1,8,16,32,64
  SCALE=1
fi
mkdir -p "$OUT"
LOG="$OUT/run.log"
WORK=$(mktemp -d /tmp/qwen-gpu-work-XXXX)  # each step's own files; only what results.md folds in goes to $OUT
trap 'rm -rf "$WORK"' EXIT
# At most 8 files come back, and a run killed at its limit must still bring its tables:
# OUT holds env.txt, run.log, pytest.log, load.json, load-compiled.json and results.md, remade after every step.
export PYTHONUNBUFFERED=1
started=$(date +%s)

summarize() {  # results.md from what the steps have written so far: every table, the GPU's name, the versions
  {
    echo "# Qwen engine GPU run ($MODE)"
    echo; echo '```'; cat "$OUT/env.txt"; echo '```'
    echo; echo "## Parity tests on the device (float32, graphs)"; echo; cat "$OUT/pytest.log" 2>/dev/null || echo "none"
    echo; echo "## Load (bench.qwen_load)"; echo; cat "$WORK/load.md" 2>/dev/null || echo "none"
    echo; echo "## faster-qwen3-tts 0.3.2 (bench.qwen_engine --runners faster)"; echo
    cat "$WORK/faster-clone.md" "$WORK/faster-design.md" 2>/dev/null || echo "none"
    echo; echo "## Step profile (bench.qwen_profile)"; echo; cat "$WORK/profile.md" 2>/dev/null || echo "none"
    echo; echo "## The compiled predictor's and talker's profile (bench.qwen_profile --compiled)"; echo
    cat "$WORK/compiled/profile.md" 2>/dev/null || echo "none"
    echo; echo "## Load with the compiled predictor and talker (bench.qwen_load --predictor compiled --talker compiled)"; echo
    cat "$WORK/compiled/load.md" 2>/dev/null || echo "none"
    echo; echo "total $(( $(date +%s) - started ))s${1:+ ($1)}"
  } > "$OUT/results.md"
  [ -f "$WORK/load.json" ] && cp "$WORK/load.json" "$OUT/load.json"
  [ -f "$WORK/compiled/load.json" ] && cp "$WORK/compiled/load.json" "$OUT/load-compiled.json"
  return 0
}

step() {  # step NAME LIMIT_S COMMAND...: run it under a time limit, log it, never stop the script
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  echo "== $name (limit ${limit}s, at $(( $(date +%s) - started ))s)" | tee -a "$LOG"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - started ))s" | tee -a "$LOG"
  summarize
}

install_wheels() {  # every pinned wheel must be there; the dry run checks that and installs nothing
  [ -d .whl ] || { echo "no .whl folder: carry it (bench/gpu/run_qwen.sh --fetch-wheels here first)"; return 1; }
  local missing=0
  while read -r pin; do
    case "$pin" in ''|'#'*) continue ;; esac
    local name=${pin%%==*} version=${pin#*==}
    ls .whl/ | grep -iq "^${name//-/_}-${version}-" || { echo "missing wheel: $pin"; missing=1; }
  done < "$WHEELS"
  [ "$MODE" = dry ] && { echo "dry run: $(ls .whl | wc -l) wheels checked, none installed (they are for the device's Python 3.12)"; return $missing; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  return $missing
}

{
  echo "mode: $MODE; size: $SIZE; device: $DEVICE; $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  uname -m; nproc
} > "$OUT/env.txt"

export -f install_wheels; export MODE WHEELS  # timeout runs programs, not shell functions
step install 90 bash -c install_wheels
[ "$MODE" = gpu ] && export PYTHONPATH=/tmp/site:$PWD || export PYTHONPATH=$PWD
$PY - >> "$OUT/env.txt" 2>&1 <<'EOF'
import importlib, torch
from server.engines.qwen import compat
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("shimmed for qwen_tts:", sorted(compat.install()) or "nothing")
for name in ("transformers", "tokenizers", "huggingface_hub", "accelerate", "qwen_tts", "faster_qwen3_tts"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, "unavailable:", type(exc).__name__, str(exc)[:120])
EOF
echo "compilers (Triton's launcher needs one): $(command -v gcc cc nvcc | tr '\n' ' ')" >> "$OUT/env.txt"
# Without qwen-tts nothing after this can run: stop at once, so the device time is left for a rerun.
if ! $PY -c "from server.engines.qwen import compat; compat.install(); compat.import_qwen_tts()" >> "$LOG" 2>&1; then
  echo "== qwen_tts does not import (run.log says why): stopping" | tee -a "$LOG"
  summarize "stopped: qwen_tts does not import"
  exit 3
fi

# float32 on the GPU with the step and codec graphs captured: the codes must still equal upstream's
# (the compiled predictor's tests come later, where time is left: Inductor compiles for minutes).
parity() {  # parity NAME LIMIT_S -k EXPRESSION: the tests' counts appended to pytest.log
  step "$1" "$2" env MINESTREAM_QWEN_DEVICE=$DEVICE $PY -m pytest --noconftest -q -x -p no:cacheprovider \
    tests/test_qwen_batch.py tests/test_qwen_codec.py -k "$3" -o addopts="" --junitxml="$WORK/pytest.xml"
  [ -f "$WORK/pytest.xml" ] && { echo -n "$1: "; grep -o 'tests="[0-9]*"\|failures="[0-9]*"\|errors="[0-9]*"' "$WORK/pytest.xml" | tr '\n' ' '; echo; } >> "$OUT/pytest.log" && rm "$WORK/pytest.xml"
  summarize
}
rm -f "$OUT/pytest.log"
parity tests 150 "(together or generator or company or reused or folded or padding) and not compiled"

step build 120 $PY -m bench.qwen_models "$SIZE" "$MODELS"
DIRS=(--design-model "$MODELS/design" --base-model "$MODELS/base")

step load 300 $PY -m bench.qwen_load "${DIRS[@]}" --suppress-eos --frames "$FRAMES" --levels $LEVELS \
  --warmup "$WARMUP" --window "$WINDOW" --out "$WORK"

step faster-clone 100 $PY -m bench.qwen_engine "${DIRS[@]}" --runners faster --voices clone --streams 1,16 --frames "$FRAMES" \
  --suppress-eos --first-chunk 2 --results "$WORK/faster-clone.md"
step faster-design 60 $PY -m bench.qwen_engine "${DIRS[@]}" --runners faster --voices design --streams 1 --frames "$FRAMES" \
  --suppress-eos --first-chunk 2 --results "$WORK/faster-design.md"

step profile 120 $PY -m bench.qwen_profile "${DIRS[@]}" --kind base --batch "$BATCHES" --repeats 20 --out "$WORK"

# The compiled predictor, where time is left (each step only if the run is young enough to fit it):
# its profile beside the folded one, its parity tests, the load with it at one stream and at 64.
if_time() {  # if_time BEFORE_S STEP...: the step only if fewer than BEFORE_S seconds are gone
  local before=$(( $1 * SCALE )); shift
  if (( $(date +%s) - started < before )); then "$@"; else echo "== $2: skipped, $(( $(date +%s) - started ))s gone" | tee -a "$LOG"; fi
}
if_time 330 step profile-compiled 120 $PY -m bench.qwen_profile "${DIRS[@]}" --kind base --batch "$COMPILED_BATCHES" --repeats 20 \
  --compiled --out "$WORK/compiled"
if_time 380 parity compiled-tests 80 "compiled"
if_time 380 step load-compiled 90 $PY -m bench.qwen_load "${DIRS[@]}" --suppress-eos --frames "$FRAMES" --levels $COMPILED_LEVELS \
  --warmup "$WARMUP" --window "$WINDOW" --predictor compiled --talker compiled --out "$WORK/compiled"

summarize complete
echo "== done in $(( $(date +%s) - started ))s: $OUT" | tee -a "$LOG"
cat "$OUT/results.md"
