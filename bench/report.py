"""Turns a pytest-benchmark JSON of bench/ into a markdown report: median
times, speedups measured side by side in that one run, achieved GB/s and the
copy and triad bandwidth at the same size.

    python bench/report.py build/bench-cpu.json > bench/results/<date>-cpu.md
    python bench/report.py build/bench-gpu.json [more.json ...] > bench/results/<date>-<card>.md
    python bench/report.py build/bench-cpu.json --before build/bench-before.json > ...

--before: the op benchmarks of an earlier build (bench/compare.sh makes one),
shown beside this run's as "before us" and "before % copy" (each against the
copy of its own run). Runs of the two builds alternated on a noisy machine:
give every run (several JSONs, and --before once per earlier run); a case
timed in several runs gets the median of its runs' medians.

CPU runs time the compiled kernel as impl "fused"; GPU runs time the "cuda"
and "triton" backends (each timed call there runs the op `reps` times).
"""

import json
import platform
import statistics
import sys
from collections import defaultdict

import torch

from diffaccel.benchmarking import CASES

FUSED = ("fused", "cuda", "triton")


# Cases with a table of their own (not op x shape x dtype rows): ComfyUI's samplers,
# the Brownian tree, k-diffusion's SDE samplers, gradients through the ops.
_OWN_TABLE_CASES = ("comfyui_", "brownian_tree", "kd_", "gradient_")
# Case name of test_copy_same_bytes, followed by the number of tensors.
_SAME_BYTES_COPY = "copy_same_bytes_"


def _us(seconds):
    return f"{seconds * 1e6:.1f}" if seconds == seconds else "-"


def _medians(benchmarks):
    """(case, shape, dtype) -> impl -> median seconds per op call (the median of
    the runs' medians where a benchmark was run more than once), and the bytes
    of each key."""
    runs, nbytes = defaultdict(lambda: defaultdict(list)), {}
    for b in benchmarks:
        info = b["extra_info"]
        key = (info["case"], info["shape"], info.get("dtype", "fp32"))
        runs[key][info["impl"]].append(b["stats"]["median"] / info.get("reps", 1))
        nbytes[key] = info["bytes"]
    median = defaultdict(dict)
    for key, impls in runs.items():
        for impl, times in impls.items():
            median[key][impl] = statistics.median(times)
    return median, nbytes


def _is_floor(case):
    """The floors' own benchmarks: copy, triad and the copies of an op's bytes."""
    return case in ("copy", "triad") or case.startswith(_SAME_BYTES_COPY)


def _same_bytes_gbs(median, nbytes):
    """(tensors moved, shape, dtype) -> GB/s of the copy that moves as many bytes
    as an op reading and writing that many tensors of the shape (bench/test_bench_ops.py
    test_copy_same_bytes; two tensors: the copy itself); empty for a run without them."""
    gbs = {
        (int(c[len(_SAME_BYTES_COPY) :]), s, d): nbytes[(c, s, d)] / t["copy"] / 1e9
        for (c, s, d), t in median.items()
        if c.startswith(_SAME_BYTES_COPY)
    }
    if gbs:
        gbs.update({(2, s, d): v for (s, d), v in _floor_gbs(median, nbytes, "copy").items()})
    return gbs


def _floor_gbs(median, nbytes, name):
    """(shape, dtype) -> GB/s of the copy or triad benchmark."""
    return {(s, d): nbytes[(c, s, d)] / t[name] / 1e9 for (c, s, d), t in median.items() if c == name}


def _copy_shares(runs):
    """(case, shape, dtype) -> the median over runs of the fused op's share of
    the copy bandwidth measured in the same run (a run: one JSON's
    benchmarks). On a shared VM a process's memory can be fast or slow as a
    whole (on 2026-12-04 the copy beyond the cache took 230-270 us in some
    runs and 420-730 us in others): a median of times over runs mixes that
    in, a share within each run does not."""
    shares = defaultdict(list)
    for benchmarks in runs:
        median, nbytes = _medians(benchmarks)
        copy_gbs = _floor_gbs(median, nbytes, "copy")
        for (case, shape, dtype), t in median.items():
            if "fused" in t and (shape, dtype) in copy_gbs:
                gbs = nbytes[(case, shape, dtype)] / t["fused"] / 1e9
                shares[(case, shape, dtype)].append(gbs / copy_gbs[(shape, dtype)])
    return {key: statistics.median(v) for key, v in shares.items()}


def main(*args):
    paths = list(args)
    before = before_commit = None
    before_benchmarks, before_runs = [], []
    while "--before" in paths:
        at = paths.index("--before")
        before_data = json.load(open(paths[at + 1]))
        before_benchmarks += before_data["benchmarks"]
        before_runs.append(before_data["benchmarks"])
        before_commit = before_data.get("commit_info", {}).get("id", "unknown")[:10]
        del paths[at : at + 2]
    if before_benchmarks:
        before = _medians(before_benchmarks)
    data = json.load(open(paths[0]))
    runs = [list(data["benchmarks"])]
    for extra in paths[1:]:  # further runs of the suite (the GPU check splits it; alternated runs repeat it)
        runs.append(json.load(open(extra))["benchmarks"])
        data["benchmarks"] += runs[-1]
    median, nbytes = _medians(data["benchmarks"])
    calls = {}
    faults = defaultdict(dict)  # case -> impl -> minor page faults per step (CPU scheduler loops)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "faults_per_step" in info:
            faults[info["case"]][info["impl"]] = info["faults_per_step"]
        if "model_calls" in info:
            calls[info["case"]] = info["model_calls"]
    copy_gbs = _floor_gbs(median, nbytes, "copy")
    triad_gbs = _floor_gbs(median, nbytes, "triad")
    same_bytes_gbs = _same_bytes_gbs(median, nbytes)
    before_copy_gbs = _floor_gbs(*before, "copy") if before else {}
    fused_impls = [i for i in FUSED if any(i in t for t in median.values())]
    gpu = any("device" in b["extra_info"] for b in data["benchmarks"])
    m = data["machine_info"]
    if gpu:
        device = next(b["extra_info"]["device"] for b in data["benchmarks"] if "device" in b["extra_info"])
        print(f"# diffaccel GPU benchmarks, {data['datetime'][:10]}, {device}\n")
        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = "not installed"
        print(
            f"- {device}; python {m['python_version']}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
            f"triton {triton_version}"
        )
        timings = sorted({b["extra_info"].get("timing", "loop") for b in data["benchmarks"]})
        print(
            "- each timed call runs the op `reps` times and synchronizes once; times are per op; "
            f"timing: {', '.join(timings)} "
            "(graph = the reps captured in one CUDA graph and replayed: device time)"
        )
    else:
        print(f"# diffaccel CPU benchmarks, {data['datetime'][:10]}\n")
        print(
            f"- machine: {m.get('cpu', {}).get('brand_raw', platform.processor())}, "
            f"{m.get('cpu', {}).get('count', '?')} cores; "
            f"python {m['python_version']}; torch {torch.__version__}; {torch.get_num_threads()} threads"
        )
    print("- cases: " + "; ".join(f"{c.name} = {c.description}" for c in CASES.values()))
    print("- times are pytest-benchmark medians; speedups compare medians from this one run")
    print(
        "- GB/s = bytes the op must read + write / median time; copy = dst.copy_(src) at the same size "
        "(read + write); % copy = achieved GB/s / copy GB/s; triad = STREAM's a = b + s * c at the same size "
        "(torch.add with alpha and out=: two reads, one write), % triad likewise"
    )
    if same_bytes_gbs:
        print(
            "- same-bytes copy = dst.copy_(src) moving as many bytes as the op (src holds half the tensors "
            "the op reads and writes), so its working set sits where the op's does (in the cache or beyond "
            "it); % same-bytes copy likewise"
        )
    if before:
        print(
            f"- before: the same op benchmarks on commit {before_commit}, run just before this one on the "
            "same machine (bench/compare.sh; its % copy against the copy of its own run)"
        )
    print()
    op_keys = [
        key
        for key, t in median.items()
        if not _is_floor(key[0])
        and key[0] not in calls
        and not key[0].startswith(_OWN_TABLE_CASES)
        and any(i in t for i in fused_impls)
    ]
    # Columns of the compiled reference only where it was timed.
    # (A run of the fused ops and the floors alone, as bench/compare.sh makes, has no reference columns.)
    has_compiled = any("compiled_reference" in t for t in median.values())
    has_eager = any("eager_reference" in t for t in median.values())
    head = ["case", "shape", "dtype"] + [f"{i} us" for i in fused_impls] + (["eager ref us"] if has_eager else [])
    if has_compiled:
        head += ["compiled ref us", "best vs eager", "best vs compiled"]
    elif has_eager:
        head += ["best vs eager"]
    head += [f"{i} GB/s" for i in fused_impls] + ["copy GB/s"] + [f"{i} % copy" for i in fused_impls]
    if triad_gbs:
        head += ["triad GB/s"] + [f"{i} % triad" for i in fused_impls]
    if same_bytes_gbs:
        head += ["same-bytes copy GB/s"] + [f"{i} % same-bytes copy" for i in fused_impls]
    if before:
        head += ["before us", "before % copy"]
    if op_keys:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * 3 + "---:|" * (len(head) - 3))
    for (case, shape, dtype), t in sorted(median.items()):
        if _is_floor(case) or case in calls or case.startswith(_OWN_TABLE_CASES):
            continue
        if not any(i in t for i in fused_impls):
            continue
        best = min(t[i] for i in fused_impls if i in t)
        eager, compiled = t.get("eager_reference", float("nan")), t.get("compiled_reference", float("nan"))
        copy = copy_gbs.get((shape, dtype), float("nan"))
        gbs = {i: nbytes[(case, shape, dtype)] / t[i] / 1e9 for i in fused_impls if i in t}
        cells = [case, shape, dtype] + [_us(t.get(i, float("nan"))) for i in fused_impls]
        if has_compiled:
            cells += [_us(eager), _us(compiled), f"{eager / best:.2f}x", f"{compiled / best:.2f}x"]
        elif has_eager:
            cells += [_us(eager), f"{eager / best:.2f}x"]
        cells += [f"{gbs[i]:.0f}" if i in gbs else "-" for i in fused_impls] + [f"{copy:.0f}"]
        cells += [f"{100 * gbs[i] / copy:.0f}%" if i in gbs else "-" for i in fused_impls]
        if triad_gbs:
            triad = triad_gbs.get((shape, dtype), float("nan"))
            cells += [f"{triad:.0f}"] + [f"{100 * gbs[i] / triad:.0f}%" if i in gbs else "-" for i in fused_impls]
        if same_bytes_gbs:
            tensors = CASES[case].tensors_moved if case in CASES else None
            floor = same_bytes_gbs.get((tensors, shape, dtype), float("nan"))
            cells += [f"{floor:.0f}"] + [f"{100 * gbs[i] / floor:.0f}%" if i in gbs else "-" for i in fused_impls]
        if before:
            was = before[0].get((case, shape, dtype), {}).get("fused", float("nan"))
            was_gbs = nbytes[(case, shape, dtype)] / was / 1e9
            cells += [_us(was), f"{100 * was_gbs / before_copy_gbs.get((shape, dtype), float('nan')):.0f}%"]
        print("| " + " | ".join(cells) + " |")
    if len(runs) > 1 and copy_gbs and not gpu:
        shares, before_shares = _copy_shares(runs), _copy_shares(before_runs) if len(before_runs) > 1 else {}
        print(
            f"\n% of copy within each run, the median over the {len(runs)} runs"
            + (f" (and over the {len(before_runs)} runs before)" if before_shares else "")
            + ":\n"
        )
        print("| case | shape | dtype | % copy | " + ("before % copy |" if before_shares else ""))
        print("|---|---|---|---:|" + ("---:|" if before_shares else ""))
        for key in sorted(shares):
            cells = list(key) + [f"{100 * shares[key]:.0f}%"]
            if before_shares:
                cells.append(f"{100 * before_shares[key]:.0f}%" if key in before_shares else "-")
            print("| " + " | ".join(cells) + " |")
    stock = [
        (case, t)
        for (case, _, _), t in sorted(median.items())
        if "stock_diffusers" in t and "fused" in t and not case.startswith("step_host_")
    ]
    if stock:
        print(
            "\nScheduler steps, stock diffusers against diffaccel's drop-in (25-step loop, (4,4,128,128) fp32; "
            "page faults per step: diffaccel.benchmarking.page_faults_per_call):\n"
        )
        print(
            "| scheduler loop | stock us/step | diffaccel us/step | speedup "
            "| faults/step stock | faults/step diffaccel |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for case, t in stock:
            n = calls[case]
            f = faults.get(case, {})
            counts = [f"{f[i]:.0f}" if i in f else "-" for i in ("stock_diffusers", "fused")]
            print(
                f"| {case} | {t['stock_diffusers'] / n * 1e6:.1f} | {t['fused'] / n * 1e6:.1f} | "
                f"{t['stock_diffusers'] / t['fused']:.1f}x | {counts[0]} | {counts[1]} |"
            )
    host = [
        (case, shape, t)
        for (case, shape, _), t in sorted(median.items())
        if case.startswith("step_host_") and "stock_diffusers" in t and "fused" in t
    ]
    if host:
        print(
            "\nHost time of one step() call, every drop-in class at its default config (25-step loops at "
            f"{host[0][1]}, where the data costs nothing; Heun-style schedulers make two calls a step):\n"
        )
        print("| scheduler | stock us/call | diffaccel us/call | speedup |")
        print("|---|---:|---:|---:|")
        for case, _, t in host:
            n = calls[case]
            print(
                f"| {case[len('step_host_') :]} | {t['stock_diffusers'] / n * 1e6:.1f} | {t['fused'] / n * 1e6:.1f} | "
                f"{t['stock_diffusers'] / t['fused']:.1f}x |"
            )
    loops = [
        (case, shape, t)
        for (case, shape, _), t in sorted(median.items())
        if case in calls and "fused" in t and "stock_diffusers" not in t
    ]
    if loops:
        print("\nWhole 20-step loop with a zero-cost model (the time a user pays beyond the network):\n")
        print("| sampler | shape | model calls | fused us/call | reference us/call | speedup |")
        print("|---|---|---:|---:|---:|---:|")
        for case, shape, t in loops:
            n = calls[case]
            ref = t.get("eager_reference", float("nan"))
            print(
                f"| {case[len('loop_') :]} | {shape} | {n} | {t['fused'] / n * 1e6:.1f} | {ref / n * 1e6:.1f} "
                f"| {ref / t['fused']:.1f}x |"
            )
    graphs = [(case, shape, t) for (case, shape, _), t in sorted(median.items()) if case.startswith("graph_")]
    if graphs:
        print(
            "\nWhole 20-step DPM-Solver++(2M) loop with a network, ms per loop (bench/test_bench_graph.py); "
            "beyond the network = (graphed loop - the network's 20 calls alone, graphed) / 20:\n"
        )
        print(
            "| network | batch | stock diffusers ms | diffaccel eager ms | graphed ms | network alone ms | "
            "graphed vs stock | us/step beyond the network |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        nan = float("nan")
        for case, shape, t in graphs:
            stock, eager, graphed = t.get("stock_diffusers", nan), t.get("eager", nan), t.get("graphed", nan)
            alone = t.get("network_graphed", nan)
            ms = lambda v: f"{v * 1e3:.2f}" if v == v else "-"  # noqa: E731
            speedup = f"{stock / graphed:.1f}x" if stock / graphed == stock / graphed else "-"
            beyond = (graphed - alone) / calls[case] * 1e6
            print(
                f"| {case[len('graph_') :]} | {shape} | {ms(stock)} | {ms(eager)} | {ms(graphed)} | {ms(alone)} | "
                f"{speedup} | {beyond:.1f} |".replace("| nan |", "| - |")
            )
    _families_table(data["benchmarks"], median, calls)
    host = [(case, t) for (case, shape, dtype), t in sorted(median.items()) if any(i.endswith("_host_loop") for i in t)]
    if host:
        print(
            "\nPer call from a Python loop at (1,4,64,64) fp32 (host work included; the table above is device time):\n"
        )
        print(
            "| case | "
            + " | ".join(i[: -len("_host_loop")] + " us" for i in host[0][1] if i.endswith("_host_loop"))
            + " |"
        )
        print("|---|" + "---:|" * sum(i.endswith("_host_loop") for i in host[0][1]))
        for case, t in host:
            print(f"| {case} | " + " | ".join(_us(v) for i, v in t.items() if i.endswith("_host_loop")) + " |")
    _comfyui_table(data["benchmarks"], median)
    _brownian_table(data["benchmarks"], median)
    _k_diffusion_sde_table(median)
    _gradient_table(median, before)
    quantile = [(shape, dtype, t) for (case, shape, dtype), t in sorted(median.items()) if "torch_quantile" in t]
    if quantile:
        print("\nDynamic threshold against torch.quantile (diffusers' formulation):\n")
        print("| shape | dtype | best fused us | torch.quantile us | speedup |")
        print("|---|---|---:|---:|---:|")
        for shape, dtype, t in quantile:
            best = min(t[i] for i in fused_impls if i in t)
            print(
                f"| {shape} | {dtype} | {best * 1e6:.1f} | {t['torch_quantile'] * 1e6:.1f} "
                f"| {t['torch_quantile'] / best:.1f}x |"
            )


def _families_table(benchmarks, median, calls):
    """graph_pipeline's families (bench/test_bench_graph.py::test_pipeline_family_loop):
    us per step of the pipeline's own loop and of the captured one, the denoiser zero-cost."""
    rows = [(case, shape, t) for (case, shape, _), t in sorted(median.items()) if case.startswith("family_")]
    if not rows:
        return
    schedulers = {
        b["extra_info"]["case"]: b["extra_info"]["scheduler"] for b in benchmarks if "scheduler" in b["extra_info"]
    }
    graphed = any(b["extra_info"].get("graphed") for b in benchmarks if b["extra_info"]["case"].startswith("family_"))
    what = "the CUDA graph" if graphed else "its eager fallback; no CUDA graph on CPU"
    print(
        "\nPipeline families, us per step beyond the denoiser (tiny random-weight pipelines, the denoiser made "
        f"zero-cost): the pipeline's own __call__ with its stock scheduler, and graph_pipeline's loop ({what}):\n"
    )
    print("| family | latents | scheduler | steps | stock pipeline us/step | graph_pipeline us/step | speedup |")
    print("|---|---|---|---:|---:|---:|---:|")
    nan = float("nan")
    for case, shape, t in rows:
        n = calls[case]
        stock, ours = t.get("stock_pipeline", nan) / n * 1e6, t.get("graph_pipeline", nan) / n * 1e6
        print(
            f"| {case[len('family_') :]} | {shape[len('latents ') :]} | {schedulers.get(case, '-')} | {n} | "
            f"{stock:.1f} | {ours:.1f} | {stock / ours:.1f}x |"
        )


def _brownian_table(benchmarks, median):
    """torchsde's BrownianTree against diffaccel's twin (bench/test_bench_brownian.py): ms per step."""
    rows = [(shape, t) for (case, shape, _), t in median.items() if case == "brownian_tree" and "fused" in t]
    if not rows:
        return
    device = next(
        b["extra_info"].get("device", "cpu") for b in benchmarks if b["extra_info"]["case"] == "brownian_tree"
    )
    print(
        "\nBrownian-tree noise (the SDE samplers' noise in k-diffusion, ComfyUI and diffusers), a 10-step loop's "
        f"queries, fp32, trees on the {device}, ms per step; the same bits from both:\n"
    )
    print("| shape | torchsde.BrownianTree ms | diffaccel BrownianTree ms | speedup |")
    print("|---|---:|---:|---:|")
    for shape, t in sorted(rows, key=lambda row: ["tiny", "latent", "latent16"].index(row[0])):
        print(f"| {shape} | {t['torchsde'] * 1e3:.2f} | {t['fused'] * 1e3:.2f} | {t['torchsde'] / t['fused']:.1f}x |")


def _k_diffusion_sde_table(median):
    """k-diffusion's SDE samplers against the drop-ins (bench/test_bench_brownian.py): ms per step."""
    samplers = [(c, s, t) for (c, s, _), t in sorted(median.items()) if c.startswith("kd_") and "fused" in t]
    if not samplers:
        return
    print(
        "\nk-diffusion's SDE samplers (torchsde's tree) against diffaccel's drop-ins (its twin), 25 Karras steps, "
        "zero-cost denoiser, fp32, ms per step; tiny = (1,4,8,8), medium = (4,4,128,128):\n"
    )
    print("| sampler | shape | k-diffusion ms | diffaccel ms | speedup |")
    print("|---|---|---:|---:|---:|")
    for case, shape, t in samplers:
        kd, ours = t["k_diffusion"] * 1e3, t["fused"] * 1e3
        print(f"| {case[len('kd_') :]} | {shape} | {kd:.2f} | {ours:.2f} | {kd / ours:.1f}x |")


def _gradient_table(median, before):
    """Forward + backward through the ops (bench/test_bench_autograd.py): ms per call."""
    rows = [(c, s, t) for (c, s, _), t in sorted(median.items()) if c.startswith("gradient_") and "fused" in t]
    if not rows:
        return
    old = before[0] if before else {}
    print(
        "\nGradients: one forward and backward pass, the data tensors requiring grad, fp32, ms per call: the fused ops "
        "with their registered backward, autograd through the reference twin, and the fused forward alone"
        + (" (before: the same benchmark at the commit compared against)" if old else "")
        + ":\n"
    )
    before_column = " before ms |" if old else ""
    print(f"| op | shape | fused fwd+bwd ms |{before_column} reference fwd+bwd ms | vs reference | fused forward ms |")
    print("|---|---|---:|" + ("---:|" if old else "") + "---:|---:|---:|")
    for case, shape, t in rows:
        was = old.get((case, shape, "fp32"), {}).get("fused")
        was_cell = (f" {was * 1e3:.2f} |" if was else " - |") if old else ""
        print(
            f"| {case[len('gradient_') :]} | {shape} | {t['fused'] * 1e3:.2f} |{was_cell} {t['reference'] * 1e3:.2f} "
            f"| {t['reference'] / t['fused']:.1f}x | {t['fused_forward'] * 1e3:.3f} |"
        )


def _comfyui_table(benchmarks, median):
    """ComfyUI's samplers against diffaccel.comfyui's (bench/test_bench_comfyui.py): us per step."""
    rows = [(case, shape, t) for (case, shape, _), t in median.items() if case.startswith("comfyui_") and "fused" in t]
    if not rows:
        return
    info = next(b["extra_info"] for b in benchmarks if b["extra_info"]["case"].startswith("comfyui_"))
    steps, theirs = info["steps"], info["comfyui"]
    source = "ComfyUI's own functions" if theirs == "comfyui" else "the pure-PyTorch twins of ComfyUI's samplers"
    shapes = ["tiny", "latent", "latent16"]
    print(
        f"\nComfyUI's samplers ({source}) against diffaccel.comfyui, us per step of a {steps}-step loop with a "
        "zero-cost denoiser, fp32; tiny = (1,4,8,8) (host time), latent = (1,4,128,128), "
        "latent16 = (1,16,128,128):\n"
    )
    print("| sampler | " + " | ".join(f"{s} ComfyUI | {s} diffaccel | {s} speedup" for s in shapes) + " |")
    print("|---|" + "---:|" * (3 * len(shapes)))
    by_name = defaultdict(dict)
    for case, shape, t in rows:
        by_name[case[len("comfyui_") :]][shape] = t
    for name, per_shape in by_name.items():
        cells = []
        for shape in shapes:
            t = per_shape.get(shape, {})
            stock, fused = t.get("stock_comfyui", float("nan")), t.get("fused", float("nan"))
            cells += [_us(stock / steps), _us(fused / steps), f"{stock / fused:.1f}x" if stock == stock else "-"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
