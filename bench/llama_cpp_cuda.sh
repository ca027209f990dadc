#!/usr/bin/env bash
# llama.cpp side by side on one NVIDIA GPU: `glm4moe bench --device cuda` against llama.cpp's CUDA
# build (llama-bench -ngl 99) on the same synthetic GLM-4.5-Air-shaped weights (hidden 4096, 96
# heads of 128, 8 KV heads, 128 experts of 1408, top-8 + 1 shared, vocab 151552), cut to LAYERS
# decoder layers (layer 0 dense, the rest MoE), at comparable quantization: our mlx affine int4
# (group 64) against Q4_0, our int8 (group 64) against Q8_0. The GPU twin of bench/llama_cpp_cpu.sh.
#
# What it does, skipping any step whose output already exists under SCRATCH:
#   1. builds llama.cpp's llama-bench and llama-quantize with CUDA (GGML_CUDA=ON, one architecture
#      CUDA_ARCH, GGML_NATIVE=OFF, shared libraries, flash-attention kernels for f16 K/V only, the
#      cache type llama-bench uses) in LLAMA_BUILD, in the background while step 2 runs. The source:
#      LLAMA_SRC (a llama.cpp tree, or a .tar.gz/.tar.xz holding one; default: the tree vendored by
#      llama-cpp-python LLAMA_CPP_PYTHON_VERSION, fetched with pip as the CPU script does);
#   2. writes the synthetic bf16 checkpoint with `glm4moe bench --synthetic glm-4.5-air --dtype bf16`
#      (safetensors), then at the same time: converts it to a bf16 GGUF with llama.cpp's own
#      convert_hf_to_gguf.py (tools/llama_cpp/convert_synthetic.py) and runs `glm4moe quantize` to
#      int4 and int8 (group 64); then (build done) llama-quantize --pure to Q4_0 and Q8_0: the same
#      weights on both sides. The bf16 checkpoint and GGUF are deleted once not needed (memory);
#   3. times each format pair, one command at a time on the GPU: llama-bench (-ngl 99 -p PROMPTS
#      -n GEN -r REPS -fa FA -ub UBATCH, after its own warm-up run), then `glm4moe bench --device
#      cuda` once per mode of OUR_MODES (default: GLM_CUDA_ACTIVATIONS unset = int8 activations since 64baee5; int8:
#      GLM_CUDA_ACTIVATIONS=int8, the dp4a decode path), prompts of PROMPTS tokens each REPS + 1
#      times (the first of each length is a warm-up: kernels load lazily), GEN tokens generated at
#      context 0 after 3 untimed steps;
#   4. prints a markdown table (tok/s of both sides; ratios ours / llama.cpp's best configuration).
#
# Run on a GPU machine, in one command (an H100 or H200; nvcc, cmake, ninja, python3 with torch,
# transformers, numpy and safetensors; a glm4moe binary built with CUDA, or the project's build
# dependencies so this script builds one in GLM_BUILD):
#   LAYERS=6 bash bench/llama_cpp_cuda.sh /dev/shm/llcuda
# On this workplace's lent GPU machine (no network, no project build dependencies), from the repo
# root, with the llama.cpp source and our prebuilt binaries (scripts/gpu_carry.sh) carried along:
#   scripts/gpu_carry.sh unpack build-h100 && LD_LIBRARY_PATH=$PWD/build-h100/carry \
#   GLM=$PWD/build-h100/carry/glm4moe LLAMA_SRC=llama.cpp-src.tar.xz BUDGET_S=500 \
#   bash bench/llama_cpp_cuda.sh /dev/shm/llcuda
# Memory (files in SCRATCH, /dev/shm is best): at 6 layers the bf16 checkpoint and the bf16 GGUF are
# 26 GB each, int8 and Q8_0 14 GB each, int4 and Q4_0 7.5 GB each; the peak (checkpoint, GGUF, int4
# and int8 together) is ~75 GB: /dev/shm may need `mount -o remount,size=110G /dev/shm`. GGUF_DIR
# puts the bf16 GGUF elsewhere (a disk).
# Knobs (environment): LAYERS=6 FORMATS="int4 int8" OUR_MODES="default int8" PROMPTS=512,4096 GEN=32
#   REPS=3 FA=0,1 UBATCH=512,2048 (llama-bench's -ub; -b stays 2048) JOBS=<cores> CUDA_ARCH=90
#   LLAMA_BUILD=SCRATCH/llama-build  GLM=<repo>/build-cuda/glm4moe  GLM_BUILD=<repo>/build-cuda
#   LLAMA_COMMIT, GLM_COMMIT (labels for meta.txt; found with git, or the sdist's CHANGELOG, when not given)
#   BUDGET_S=0 (seconds; when > 0, a format pair whose timing would start later than BUDGET_S -
#   PAIR_S (default 80) seconds after the script started is skipped and said so: for lent machines
#   with a command time limit)   PACK=DIR (after the build, write DIR/llama-bin.tar.xz of the built
#   binaries and libraries, in 15 MiB parts .part0, .part1, ... when larger; unpack them into
#   LLAMA_BUILD/bin on another machine to skip the build)   KEEP=quantized (default; the bf16 files
#   are always removed once used) | none (also delete the quantized models at the end)
# Results (JSON of every run, build log, meta.txt, table.md) go to RESULTS=SCRATCH/results/<date-time>/.
set -euo pipefail
shopt -s inherit_errexit

SCRATCH=${1:?usage: bash bench/llama_cpp_cuda.sh SCRATCH_DIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAYERS=${LAYERS:-6}
FORMATS=${FORMATS-"int4 int8"}
OUR_MODES=${OUR_MODES:-"default int8"}
PROMPTS=${PROMPTS:-512,4096}
GEN=${GEN:-32}
REPS=${REPS:-3}
FA=${FA:-0,1}
UBATCH=${UBATCH:-512,2048}
JOBS=${JOBS:-$(nproc)}
CUDA_ARCH=${CUDA_ARCH:-90}
BUDGET_S=${BUDGET_S:-0}
PAIR_S=${PAIR_S:-80}
KEEP=${KEEP:-quantized}
PACK=${PACK:-}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
GLM_BUILD=${GLM_BUILD:-$REPO/build-cuda}
GLM=${GLM:-$GLM_BUILD/glm4moe}
GLM_COMMIT=${GLM_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}

mkdir -p "$SCRATCH"
SCRATCH=$(cd "$SCRATCH" && pwd)
LLAMA_SRC=${LLAMA_SRC:-$SCRATCH/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp}
LLAMA_BUILD=${LLAMA_BUILD:-$SCRATCH/llama-build}
GGUF_DIR=${GGUF_DIR:-$SCRATCH}
RESULTS=${RESULTS:-$SCRATCH/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS" "$GGUF_DIR"
BF16_DIR=$SCRATCH/air-${LAYERS}L-bf16
BF16_GGUF=$GGUF_DIR/air-${LAYERS}L-bf16.gguf
export LD_LIBRARY_PATH=$LLAMA_BUILD/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
log() { echo "[llama_cpp_cuda $(date +%H:%M:%S) +${SECONDS}s] $*" >&2; }

# ---- 1. sources and builds ------------------------------------------------------------------
if [[ -f $LLAMA_SRC ]]; then  # a tarball: the tree is the directory holding convert_hf_to_gguf.py
  mkdir -p "$SCRATCH/llama-src"
  tar -xf "$LLAMA_SRC" -C "$SCRATCH/llama-src"
  LLAMA_SRC=$(dirname "$(find "$SCRATCH/llama-src" -maxdepth 4 -name convert_hf_to_gguf.py | head -1)")
elif [[ ! -f $LLAMA_SRC/CMakeLists.txt ]]; then
  log "fetching llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (source) from PyPI"
  pip download --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$SCRATCH"
  tar -xzf "$SCRATCH/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$SCRATCH"
fi
LLAMA_COMMIT=${LLAMA_COMMIT:-$(git -C "$LLAMA_SRC" rev-parse --short HEAD 2>/dev/null ||
  grep -m1 -o 'ggml-org/llama.cpp@[0-9a-f]*' "$LLAMA_SRC/../../CHANGELOG.md" 2>/dev/null || echo unknown)}
log "llama.cpp $LLAMA_COMMIT from $LLAMA_SRC"

build_pid=
if [[ ! -x $LLAMA_BUILD/bin/llama-bench || ! -x $LLAMA_BUILD/bin/llama-quantize ]]; then
  log "building llama.cpp (CUDA, sm_$CUDA_ARCH, -j$JOBS) in $LLAMA_BUILD, in the background"
  (
    start=$SECONDS
    cmake -S "$LLAMA_SRC" -B "$LLAMA_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DGGML_NATIVE=OFF -DGGML_CUDA_NCCL=OFF \
      -DGGML_CUDA_FA_QUANTS=f16-f16 -DBUILD_SHARED_LIBS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
    cmake --build "$LLAMA_BUILD" -j"$JOBS" --target llama-bench llama-quantize
    echo "build seconds: $((SECONDS - start))"
  ) >"$RESULTS/llama-build.log" 2>&1 &
  build_pid=$!
fi
if [[ ! -x $GLM ]]; then
  log "building glm4moe (CUDA) in $GLM_BUILD"
  cmake -S "$REPO" -B "$GLM_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGLM_CUDA=ON >/dev/null
  cmake --build "$GLM_BUILD" -j"$JOBS" --target glm4moe
fi

# ---- 2. the models --------------------------------------------------------------------------
ours_dir() { echo "$SCRATCH/air-${LAYERS}L-$1"; }          # int4 | int8
gguf_file() { echo "$SCRATCH/air-${LAYERS}L-$1.gguf"; }     # Q4_0 | Q8_0
missing_gguf=0 missing_ours=0
for format in $FORMATS; do
  [[ -f $(gguf_file "Q${format#int}_0") ]] || missing_gguf=1
  [[ -f $(ours_dir "$format")/config.json ]] || missing_ours=1
done
need_bf16_gguf=0
[[ $missing_gguf == 0 || -f $BF16_GGUF ]] || need_bf16_gguf=1
need_bf16=$((missing_ours || need_bf16_gguf))

if [[ $need_bf16 == 1 && ! -f $BF16_DIR/synthetic.json ]]; then
  log "writing the synthetic bf16 checkpoint ($LAYERS layers) to $BF16_DIR"
  "$GLM" bench --synthetic glm-4.5-air --layers "$LAYERS" --dtype bf16 --synthetic-dir "$BF16_DIR" \
    --prompt-tokens 1 --gen-tokens 1 --threads "$JOBS" >/dev/null
fi
pids=()
if [[ $need_bf16_gguf == 1 && ! -f $BF16_GGUF ]]; then
  log "converting to $BF16_GGUF (convert_hf_to_gguf.py), in the background"
  (
    python3 "$REPO/tools/llama_cpp/convert_synthetic.py" --llama-cpp "$LLAMA_SRC" --model "$BF16_DIR" \
      --outfile "$BF16_GGUF.part" --outtype bf16 >"$RESULTS/convert.log" 2>&1
    mv "$BF16_GGUF.part" "$BF16_GGUF"
    log "bf16 GGUF written"
  ) &
  pids+=($!)
fi
for format in $FORMATS; do
  out=$(ours_dir "$format")
  [[ ! -f $out/config.json ]] || continue
  log "glm4moe quantize --bits ${format#int} --group-size 64, in the background"
  (
    rm -rf "$out.part"
    "$GLM" quantize --model "$BF16_DIR" --bits "${format#int}" --group-size 64 --output "$out.part" \
      >"$RESULTS/quantize-$format.log" 2>&1
    mv "$out.part" "$out"
    log "$format written"
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
rm -rf "$BF16_DIR"  # every consumer of the checkpoint is done

if [[ -n $build_pid ]]; then
  log "waiting for the llama.cpp build"
  wait "$build_pid" || { tail -30 "$RESULTS/llama-build.log" >&2; exit 1; }
  log "llama.cpp built: $(tail -1 "$RESULTS/llama-build.log")"
  if [[ -n $PACK ]]; then
    mkdir -p "$PACK"
    (cd "$LLAMA_BUILD" && tar -cf - bin/llama-bench bin/llama-quantize bin/*.so*) | xz -T"$JOBS" -6 >"$PACK/llama-bin.tar.xz"
    if (($(stat -c %s "$PACK/llama-bin.tar.xz") > 15 * 1024 * 1024)); then
      split -b 15M -d -a 1 "$PACK/llama-bin.tar.xz" "$PACK/llama-bin.tar.xz.part" && rm "$PACK/llama-bin.tar.xz"
    fi
    log "packed the llama.cpp binaries into $PACK: $(ls "$PACK" | grep llama-bin | tr '\n' ' ')"
  fi
fi
for format in $FORMATS; do
  type=Q${format#int}_0 out=$(gguf_file "Q${format#int}_0")
  [[ ! -f $out ]] || continue
  log "llama-quantize --pure $type"
  "$LLAMA_BUILD/bin/llama-quantize" --pure "$BF16_GGUF" "$out.part" "$type" "$JOBS" >"$RESULTS/llama-quantize-$type.log" 2>&1
  mv "$out.part" "$out"
done
rm -f "$BF16_GGUF"

# ---- 3. timing ------------------------------------------------------------------------------
{
  echo "date: $(date -Is)"
  echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader)"
  echo "host: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "llama.cpp: $LLAMA_COMMIT, CUDA build sm_$CUDA_ARCH ($(nvcc --version | grep -o 'release [0-9.]*'))"
  echo "glm4moe: $GLM ($GLM_COMMIT)"
  echo "layers: $LAYERS, prompts: $PROMPTS, generated: $GEN, reps: $REPS, fa: $FA, ubatch: $UBATCH"
} >"$RESULTS/meta.txt"
cat "$RESULTS/meta.txt" >&2
our_prompts=$PROMPTS
for _ in $(seq 1 "$REPS"); do our_prompts+=",$PROMPTS"; done

for format in $FORMATS; do
  if ((BUDGET_S > 0 && SECONDS + PAIR_S > BUDGET_S)); then
    log "SKIPPED $format: ${SECONDS}s gone, a pair takes ~${PAIR_S}s, budget ${BUDGET_S}s"
    continue
  fi
  gguf=$(gguf_file "Q${format#int}_0") ours=$(ours_dir "$format")
  stat -c %s "$gguf" >"$RESULTS/llama-$format.bytes"
  log "timing $format: llama-bench $(basename "$gguf")"
  "$LLAMA_BUILD/bin/llama-bench" -m "$gguf" -ngl 99 -p "$PROMPTS" -n "$GEN" -r "$REPS" -fa "$FA" -ub "$UBATCH" \
    -o json >"$RESULTS/llama-$format.json" 2>"$RESULTS/llama-$format.stderr" ||
    { tail -20 "$RESULTS/llama-$format.stderr" >&2; log "llama-bench failed on $format"; }
  for mode in $OUR_MODES; do
    setting=()  # default: GLM_CUDA_ACTIVATIONS unset
    [[ $mode == default ]] || setting=("GLM_CUDA_ACTIVATIONS=$mode")
    log "timing $format: glm4moe bench --device cuda ($mode)"
    env -u GLM_CUDA_ACTIVATIONS "${setting[@]}" "$GLM" bench --device cuda --model "$ours" \
      --prompt-tokens "$our_prompts" --context 0 --gen-tokens "$GEN" --json \
      >"$RESULTS/glm-$format-$mode.json" 2>"$RESULTS/glm-$format-$mode.stderr" ||
      { tail -20 "$RESULTS/glm-$format-$mode.stderr" >&2; log "glm4moe bench failed on $format ($mode)"; }
  done
done

# ---- 4. the table ---------------------------------------------------------------------------
python3 - "$RESULTS" <<'EOF' | tee "$RESULTS/table.md"
import json, statistics, sys
from pathlib import Path

results = Path(sys.argv[1])
def load(name):
    path = results / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

print("| format | side | config | prompt 512 tok/s | prompt 4096 tok/s | generate (context 0) tok/s |")
print("|---|---|---|---|---|---|")
ratios = []
for fmt, gtype in (("int4", "Q4_0"), ("int8", "Q8_0")):
    llama = load(f"llama-{fmt}.json")
    runs = {m: load(f"glm-{fmt}-{m}.json") for m in ("default", "int8")}
    if llama is None and not any(runs.values()):
        continue
    best = {}  # column -> best llama.cpp mean over configurations
    configs = {}
    for t in llama or []:
        key = f"fa {t['flash_attn']}, ub {t['n_ubatch']}"
        column = f"pp{t['n_prompt']}" if t["n_gen"] == 0 else "tg"
        configs.setdefault(key, {})[column] = (t["avg_ts"], t["stddev_ts"])
        best[column] = max(best.get(column, 0.0), t["avg_ts"])
    size = (results / f"llama-{fmt}.bytes").read_text().strip() if (results / f"llama-{fmt}.bytes").exists() else "?"
    for key, c in configs.items():
        cell = lambda col: f"{c[col][0]:.1f} ± {c[col][1]:.1f}" if col in c else "-"
        print(f"| {fmt} | llama.cpp {gtype} ({int(size) / 1e9:.2f} GB) | {key} | {cell('pp512')} | {cell('pp4096')} | {cell('tg')} |")
    ours = {}
    for mode, run in runs.items():
        if run is None:
            continue
        prompt = {}
        for p in run["prompt"]:
            prompt.setdefault(p["tokens"], []).append(p["tokens_per_s"])
        warm = {n: v[1:] or v for n, v in prompt.items()}  # the first of each length warms up
        gen = run["generation"][0]
        ours[mode] = {"pp512": statistics.mean(warm[512]) if 512 in warm else None,
                      "pp4096": statistics.mean(warm[4096]) if 4096 in warm else None,
                      "tg": gen["tokens_per_s"]}
        def pcell(n):
            if n not in warm:
                return "-"
            return f"{statistics.mean(warm[n]):.1f} (runs {', '.join(f'{x:.0f}' for x in warm[n])}; cold {prompt[n][0]:.0f})"
        copy = run.get("device_copy_bandwidth_GBps", 0)
        print(f"| {fmt} | ours {fmt} g64 ({run['weights_bytes'] / 1e9:.2f} GB) | GLM_CUDA_ACTIVATIONS="
              f"{'int8' if mode == 'int8' else 'unset'} | {pcell(512)} | {pcell(4096)} | "
              f"{gen['tokens_per_s']:.1f} ({gen['GBps']:.0f} GB/s = {100 * gen['fraction_of_yardstick']:.0f}% of copy {copy:.0f} GB/s) |")
    if best and ours:
        def ratio(mode, col):
            v = ours.get(mode, {}).get(col)
            return f"**{v / best[col]:.2f}**" if v and best.get(col) else "-"
        ratios.append(f"| {fmt} / {gtype} | {ratio('default', 'pp512')} | {ratio('default', 'pp4096')} | "
                      f"{ratio('default', 'tg')} | {ratio('int8', 'tg')} |")
if ratios:
    print()
    print("Ratios ours / llama.cpp (llama.cpp: its best configuration of those run, per column):")
    print()
    print("| pair | prompt 512 | prompt 4096 | generate, ours by default (int8 activations) | generate, GLM_CUDA_ACTIVATIONS=int8 |")
    print("|---|---|---|---|---|")
    print("\n".join(ratios))
EOF

if [[ $KEEP == none ]]; then rm -rf "$SCRATCH"/air-"${LAYERS}"L-*; fi
log "results in $RESULTS"
