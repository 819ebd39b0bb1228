#!/usr/bin/env bash
# GPU check (issue #11, point 9), ready to run on a machine with an NVIDIA GPU and this repository's venv:
#
#     benchmarks/gpu_check.sh            # about 8 minutes at most; logs in benchmarks/gpu_check_logs/
#
# 1. lists the devices each backend sees (onnxruntime's CUDA provider, IREE's CUDA driver);
# 2. runs the conformance matrix on `cuda` (SLOPE_DEVICE=cuda) for onnxruntime and for iree, each time-boxed;
# 3. runs the MLP and CNN train-step benchmarks with Slope's tensors on the GPU;
# 4. ends with a summary: cells passed/failed/skipped per backend, the benchmark rows, and what timed out.
# Settings: PYTHON (default .venv/bin/python), JOBS (pytest workers, default 8), CONFORMANCE_SECONDS (per backend,
# default 170), BENCH_SECONDS (default 90), SLOPE_IREE_CUDA_TARGET (IREE's GPU target, default sm_80).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-8}
CONFORMANCE_SECONDS=${CONFORMANCE_SECONDS:-170}
BENCH_SECONDS=${BENCH_SECONDS:-90}
LOGS=${GPU_CHECK_LOGS:-benchmarks/gpu_check_logs}
mkdir -p "$LOGS"
export SLOPE_DEVICE=${GPU_CHECK_DEVICE:-cuda}  # (GPU_CHECK_DEVICE=cpu: a dry run of this script)
export SLOPE_CACHE_DIR=${SLOPE_CACHE_DIR:-$PWD/$LOGS/cache}  # a cold IREE cache: the time includes compiling
started=$(date +%s)

if ! nvidia-smi -L >"$LOGS/gpus.txt" 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi failed; see $LOGS/gpus.txt)"
    exit 2
fi

echo "== devices"
"$PYTHON" - <<'PY' 2>&1 | tee "$LOGS/devices.txt"
import slope
for name in ("onnxruntime", "iree"):
    try:
        print(f"{name}: {slope.get_backend(name).devices()}")
    except Exception as error:  # a backend that fails is reported, not fatal
        print(f"{name}: unavailable ({type(error).__name__}: {error})")
PY

declare -A status
for backend in onnxruntime iree; do
    echo "== conformance on cuda: $backend (at most ${CONFORMANCE_SECONDS}s)"
    timeout "$CONFORMANCE_SECONDS" "$PYTHON" -m pytest tests/test_conformance.py -q -p no:randomly -n "$JOBS" \
        -k "$backend:" >"$LOGS/conformance_$backend.txt" 2>&1
    code=$?
    status[$backend]=$([ $code -eq 124 ] && echo "TIMED OUT" || ([ $code -eq 0 ] && echo "ok" || echo "exit $code"))
    tail -n 3 "$LOGS/conformance_$backend.txt"
done

echo "== benchmarks on cuda: MLP and CNN train steps (at most ${BENCH_SECONDS}s)"
timeout "$BENCH_SECONDS" "$PYTHON" benchmarks/bench.py --quick --only mlp --only cnn --rounds 3 >"$LOGS/bench.txt" 2>&1
bench_code=$?

count() {  # how many of the characters $1 the string $2 holds
    tr -cd "$1" <<<"$2" | wc -c
}

echo
echo "================ summary ($(($(date +%s) - started)) s) ================"
nvidia-smi -L | head -n 4
cat "$LOGS/devices.txt"
for backend in onnxruntime iree; do
    cells=$(grep -h "conformance matrix on $backend" "$LOGS/conformance_$backend.txt" | tail -n 1)
    # the progress characters count the cells that ran, also when the time box ended the run
    progress=$(grep -hE '^[.sFxXE]+ *(\[ *[0-9]+%\])?$' "$LOGS/conformance_$backend.txt" | tr -cd '.sFxXE')
    ran="${#progress} cells ran: $(count . "$progress") passed, $(count F "$progress") failed, $(count s "$progress")"
    ran+=" skipped, $(count xX "$progress") xfail/xpass, $(count E "$progress") errors"
    echo "conformance $backend (${status[$backend]}): ${ran}"
    [ -n "$cells" ] && echo "  $cells"
    grep -h "^FAILED" "$LOGS/conformance_$backend.txt" | head -n 5
done
if [ $bench_code -eq 0 ]; then
    grep -hE "^\| (MLP|CNN)" "$LOGS/bench.txt"
else
    echo "benchmarks: exit $bench_code ($([ $bench_code -eq 124 ] && echo "timed out" || echo "see $LOGS/bench.txt"))"
fi
echo "logs: $LOGS/"
