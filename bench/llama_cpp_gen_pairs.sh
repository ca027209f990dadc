#!/usr/bin/env bash
# Generation only, llama.cpp and glm4moe back to back, pair after pair (~10 s a pair), on the CPU.
#
# bench/llama_cpp_cpu.sh runs a whole round (llama-bench's prompt and generation, then ours in each
# mode) before the next, ~30-60 s apart; on a VM whose read bandwidth flips between two states from
# one minute to the next (docs/benchmarks.md, sessions 27-28) the two sides of a round often meet
# different states, and paired generation ratios spread over 0.7-3x. Here each pair is one
# llama-bench generation of 32 tokens (-p 0 -n 32 -r 1) and right after it one `glm4moe bench`
# generation of 32 tokens, and the median of the pairs' ratios is reported.
# bench/llama_cpp/interleaved.cpp goes further: both engines in one process, rounds of ~2 s in
# turns, so a round's two sides meet the same state.
#
#   bench/llama_cpp_gen_pairs.sh GGUF OUR_CHECKPOINT_DIR [PAIRS=16] [OUT=gen-pairs.txt]
#
# Knobs: LLAMA_BUILD=/work/llamacpp-build (llama-bench from bench/llama_cpp_cpu.sh),
#   GLM=build/glm4moe, THREADS=2. Each line of OUT: pair, llama.cpp tok/s, ours tok/s, our read
#   kernel's GB/s in that run (the VM's state). Run the pairs of one format together: both files
#   then stay in the page cache (ours reports major page faults when they do not).
set -euo pipefail
gguf=$1 ours=$2 pairs=${3:-16} out=${4:-gen-pairs.txt}
llama_bench=${LLAMA_BUILD:-/work/llamacpp-build}/bin/llama-bench
glm=${GLM:-build/glm4moe}
threads=${THREADS:-2}
: >"$out"
for i in $(seq 1 "$pairs"); do
  llama=$("$llama_bench" -m "$gguf" -p 0 -n 32 -t "$threads" -r 1 -o json 2>/dev/null |
    python3 -c "import json, sys; print(json.load(sys.stdin)[0]['avg_ts'])")
  glm_rate=$("$glm" bench --model "$ours" --prompt-tokens 16 --gen-tokens 32 --threads "$threads" \
    --no-prompt-components --json 2>/dev/null |
    python3 -c "import json, sys; d = json.load(sys.stdin); print(d['generation'][0]['tokens_per_s'], d['read_bandwidth_GBps'])")
  echo "$i $llama $glm_rate" | tee -a "$out"
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
ratios = [float(ours) / float(llama) for _, llama, ours, _ in rows]
print(f"{len(ratios)} pairs: ours/llama.cpp median {statistics.median(ratios):.3f} "
      f"(range {min(ratios):.2f}-{max(ratios):.2f}); llama.cpp median {statistics.median(float(r[1]) for r in rows):.2f} "
      f"tok/s, ours {statistics.median(float(r[2]) for r in rows):.2f}")
PY
