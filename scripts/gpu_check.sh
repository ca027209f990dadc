#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: configure with CUDA, build,
# run the CUDA op and end-to-end parity tests (test_cuda), then the whole
# ctest suite, optionally compute-sanitizer memcheck on a short run, and print
# a short table: per-op parity errors and the pass/fail of each stage.
#
#   scripts/gpu_check.sh [--build-dir DIR] [--no-build] [--no-ctest] [--sanitize] [--bench] [--bench-eager]
#                        [--jobs N]
#
# --no-build runs binaries already in DIR (built elsewhere and copied in).
# --no-ctest skips the whole-suite run (the CPU tests run in CI anyway).
# --bench then benchmarks decoding on the GLM-4.5-Air shape with synthetic
#   weights: int4 (GPU_BENCH_INT4_LAYERS layers, default 8) and bf16
#   (GPU_BENCH_BF16_LAYERS, default 4) at contexts GPU_BENCH_CONTEXTS
#   (default "0 4096"), written to a scratch dir (GPU_BENCH_DIR, default
#   /tmp/glm-bench) and deleted after each run. GPU_BENCH_ARGS adds bench
#   options (e.g. --profile).
# --bench-eager runs each benchmark first with CUDA graphs off
#   (GLM_CUDA_GRAPHS=0), for the difference graphs make.
# Prebuilt binaries from another machine: see scripts/gpu_carry.sh.
# The parity lines ("PARITY <what> <error>") come from tests/cuda/.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$root/build-cuda"
do_build=1
sanitize=0
bench=0
bench_eager=0
ctest_all=1
jobs="$(nproc)"
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir="$(realpath -m "$2")"; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --sanitize) sanitize=1; shift ;;
    --bench) bench=1; shift ;;
    --bench-eager) bench=1; bench_eager=1; shift ;;
    --no-ctest) ctest_all=0; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

log_dir="${GPU_CHECK_LOG_DIR:-$build_dir/gpu_check}"
mkdir -p "$log_dir"
declare -A stage_result
stages=()
stage() {  # stage NAME COMMAND...: runs, logs to $log_dir/NAME.log, records PASS/FAIL
  local name="$1"; shift
  stages+=("$name")
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@" >"$log_dir/$name.log" 2>&1; then stage_result[$name]="PASS"; else stage_result[$name]="FAIL"; fi
  stage_result[$name]+=" ($((SECONDS - start)) s)"
  tail -n 25 "$log_dir/$name.log"
}

echo "=== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
command -v nvcc >/dev/null && nvcc --version | tail -n 1

if [ "$do_build" = 1 ]; then
  stage configure cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGLM_CUDA=ON
  stage build cmake --build "$build_dir" -j "$jobs"
fi

cd "$root"  # tests find their fixtures from the source tree
stage test_cuda "$build_dir/test_cuda"
if [ "$ctest_all" = 1 ]; then
  stage ctest ctest --test-dir "$build_dir" -j "$jobs" --output-on-failure --timeout 900
fi

if [ "$sanitize" = 1 ]; then
  if command -v compute-sanitizer >/dev/null; then
    # A short run: the op tests (without the 4000-token context) and one fixture end to end.
    stage memcheck timeout "${GPU_CHECK_SANITIZE_TIMEOUT:-900}" compute-sanitizer --tool memcheck --error-exitcode 1 --leak-check no "$build_dir/test_cuda" \
      --gtest_filter='CudaOps.*:CudaBackend.*:Fixtures/CudaModel.LogitsMatchTransformersAndTheCpu/plain_f32_tied_mqa:-CudaOps.AttentionLongContextDecode'
  else
    echo "compute-sanitizer not found: memcheck skipped"
  fi
fi

if [ "$bench" = 1 ]; then
  bench_dir="${GPU_BENCH_DIR:-/tmp/glm-bench}"
  contexts="${GPU_BENCH_CONTEXTS:-0 4096}"
  bench_run() {  # bench_run DTYPE LAYERS
    rm -rf "$bench_dir"
    local status=0
    local command=("$build_dir/glm4moe" bench --device cuda --synthetic glm-4.5-air --dtype "$1" --layers "$2"
                   --synthetic-dir "$bench_dir" --prompt-tokens 512 --context $contexts --gen-tokens 32
                   ${GPU_BENCH_ARGS:-})
    if [ "$bench_eager" = 1 ]; then
      echo "--- CUDA graphs off"
      GLM_CUDA_GRAPHS=0 "${command[@]}" || status=$?
      echo "--- CUDA graphs on"
    fi
    "${command[@]}" || status=$?
    rm -rf "$bench_dir"
    return $status
  }
  stage bench_int4 bench_run int4 "${GPU_BENCH_INT4_LAYERS:-8}"
  stage bench_bf16 bench_run bf16 "${GPU_BENCH_BF16_LAYERS:-4}"
fi

echo
echo "=== parity (normalised error |cuda - cpu| / |cpu| unless said otherwise)"
grep -h '^PARITY' "$log_dir/test_cuda.log" | sed 's/^PARITY //' | sort -u
echo
echo "=== ctest summary"
[ -f "$log_dir/ctest.log" ] && grep -E 'tests passed|tests failed|\*\*\*Failed|Not Run|Timeout' "$log_dir/ctest.log" | head -n 40
echo
echo "=== stages"
status=0
for name in "${stages[@]}"; do
  printf '%-12s %s\n' "$name" "${stage_result[$name]}"
  case "${stage_result[$name]}" in FAIL*) status=1 ;; esac
done
exit $status
