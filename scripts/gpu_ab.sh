#!/usr/bin/env bash
# Interleaved A/B decode timings on one GPU, in one call: two variants (two
# binaries, or one binary under two environment settings) alternate, round
# after round, on the same synthetic GLM-4.5-Air checkpoint, so machine drift
# falls on both sides alike. Repeated 8-layer runs on one card vary by +-2-3%
# (docs/cuda.md, "Session 13"): use 4 or more rounds of 256 tokens to see a
# few-percent change.
#
#   scripts/gpu_ab.sh [--rounds N] [--dtypes "fp8 int4"] [--layers L] [--contexts "0 4096"]
#                     [--tokens T] [--dir /dev/shm/glm-ab] [--device cuda]
#                     A B
#
# A and B are each "BINARY" or "ENV=VALUE[,ENV=VALUE...]:BINARY", e.g.
#   scripts/gpu_ab.sh GLM_CUDA_PERSISTENT_MOE=0:build/glm4moe build/glm4moe
#   scripts/gpu_ab.sh /tmp/glm4moe_base build/glm4moe
# It prints every run's generation rate, then per dtype and context the rates
# of each side, their means and the ratio B / A of the means. The synthetic
# weights are written once per dtype under --dir (a tmpfs keeps the first
# run's file reads out of the timing) and kept for the next call.
set -euo pipefail

rounds=4 dtypes="fp8 int4" layers=8 contexts="0" tokens=256 dir=/dev/shm/glm-ab device=cuda
while [ $# -gt 2 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --dtypes) dtypes="$2"; shift 2 ;;
    --layers) layers="$2"; shift 2 ;;
    --contexts) contexts="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -eq 2 ] || { sed -n '2,19p' "$0" >&2; exit 2; }
variants=("$1" "$2")

# Runs variant $1 (A or B spec) on dtype $2; prints "context rate" lines.
run_variant() {
  local spec="$1" dtype="$2" binary="$1" settings=()
  if [[ "$spec" == *:* ]]; then
    binary="${spec#*:}"
    IFS=',' read -r -a settings <<< "${spec%%:*}"
  fi
  # shellcheck disable=SC2086  # contexts is a list of numbers
  env "${settings[@]}" "$binary" bench --device "$device" --synthetic glm-4.5-air --layers "$layers" \
    --prompt-tokens 16 --dtype "$dtype" --synthetic-dir "$dir/$dtype-$layers" --context $contexts \
    --gen-tokens "$tokens" 2>&1 |
    sed -n 's/^generate at context \([0-9]*\): \([0-9.]*\) tok\/s.*/\1 \2/p'
}

results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for dtype in $dtypes; do
  for round in $(seq 1 "$rounds"); do
    for side in 0 1; do
      while read -r context rate; do
        echo "$dtype context $context round $round ${side/0/A}: $rate tok/s" | sed 's/ 1:/ B:/'
        echo "$dtype $context $side $rate" >> "$results"
      done < <(run_variant "${variants[$side]}" "$dtype")
    done
  done
done

echo
echo "A = ${variants[0]}"
echo "B = ${variants[1]}"
python3 - "$results" <<'EOF'
import collections, sys
rates = collections.defaultdict(list)
for line in open(sys.argv[1]):
    dtype, context, side, rate = line.split()
    rates[(dtype, int(context), int(side))].append(float(rate))
print("| dtype | context | A tok/s | B tok/s | mean A | mean B | B / A |")
print("|---|---|---|---|---|---|---|")
for dtype, context in sorted({(d, c) for d, c, _ in rates}):
    a, b = rates[(dtype, context, 0)], rates[(dtype, context, 1)]
    if not a or not b:
        continue
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    print(f"| {dtype} | {context} | {', '.join(f'{x:.1f}' for x in a)} | {', '.join(f'{x:.1f}' for x in b)} "
          f"| {mean_a:.1f} | {mean_b:.1f} | {mean_b / mean_a:.3f} |")
EOF
