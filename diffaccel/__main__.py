"""Command line: ``diffaccel info``, ``diffaccel demo``, ``diffaccel bench`` and
``diffaccel check`` (also ``python -m diffaccel ...``)."""

from __future__ import annotations

import argparse
import sys

import torch


def _bench(args) -> None:
    from diffaccel import benchmarking

    device = args.device
    torch.manual_seed(0)
    shapes = [benchmarking.SHAPES[s] for s in args.shapes]
    print(f"diffaccel quick benchmark on {device}, float32, {torch.get_num_threads()} threads")
    print("(median of 5 runs; GB/s = bytes the op must move / time; copy = dst.copy_(src) at the same size)")
    print()
    header = f"{'case':<20} {'shape':<18} {'fused us':>10} {'ref us':>10} {'speedup':>8} {'fused GB/s':>11} {'copy GB/s':>10}"
    print(header)
    print("-" * len(header))
    for shape in shapes:
        copy = benchmarking.copy_bandwidth(shape, torch.float32, device)
        for case in benchmarking.CASES.values():
            g = torch.Generator().manual_seed(0)
            call_args, kwargs = case.make(shape, torch.float32, device, g)
            fused = benchmarking.median_seconds(lambda: case.fused(*call_args, **kwargs), device)
            ref = benchmarking.median_seconds(lambda: case.reference(*call_args, **kwargs), device)
            gbs = benchmarking.bytes_moved(case, shape, torch.float32) / fused / 1e9
            print(
                f"{case.name:<20} {str(tuple(shape)):<18} {fused * 1e6:>10.1f} {ref * 1e6:>10.1f} "
                f"{ref / fused:>7.1f}x {gbs:>11.1f} {copy / 1e9:>10.1f}"
            )
    print()
    for case in benchmarking.CASES.values():
        print(f"{case.name:<20} {case.description}")


def main(argv=None) -> int:
    from diffaccel.benchmarking import SHAPES

    parser = argparse.ArgumentParser(prog="diffaccel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, live backends and why others are off")
    bench = sub.add_parser("bench", help="a short table: fused ops vs the eager reference")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--shapes", nargs="+", default=["small", "medium"], choices=list(SHAPES))
    demo = sub.add_parser("demo", help="the samplers on the exact Gaussian oracle: error, model calls, loop time, plot")
    demo.add_argument("--out", default="demo-out", help="folder for index.md and the plot (default demo-out)")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--quick", action="store_true", help="one step count, smaller latents (under 30 s on 2 cores)")
    check = sub.add_parser("check", help="every live backend against the reference; exits 1 on any failure")
    check.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    check.add_argument("--backends", nargs="+", choices=["cpu", "cuda", "triton"],
                       help="backends to check (default: every live one on the device)")
    check.add_argument("--seed", type=int, help="seed of the random inputs (default: a fresh one, printed)")
    args = parser.parse_args(argv)
    if args.command == "info":
        from diffaccel.info import report

        print(report())
    elif args.command == "demo":
        from diffaccel import demo as demo_module

        demo_module.run(args.out, args.device, args.quick)
    elif args.command == "check":
        from diffaccel import check as check_module

        return 1 if check_module.run(args.device, args.backends, args.seed) else 0
    else:
        _bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
