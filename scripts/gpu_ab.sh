#!/usr/bin/env bash
# Interleaved A/B decode timings on one GPU, in one call: two or more
# variants (binaries, or one binary under different environment settings)
# alternate, round after round, on the same synthetic GLM-4.5-Air checkpoint,
# so machine drift falls on every side alike. Repeated 8-layer runs on one
# card vary by +-2-3% (docs/cuda.md, "Session 13"): use 4 or more rounds of
# 256 tokens to see a few-percent change.
#
#   scripts/gpu_ab.sh [--rounds N] [--dtypes "fp8 int4"] [--layers L] [--contexts "0 4096"]
#                     [--tokens T] [--dir /dev/shm/glm-ab] [--device cuda]
#                     A B [C ...]
#
# Each variant is "BINARY" or "ENV=VALUE[,ENV=VALUE...]:BINARY", e.g.
#   scripts/gpu_ab.sh GLM_CUDA_PERSISTENT_MOE=0:build/glm4moe build/glm4moe
#   scripts/gpu_ab.sh /tmp/glm4moe_base build/glm4moe
# It prints every run's generation rate, then per dtype and context the rates
# of each side, their means and the ratio of each mean to A's. The synthetic
# weights are written once per dtype under --dir (a tmpfs keeps the first
# run's file reads out of the timing) and kept for the next call.
set -euo pipefail

rounds=4 dtypes="fp8 int4" layers=8 contexts="0" tokens=256 dir=/dev/shm/glm-ab device=cuda
while [ $# -gt 0 ] && [[ "$1" == --* ]]; do
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
[ $# -ge 2 ] || { sed -n '2,19p' "$0" >&2; exit 2; }
variants=("$@")
letters=(A B C D E F G H)
[ ${#variants[@]} -le ${#letters[@]} ] || { echo "at most ${#letters[@]} variants" >&2; exit 2; }

# Runs variant $1 (a spec as above) on dtype $2; prints "context rate" lines.
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
    for side in "${!variants[@]}"; do
      while read -r context rate; do
        echo "$dtype context $context round $round ${letters[$side]}: $rate tok/s"
        echo "$dtype $context $side $rate" >> "$results"
      done < <(run_variant "${variants[$side]}" "$dtype")
    done
  done
done

echo
for side in "${!variants[@]}"; do echo "${letters[$side]} = ${variants[$side]}"; done
python3 - "$results" "${#variants[@]}" <<'EOF'
import collections, sys
rates = collections.defaultdict(list)
for line in open(sys.argv[1]):
    dtype, context, side, rate = line.split()
    rates[(dtype, int(context), int(side))].append(float(rate))
sides = "ABCDEFGH"[:int(sys.argv[2])]
print("| dtype | context | " + " | ".join(f"{s} tok/s" for s in sides) + " | " +
      " | ".join(f"mean {s}" for s in sides) + " | " + " | ".join(f"{s} / A" for s in sides[1:]) + " |")
print("|---" * (2 + 3 * len(sides) - 1) + "|")
for dtype, context in sorted({(d, c) for d, c, _ in rates}):
    runs = [rates[(dtype, context, i)] for i in range(len(sides))]
    if not all(runs):
        continue
    means = [sum(r) / len(r) for r in runs]
    print(f"| {dtype} | {context} | " + " | ".join(", ".join(f"{x:.1f}" for x in r) for r in runs) + " | " +
          " | ".join(f"{m:.1f}" for m in means) + " | " + " | ".join(f"{m / means[0]:.3f}" for m in means[1:]) + " |")
EOF
