"""Turns a pytest-benchmark JSON of bench/test_bench_ops.py into a markdown
table: median times, speedups measured side by side in that one run, achieved
GB/s and the copy bandwidth at the same size.

    python bench/report.py build/bench.json > bench/results/<date>-cpu.md
"""

import json
import platform
import sys
from collections import defaultdict

import torch

from diffaccel.benchmarking import CASES, SHAPES


def main(path):
    data = json.load(open(path))
    median = defaultdict(dict)  # (case, shape) -> impl -> seconds
    nbytes = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        key = (info["case"], info["shape"])
        median[key][info["impl"]] = b["stats"]["median"]
        nbytes[key] = info["bytes"]
    copy_gbs = {shape: nbytes[("copy", shape)] / median[("copy", shape)]["copy"] / 1e9 for (c, shape) in median if c == "copy"}
    m = data["machine_info"]
    print(f"# diffaccel CPU benchmarks, {data['datetime'][:10]}\n")
    print(f"- machine: {m.get('cpu', {}).get('brand_raw', platform.processor())}, {m.get('cpu', {}).get('count', '?')} cores; "
          f"python {m['python_version']}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print("- cases: " + "; ".join(f"{c.name} = {c.description}" for c in CASES.values()))
    print("- shapes: " + ", ".join(f"{name} = {tuple(dims)}" for name, dims in SHAPES.items()))
    print("- float32; times are pytest-benchmark medians; speedups compare medians from this one run")
    print("- GB/s = bytes the op must read + write / median time; copy = dst.copy_(src) at the same size; "
          "floor x = fused time / (bytes / copy bandwidth)\n")
    print("| case | shape | fused us | eager ref us | compiled ref us | vs eager | vs compiled | fused GB/s | copy GB/s | floor x |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    calls = {}
    for b in data["benchmarks"]:
        if "model_calls" in b["extra_info"]:
            calls[b["extra_info"]["case"]] = b["extra_info"]["model_calls"]
    for (case, shape), t in sorted(median.items()):
        if case == "copy" or case in calls or "fused" not in t:
            continue
        fused = t["fused"]
        gbs = nbytes[(case, shape)] / fused / 1e9
        cells = [case, shape, f"{fused * 1e6:.1f}", f"{t.get('eager_reference', float('nan')) * 1e6:.1f}",
                 f"{t.get('compiled_reference', float('nan')) * 1e6:.1f}",
                 f"{t.get('eager_reference', float('nan')) / fused:.2f}x", f"{t.get('compiled_reference', float('nan')) / fused:.2f}x",
                 f"{gbs:.1f}", f"{copy_gbs[shape]:.1f}", f"{copy_gbs[shape] / gbs:.2f}"]
        print("| " + " | ".join(cells) + " |")
    loops = [(case, shape, t) for (case, shape), t in sorted(median.items()) if case in calls and "fused" in t]
    if loops:
        print("\nWhole 20-step loop with a zero-cost model (the time a user pays beyond the network):\n")
        print("| sampler | shape | model calls | fused us/call | reference us/call | speedup |")
        print("|---|---|---:|---:|---:|---:|")
        for case, shape, t in loops:
            n = calls[case]
            ref = t.get("eager_reference", float("nan"))
            print(f"| {case[len('loop_'):]} | {shape} | {n} | {t['fused'] / n * 1e6:.1f} | {ref / n * 1e6:.1f} | {ref / t['fused']:.1f}x |")
    quantile = [(shape, t) for (case, shape), t in sorted(median.items()) if "torch_quantile" in t]
    if quantile:
        print("\nDynamic threshold against torch.quantile (diffusers' formulation):\n")
        print("| shape | fused us | torch.quantile us | speedup |")
        print("|---|---:|---:|---:|")
        for shape, t in quantile:
            print(f"| {shape} | {t['fused'] * 1e6:.1f} | {t['torch_quantile'] * 1e6:.1f} | {t['torch_quantile'] / t['fused']:.1f}x |")


if __name__ == "__main__":
    main(sys.argv[1])
