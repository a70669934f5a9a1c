"""Command line: ``diffaccel info``, ``diffaccel demo``, ``diffaccel bench``,
``diffaccel check`` and ``diffaccel comfyui install COMFYUI_DIR`` (also
``python -m diffaccel ...``)."""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    from diffaccel.benchmarking import CASES, SHAPES

    parser = argparse.ArgumentParser(prog="diffaccel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, live backends and why others are off")
    bench = sub.add_parser(
        "bench",
        help="ops vs the eager and compiled reference and copy bandwidth; loops; stock diffusers vs the drop-ins",
    )
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    bench.add_argument("--shapes", nargs="+", default=["small", "medium"], choices=list(SHAPES))
    bench.add_argument("--cases", nargs="+", choices=list(CASES), help="op cases (default: all)")
    bench.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference (slow to build)")
    bench.add_argument("--no-loops", action="store_true", help="only the op table")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    demo = sub.add_parser("demo", help="the samplers on the exact Gaussian oracle: error, model calls, loop time, plot")
    demo.add_argument("--out", default="demo-out", help="folder for index.md and the plot (default demo-out)")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--quick", action="store_true", help="one step count, smaller latents (under 30 s on 2 cores)")
    check = sub.add_parser("check", help="every live backend against the reference; exits 1 on any failure")
    check.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    check.add_argument(
        "--backends",
        nargs="+",
        choices=["cpu", "cuda", "triton"],
        help="backends to check (default: every live one on the device)",
    )
    check.add_argument("--seed", type=int, help="seed of the random inputs (default: a fresh one, printed)")
    comfyui = sub.add_parser("comfyui", help="install diffaccel's node pack into a ComfyUI")
    comfyui_sub = comfyui.add_subparsers(dest="comfyui_command", required=True)
    install = comfyui_sub.add_parser("install", help="write custom_nodes/diffaccel in COMFYUI_DIR")
    install.add_argument("comfyui_dir", metavar="COMFYUI_DIR")
    install.add_argument("--patch", action="store_true", help="also run every KSampler on diffaccel at start-up")
    install.add_argument("--uninstall", action="store_true", help="remove the entry instead")
    args = parser.parse_args(argv)
    if args.command == "comfyui":
        from diffaccel.integrations.comfyui import install as install_module

        if args.uninstall:
            removed = install_module.uninstall(args.comfyui_dir)
            print(f"removed {install_module.entry_dir(args.comfyui_dir)}" if removed else "nothing to remove")
        else:
            target = install_module.install(args.comfyui_dir, patch=args.patch)
            print(f"wrote {target}; restart ComfyUI to load the diffaccel nodes")
        return 0
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
        from diffaccel import benchmarking

        torch.manual_seed(0)
        benchmarking.run(args.device, args.shapes, args.cases, not args.no_compile, not args.no_loops, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
