#!/usr/bin/env python3
"""Print the markdown table of one or more bench/llama_cpp_cpu.sh runs (glm4moe against llama.cpp, CPU).

Reads, from each results directory the script wrote (several directories are pooled: their runs
count as more rounds of the same measurement):
  llama-<format>-<round>.json        llama-bench -o json (tests pp512 and tg16; llama-<format>.json too)
  glm-<format>-<mode>-<round>.json   glm4moe bench --json, mode = exact | fast-prompts | int8 | fast
  <result>.env                       waited, load, share of the CPU others took while the run went on
  ours-<format>.bytes                size of our checkpoint's safetensors files
  meta.txt, uptime.log               machine, versions, load before each timed command
and prints: the main table, each cell the best of the runs (fastest sample: the least disturbed on a
shared machine) with, in brackets, llama-bench's mean ± std or our median, and the ratios
ours/llama.cpp of the bests (our generation rate from the default mode's runs, fast, or exact's where
it did not run; prompts in the default mode and in exact; a mode that was not run shows nan); rows
for the other modes (int8, fast-prompts) if such runs exist; the paired ratios (each round's ours over the same round's llama.cpp: the two ran
minutes apart, so a machine whose speed drifts between minutes moves both); then per-run details
(read-kernel bandwidth, major page faults, others' CPU share, load).

Usage: python tools/llama_cpp/bench_table.py RESULTS_DIR [RESULTS_DIR ...]
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

FORMATS = [("bf16", "BF16"), ("int8", "Q8_0"), ("int4", "Q4_0")]
OURS_NAME = {"bf16": "bf16", "int8": "int8 (affine g64)", "int4": "int4 (affine g64)"}
MODES = ("fast", "exact", "int8", "fast-prompts")  # GLM_CPU_ACTIVATIONS values; the first two (the default, f32) fill the main table


def files(dirs: list[Path], pattern: str) -> list[Path]:
    """Non-empty files matching pattern, "*" standing for a round number (so "fast-*" is not "fast-prompts-1")."""
    name = re.compile(re.escape(pattern).replace(r"\*", r"\d+") + "$")
    return [path for d in dirs for path in sorted(d.iterdir()) if name.match(path.name) and path.read_text().strip()]


def llama_rates(paths: list[Path]) -> dict:
    """Samples of tests pp512 ("prompt") and tg16 ("gen") over llama-bench JSON files."""
    samples: dict[str, list[float]] = {"prompt": [], "gen": []}
    size = 0
    for path in paths:
        for test in json.loads(path.read_text()):
            samples["prompt" if test["n_gen"] == 0 else "gen"] += test["samples_ts"]
            size = test["model_size"]
    return {"size": size, **samples}


def mean_sd(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def environment(path: Path) -> str:
    env = path.with_name(path.name + ".env")
    if not env.exists():
        return ""
    e = json.loads(env.read_text())
    faults = f"; {e['major_faults_machine']} major faults (machine, load included)" if "major_faults_machine" in e else ""
    return f"{e['others_cpu_share']:.2f}; {e['load'].split()[0]}{faults}"


def label(path: Path) -> str:
    return f"{path.parent.name}/{path.stem.split('-')[-1]}"


def round_key(path: Path) -> tuple[str, str]:
    """(results directory, round number) of a timed run."""
    return (str(path.parent), path.stem.split("-")[-1])


def paired(llama_files: list[Path], ours: list[Path]) -> dict[str, list[float]]:
    """Per round present on both sides: ours / llama.cpp, median over each side's samples in that round."""
    llama_by_round = {round_key(path): llama_rates([path]) for path in llama_files}
    ratios: dict[str, list[float]] = {"gen": [], "prompt": []}
    for path in ours:
        theirs = llama_by_round.get(round_key(path))
        if not theirs or not theirs["gen"] or not theirs["prompt"]:
            continue
        r = json.loads(path.read_text())
        ratios["gen"].append(r["generation"][0]["tokens_per_s"] / statistics.median(theirs["gen"]))
        ratios["prompt"].append(r["prompt"][0]["tokens_per_s"] / statistics.median(theirs["prompt"]))
    return ratios


def main() -> None:
    dirs = [Path(arg) for arg in sys.argv[1:]]
    for d in dirs:
        if (d / "meta.txt").exists():
            print((d / "meta.txt").read_text().rstrip())
    print()
    print("| format (llama.cpp / ours) | size GB (llama.cpp / ours) | generate ctx 0: llama.cpp | ours (default) "
          "| ours/llama.cpp | prompt 512: llama.cpp | ours (default) | ours/llama.cpp | ours exact | ours/llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    details, other_rows, pair_rows = [], [], []
    for fmt, gguf_type in FORMATS:
        llama_files = files(dirs, f"llama-{fmt}.json") + files(dirs, f"llama-{fmt}-*.json")
        llama = llama_rates(llama_files)
        runs = {mode: [json.loads(p.read_text()) for p in files(dirs, f"glm-{fmt}-{mode}-*.json")]
                for mode in MODES}
        if not llama["gen"] or not llama["prompt"] or not any(runs.values()):
            continue
        lg, lp = max(llama["gen"]), max(llama["prompt"])
        if runs["fast"] or runs["exact"]:  # the main table's row (a run of int8 alone has none)
            # Generation of the default mode (fast: bf16 weights decode on VDPBF16PS in it), or exact's
            # where the default did not run.
            gen = [r["generation"][0]["tokens_per_s"] for r in (runs["fast"] or runs["exact"])]
            prompt_default = [r["prompt"][0]["tokens_per_s"] for r in runs["fast"]] or [float("nan")]
            prompt_exact = [r["prompt"][0]["tokens_per_s"] for r in runs["exact"]] or [float("nan")]
            g, pd, pe = max(gen), max(prompt_default), max(prompt_exact)
            size_files = [d / f"ours-{fmt}.bytes" for d in dirs if (d / f"ours-{fmt}.bytes").exists()]
            ours_size = (int(size_files[0].read_text()) if size_files
                         else (runs["fast"] or runs["exact"])[0]["weights_bytes"])
            print(f"| {gguf_type} / {OURS_NAME[fmt]} | {llama['size'] / 1e9:.2f} / {ours_size / 1e9:.2f} "
                  f"| {lg:.2f} ({mean_sd(llama['gen'], 2)}) | {g:.2f} ({statistics.median(gen):.2f}) | {g / lg:.2f} "
                  f"| {lp:.1f} ({mean_sd(llama['prompt'], 1)}) | {pd:.1f} ({statistics.median(prompt_default):.1f}) "
                  f"| {pd / lp:.2f} | {pe:.1f} ({statistics.median(prompt_exact):.1f}) | {pe / lp:.2f} |")
        for mode in MODES[2:]:
            if runs[mode]:
                fg = [r["generation"][0]["tokens_per_s"] for r in runs[mode]]
                fp = [r["prompt"][0]["tokens_per_s"] for r in runs[mode]]
                other_rows.append(f"| {gguf_type} / {OURS_NAME[fmt]} | {mode} | {lg:.2f} | {max(fg):.2f} ({statistics.median(fg):.2f}) "
                                  f"| {max(fg) / lg:.2f} | {max(fp):.1f} ({statistics.median(fp):.1f}) | {max(fp) / lp:.2f} |")
        for mode in MODES:
            ratios = paired(llama_files, files(dirs, f"glm-{fmt}-{mode}-*.json"))
            if ratios["gen"]:
                g_r, p_r = ratios["gen"], ratios["prompt"]
                pair_rows.append(f"| {gguf_type} / {OURS_NAME[fmt]} | {mode} | {len(g_r)} "
                                 f"| {statistics.median(g_r):.3f} ({min(g_r):.2f}-{max(g_r):.2f}) "
                                 f"| {statistics.median(p_r):.3f} ({min(p_r):.2f}-{max(p_r):.2f}) |")
        for path in llama_files:
            rates = llama_rates([path])
            details.append(f"| {fmt} | llama.cpp {label(path)} | {' '.join(f'{x:.2f}' for x in rates['gen'])} "
                           f"| {' '.join(f'{x:.1f}' for x in rates['prompt'])} | | | {environment(path)} |")
        for mode in MODES:
            for path in files(dirs, f"glm-{fmt}-{mode}-*.json"):
                r = json.loads(path.read_text())
                details.append(f"| {fmt} | ours {mode} {label(path)} | {r['generation'][0]['tokens_per_s']:.2f} "
                               f"| {r['prompt'][0]['tokens_per_s']:.1f} | {r['read_bandwidth_GBps']:.1f} GB/s "
                               f"| {r['major_page_faults_while_timing']} | {environment(path)} |")
    if other_rows:
        print("\nOurs in the other GLM_CPU_ACTIVATIONS modes run (int8: int8 activations for affine weights only;"
              " fast-prompts: bf16 activations for bf16 weights only in prompt steps, on packed panels or tokens"
              " in lanes), best (median):\n")
        print("| format | mode | generate, llama.cpp | ours | ours/llama.cpp | prompt 512, ours | ours/llama.cpp |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(other_rows))
    if pair_rows:
        print("\nPaired by round (ours / llama.cpp of the same round; median, range):\n")
        print("| format | mode | rounds | generate | prompt 512 |")
        print("|---|---|---|---|---|")
        print("\n".join(pair_rows))
    print("\n| format | run | generate tok/s | prompt-512 tok/s | read kernel | major faults "
          "| others' CPU share while running; load before |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(details))
    loads = []
    for d in dirs:
        if (d / "uptime.log").exists():
            loads += re.findall(r"load (?:average: )?([0-9.]+),? ([0-9.]+),? ([0-9.]+)", (d / "uptime.log").read_text())
    if loads:
        ones = [float(x[0]) for x in loads]
        print(f"\n1-minute load average before the {len(loads)} timed commands (attempts included): "
              f"{min(ones):.2f}-{max(ones):.2f}, median {statistics.median(ones):.2f}")


if __name__ == "__main__":
    main()
