#!/usr/bin/env bash
# llama.cpp side by side on the CPU: glm4moe against llama.cpp's CPU build on the same synthetic
# GLM-4.5-Air-shaped weights (hidden 4096, 96 heads of 128, 8 KV heads, 128 experts of 1408,
# top-8 + 1 shared, vocab 151552), cut to LAYERS decoder layers (layer 0 dense, the rest MoE).
#
# What it does, end to end, skipping any step whose output already exists under SCRATCH:
#   1. fetches llama.cpp as vendored by the llama-cpp-python source package (pinned version, from
#      PyPI with pip) and builds llama-bench and llama-quantize (CPU only, GGML_NATIVE, Release)
#      out of tree in LLAMA_BUILD; builds glm4moe (CPU only) in GLM_BUILD;
#   2. writes the synthetic bf16 checkpoint with `glm4moe bench --synthetic` (safetensors);
#   3. converts it to a bf16 GGUF with llama.cpp's convert_hf_to_gguf.py
#      (tools/llama_cpp/convert_synthetic.py), then llama-quantize --pure to Q8_0 and Q4_0;
#      and `glm4moe quantize` to mlx affine int8 and int4 (group 64): the same weights on both sides;
#   4. times, one after the other, each format pair in REPS interleaved rounds of: llama-bench
#      (-p 512 -n 16 -t THREADS -r 1, after its own warm-up runs), `glm4moe bench` (512-token prompt,
#      16 generated tokens at context 0, THREADS threads) once per mode of OUR_MODES (default:
#      GLM_CPU_ACTIVATIONS=exact, f32 activations, then fast-prompts, then fast, the engine's default);
#      every timed command runs under `flock /tmp/glm-timing.lock` (so timings of cooperating agents never overlap) at nice NICE,
#      after waiting for a nearly idle machine; the load average and the CPU others took are logged;
#   5. prints a markdown table (tools/llama_cpp/bench_table.py): tok/s of both, best of the REPS
#      rounds (the least disturbed; mean/median alongside), and the ratios ours/llama.cpp, of the
#      bests and paired by round (median and range).
#   4b. with INTERLEAVED_ROUNDS > 0 (12 by default), times generation once more per format with
#      bench/llama_cpp/interleaved.cpp (built in GLM_BUILD against LLAMA_BUILD's static libraries):
#      both engines in one process, rounds of 32 tokens in turns, so that the two sides of a round
#      meet the same state of a VM whose bandwidth flips; its summary line follows the table.
#
# Needs: cmake, ninja, a C++20 compiler, pip (PyPI reachable for step 1 unless the source is
# already in SCRATCH), python3 with torch, transformers, numpy and safetensors (for the
# converter), flock (util-linux). Disk: at 3 layers the bf16 checkpoint and bf16 GGUF are 12.3 GB
# each, Q8_0 and int8 6.6 GB each, Q4_0 and int4 3.5 GB each; the bf16 GGUF is removed once Q8_0
# and Q4_0 exist (unless KEEP=all), so the peak is ~35 GB. Memory: one bf16 model (12.3 GB) at a
# time; llama.cpp repacks Q4_0 into anonymous memory at load (another 3.5 GB while it runs).
#
# Run:   bash bench/llama_cpp_cpu.sh /work/llamacpp-scratch
# Knobs (environment): LAYERS=3 THREADS=2 REPS=5 FORMATS="bf16 int8 int4"
#   OUR_MODES="exact fast-prompts fast" (values of GLM_CPU_ACTIVATIONS our bench runs with; fast, the
#   engine's default: int8 activations with affine weights and bf16 with bf16 weights at every batch
#   size; add "int8" for int8 activations with affine weights only)
#   INTERLEAVED_ROUNDS=12 (rounds of bench_llama_cpp_interleaved per format; 0: not built, not run)
#   LLAMA_BUILD=/work/llamacpp-build   GLM_SRC=<repo> (the glm4moe tree built; a clean copy of a commit:
#   git archive HEAD | tar -x -C DIR, with the hash in DIR/.commit)   GLM_BUILD=<repo>/build-llamacmp
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 (vendors ggml-org/llama.cpp@0c1e57098)
#   NICE=-10 (niceness of the timed commands, both sides: builds of others at nice 0..19 then take
#   little CPU from them; needs root, else nice warns and runs at 0)
#   BUSY_MAX=0.10 MAX_WAIT=120 (before each timed command, wait up to MAX_WAIT s for less than BUSY_MAX
#   of the cores to be busy; the share of CPU others took while it ran is logged in <result>.env and
#   shown by the table, so disturbed runs can be seen); OTHERS_MAX=0.10 ATTEMPTS=3 (a run during
#   which others took more than OTHERS_MAX of the CPU is redone, at most ATTEMPTS runs in all)
#   KEEP=quantized (default: at the end delete the bf16 checkpoint and bf16 GGUF, keep the 4 quantized
#        models) | all (keep everything, ~45 GB at 3 layers) | none (delete every model file)
# Results (JSON of every run, uptime log, table.md) go to RESULTS=SCRATCH/results/<date-time>/ (give
# RESULTS to add formats to an earlier run's directory).
set -euo pipefail
shopt -s inherit_errexit

SCRATCH=${1:?usage: bash bench/llama_cpp_cpu.sh SCRATCH_DIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAYERS=${LAYERS:-3}
THREADS=${THREADS:-2}
REPS=${REPS:-5}
FORMATS=${FORMATS-"bf16 int8 int4"}  # FORMATS="" only fetches and builds
OUR_MODES=${OUR_MODES:-"exact fast-prompts fast"}
INTERLEAVED_ROUNDS=${INTERLEAVED_ROUNDS:-12}
KEEP=${KEEP:-quantized}
NICE=${NICE:--10}
BUSY_MAX=${BUSY_MAX:-0.10}
OTHERS_MAX=${OTHERS_MAX:-0.10}
ATTEMPTS=${ATTEMPTS:-3}
MAX_WAIT=${MAX_WAIT:-120}
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
LLAMA_BUILD=${LLAMA_BUILD:-/work/llamacpp-build}
GLM_SRC=${GLM_SRC:-$REPO}
GLM_BUILD=${GLM_BUILD:-$REPO/build-llamacmp}
LOCK=/tmp/glm-timing.lock

mkdir -p "$SCRATCH"
SCRATCH=$(cd "$SCRATCH" && pwd)
LLAMA_SRC=$SCRATCH/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp
GLM=$GLM_BUILD/glm4moe
BF16_DIR=$SCRATCH/air-${LAYERS}L-bf16
RESULTS=${RESULTS:-$SCRATCH/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
log() { echo "[llama_cpp_cpu $(date +%H:%M:%S)] $*" >&2; }

# ---- 1. builds ------------------------------------------------------------------------------
if [[ ! -f $LLAMA_SRC/CMakeLists.txt ]]; then
  log "fetching llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (source) from PyPI"
  pip download --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$SCRATCH"
  tar -xzf "$SCRATCH/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$SCRATCH"
fi
LLAMA_COMMIT=$(git -C "$LLAMA_SRC" rev-parse HEAD 2>/dev/null ||
  grep -m1 -o 'ggml-org/llama.cpp@[0-9a-f]*' "$SCRATCH/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/CHANGELOG.md")
log "llama.cpp $LLAMA_COMMIT (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION)"
if [[ ! -x $LLAMA_BUILD/bin/llama-bench || ! -x $LLAMA_BUILD/bin/llama-quantize ]]; then
  log "building llama.cpp (CPU) in $LLAMA_BUILD"
  cmake -S "$LLAMA_SRC" -B "$LLAMA_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  nice -n 19 cmake --build "$LLAMA_BUILD" -j2 --target llama-bench llama-quantize
fi
if [[ ! -x $GLM ]]; then
  log "building glm4moe (CPU) in $GLM_BUILD"
  cmake -S "$GLM_SRC" -B "$GLM_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGLM_CUDA=OFF >/dev/null
  nice -n 19 cmake --build "$GLM_BUILD" -j2 --target glm4moe
fi
INTERLEAVED=$GLM_BUILD/bench_llama_cpp_interleaved
if ((INTERLEAVED_ROUNDS > 0)) && [[ ! -x $INTERLEAVED ]]; then
  log "building bench_llama_cpp_interleaved (both engines in one process) in $GLM_BUILD"
  cmake -S "$GLM_SRC" -B "$GLM_BUILD" -DGLM_LLAMA_CPP_SOURCE="$LLAMA_SRC" -DGLM_LLAMA_CPP_BUILD="$LLAMA_BUILD" >/dev/null
  nice -n 19 cmake --build "$GLM_BUILD" -j2 --target bench_llama_cpp_interleaved
fi

# ---- 2./3. the models (each made when first needed) ---------------------------------------------
model_bf16() {  # the synthetic checkpoint; `bench --synthetic` writes it (a tiny untimed run follows)
  if [[ ! -f $BF16_DIR/synthetic.json ]]; then
    log "writing the synthetic bf16 checkpoint ($LAYERS layers) to $BF16_DIR"
    "$GLM" bench --synthetic glm-4.5-air --layers "$LAYERS" --dtype bf16 --synthetic-dir "$BF16_DIR" \
      --prompt-tokens 1 --gen-tokens 1 --threads "$THREADS" >/dev/null
  fi
  echo "$BF16_DIR"
}
gguf_bf16() {
  local out=$SCRATCH/air-${LAYERS}L-bf16.gguf
  if [[ ! -f $out ]]; then
    local src; src=$(model_bf16)
    log "converting to $out"
    python3 "$REPO/tools/llama_cpp/convert_synthetic.py" --llama-cpp "$LLAMA_SRC" --model "$src" \
      --outfile "$out.part" --outtype bf16 2>"$out.log"
    mv "$out.part" "$out"
  fi
  echo "$out"
}
gguf_quant() {  # $1 = Q8_0 | Q4_0
  local type=$1 out=$SCRATCH/air-${LAYERS}L-$1.gguf
  if [[ ! -f $out ]]; then
    local src; src=$(gguf_bf16)
    log "llama-quantize --pure $type"
    "$LLAMA_BUILD/bin/llama-quantize" --pure "$src" "$out.part" "$type" "$THREADS" >"$out.log" 2>&1
    mv "$out.part" "$out"
  fi
  echo "$out"
}
ours_quant() {  # $1 = 8 | 4
  local bits=$1 out=$SCRATCH/air-${LAYERS}L-int$1
  if [[ ! -f $out/config.json ]]; then
    local src; src=$(model_bf16)
    log "glm4moe quantize --bits $bits --group-size 64"
    rm -rf "$out.part"
    "$GLM" quantize --model "$src" --bits "$bits" --group-size 64 --output "$out.part" >&2
    mv "$out.part" "$out"
  fi
  echo "$out"
}

# ---- 4. timing ------------------------------------------------------------------------------
cpu_busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
busy_fraction() {  # share of all cores busy over the next 2 s (user, nice, system, irq, steal)
  local a b; a=$(cpu_busy_jiffies); sleep 2; b=$(cpu_busy_jiffies)
  awk -v a="$a" -v b="$b" -v hz="$HZ" -v n="$NCPU" 'BEGIN { printf "%.2f", (b - a) / hz / 2 / n }'
}
timed() {  # $1 = result file; the rest: the command, run under the shared lock at nice NICE
  local out=$1 attempt waited busy load before after others faults t; shift
  for attempt in $(seq 1 "$ATTEMPTS"); do
    # Wait (at most MAX_WAIT s) for the machine to be nearly idle (under BUSY_MAX of its cores busy
    # over 2 s): other work on a small machine disturbs these timings more than anything measured.
    waited=0
    while busy=$(busy_fraction) && awk -v b="$busy" -v m="$BUSY_MAX" 'BEGIN { exit !(b >= m) }' &&
      ((waited < MAX_WAIT)); do
      waited=$((waited + 2))
    done
    exec {lock_fd}>"$LOCK"
    flock "$lock_fd"
    busy=$(busy_fraction)  # once more: another agent's timing may have just ended
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    before=$(cpu_busy_jiffies)
    faults=$(awk '/^pgmajfault / { print $2 }' /proc/vmstat)
    local TIMEFORMAT='%R %U %S'
    { time nice -n "$NICE" "$@" >"$out" 2>"$out.stderr"; } 2>"$out.time"
    after=$(cpu_busy_jiffies)
    faults=$(($(awk '/^pgmajfault / { print $2 }' /proc/vmstat) - faults))  # whole machine, load included
    exec {lock_fd}>&-
    # CPU that others took while the command ran: all busy time minus the command's own user+system.
    read -r -a t <"$out.time"
    others=$(awk -v a="$before" -v b="$after" -v hz="$HZ" -v n="$NCPU" -v r="${t[0]}" -v u="${t[1]}" \
      -v s="${t[2]}" 'BEGIN { x = ((b - a) / hz - u - s) / (r * n); printf "%.2f", x < 0 ? 0 : x }')
    printf '{"attempt": %d, "waited_s": %d, "busy_before": %s, "load": "%s", "wall_s": %s, "others_cpu_share": %s, "major_faults_machine": %d}\n' \
      "$attempt" "$waited" "$busy" "$load" "${t[0]}" "$others" "$faults" >"$out.env"
    echo "$(basename "$out") attempt $attempt: waited ${waited}s, busy before $busy, others' CPU share while" \
      "running $others, major faults (machine) $faults, load $load" | tee -a "$RESULTS/uptime.log" >&2
    # A run during which others took more than OTHERS_MAX of the CPU is run again (ATTEMPTS in all).
    awk -v o="$others" -v m="$OTHERS_MAX" 'BEGIN { exit !(o > m) }' || break
  done
}
bench_pair() {  # $1 = format name, $2 = GGUF, $3 = our checkpoint directory
  # REPS rounds, each: llama-bench (one sample of each test after its warm-up), then ours in each of
  # OUR_MODES; interleaved so that both sides meet the same conditions on a shared machine.
  local name=$1 gguf=$2 ours=$3 rep mode
  cat "$ours"/*.safetensors | wc -c >"$RESULTS/ours-$name.bytes"  # our checkpoint's size on disk
  for rep in $(seq 1 "$REPS"); do
    log "timing $name, round $rep/$REPS: llama-bench $(basename "$gguf")"
    timed "$RESULTS/llama-$name-$rep.json" "$LLAMA_BUILD/bin/llama-bench" -m "$gguf" -p 512 -n 16 \
      -t "$THREADS" -r 1 -o json
    for mode in $OUR_MODES; do
      log "timing $name, round $rep/$REPS: glm4moe bench ($mode)"  # every mode named, the default (fast) too
      timed "$RESULTS/glm-$name-$mode-$rep.json" env "GLM_CPU_ACTIVATIONS=$mode" "$GLM" bench \
        --model "$ours" --prompt-tokens 512 --gen-tokens 16 --threads "$THREADS" --json
    done
  done
}

{
  echo "date: $(date -Is)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "llama.cpp: $LLAMA_COMMIT (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION)"
  echo "glm4moe: built from $GLM_SRC ($(cat "$GLM_SRC/.commit" 2>/dev/null || git -C "$GLM_SRC" describe --always --dirty 2>/dev/null || echo unknown))"
  echo "layers: $LAYERS, threads: $THREADS, reps: $REPS"
} >>"$RESULTS/meta.txt"

for format in $FORMATS; do
  case $format in
    bf16) gguf=$(gguf_bf16); ours=$(model_bf16) ;;
    int8|int4)
      type=Q${format#int}_0
      gguf=$(gguf_quant "$type")
      if [[ $KEEP != all ]]; then  # make every quantized GGUF wanted, then drop the bf16 GGUF (disk)
        [[ " $FORMATS " != *" int8 "* ]] || gguf_quant Q8_0 >/dev/null
        [[ " $FORMATS " != *" int4 "* ]] || gguf_quant Q4_0 >/dev/null
        rm -f "$SCRATCH/air-${LAYERS}L-bf16.gguf"
      fi
      ours=$(ours_quant "${format#int}") ;;
    *) echo "unknown format $format (bf16, int8, int4)" >&2; exit 1 ;;
  esac
  bench_pair "$format" "$gguf" "$ours"
  if ((INTERLEAVED_ROUNDS > 0)); then  # generation again, both engines in one process, in turns
    log "timing $format: bench_llama_cpp_interleaved, $INTERLEAVED_ROUNDS rounds"
    timed "$RESULTS/interleaved-$format.txt" "$INTERLEAVED" "$gguf" "$ours" "$INTERLEAVED_ROUNDS" 32 "$THREADS"
  fi
done

# ---- 5. the table ---------------------------------------------------------------------------
python3 "$REPO/tools/llama_cpp/bench_table.py" "$RESULTS" | tee "$RESULTS/table.md"
for summary in "$RESULTS"/interleaved-*.txt; do
  [[ -f $summary ]] && echo "$(basename "$summary" .txt): $(tail -n 1 "$summary")" | tee -a "$RESULTS/table.md"
done

case $KEEP in
  all) ;;
  quantized) rm -rf "$BF16_DIR" "$SCRATCH/air-${LAYERS}L-bf16.gguf" ;;
  none) rm -rf "$BF16_DIR" "$SCRATCH"/air-"${LAYERS}"L-* ;;
esac
log "results in $RESULTS; models left: $(ls -d "$SCRATCH"/air-"${LAYERS}"L-* 2>/dev/null | tr '\n' ' ')"
