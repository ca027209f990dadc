#!/usr/bin/env bash
# Moves prebuilt CUDA binaries to a GPU machine that cannot build quickly
# (the device tool copies the working tree plus at most 64 MiB of ignored
# files, and has no Debian dev packages):
#
#   scripts/gpu_carry.sh pack [BUILD_DIR]     here: strip glm4moe, test_cuda and bench_cuda_ops,
#                                             add libutf8proc, write BUILD_DIR/carry.tar.xz
#   scripts/gpu_carry.sh unpack [BUILD_DIR]   there: extract into BUILD_DIR/carry and link the
#                                             source path compiled into the tests (GLM_SOURCE_DIR)
#
# then: LD_LIBRARY_PATH=BUILD_DIR/carry scripts/gpu_check.sh --no-build --build-dir BUILD_DIR/carry ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-}"
build_dir="$(realpath -m "${2:-$root/build-h100}")"
case "$mode" in
  pack)
    mkdir -p "$build_dir/carry"
    for binary in glm4moe test_cuda bench_cuda_ops; do
      [ -f "$build_dir/$binary" ] && strip -o "$build_dir/carry/$binary" "$build_dir/$binary"
    done
    cp -L "$(ldconfig -p | awk '/libutf8proc.so.2 /{print $NF; exit}')" "$build_dir/carry/"
    # xz -9's 64 MiB window sees the three binaries' common device code once:
    # 35 MB at the default level, 12.6 MB so (the device tool carries 64 MiB)
    tar -C "$build_dir/carry" -cf - . | xz -9e -T1 >"$build_dir/carry.tar.xz"
    ls -la "$build_dir/carry.tar.xz"
    ;;
  unpack)
    mkdir -p "$build_dir/carry"
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
      "$build_dir/carry.tar.xz" "$build_dir/carry"
    source_dir="$(grep -m1 '^CMAKE_HOME_DIRECTORY' "$build_dir/CMakeCache.txt" 2>/dev/null | cut -d= -f2 || true)"
    if [ -n "$source_dir" ] && [ ! -e "$source_dir" ]; then
      mkdir -p "$(dirname "$source_dir")" && ln -s "$root" "$source_dir"
    fi
    ;;
  *) echo "usage: $0 pack|unpack [BUILD_DIR]" >&2; exit 2 ;;
esac
