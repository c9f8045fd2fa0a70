"""``spikereveal bench``: benchmarks, one sub-verb each (``kernels`` now; transport, engines, pipeline later).

A sub-verb is a function ``register_<name>(subparsers)`` listed in ``SUBVERBS``; it adds its parser and
sets ``func``. Handlers import the benchmark code lazily, so ``spikereveal --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def write_json(path: Path, result: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run_kernels(args: argparse.Namespace) -> int:
    from spikereveal.bench.kernels import format_table, run_kernel_bench

    result = run_kernel_bench(
        height=args.height, width=args.width, frames=args.frames, repeats=args.repeats, seed=args.seed
    )
    print(format_table(result))
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def register_kernels(subparsers) -> None:
    parser = subparsers.add_parser(
        "kernels",
        help="numba spike kernels vs their numpy twins",
        description="Time window accumulation, LDN input extraction and TFI on random packed frames "
        "(single-threaded numba, JIT warm-up excluded, median of repeats) against plain numpy.",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--frames", type=positive_int, default=2048, help="spike frames to process (default 2048)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per kernel (default 5)")
    parser.add_argument("--height", type=positive_int, default=250, help="spike sensor height (default 250)")
    parser.add_argument("--width", type=positive_int, default=400, help="spike sensor width (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the spike data (default 0)")
    parser.set_defaults(func=run_kernels)


def run_engines(args: argparse.Namespace) -> int:
    from spikereveal.bench.engines import bench_engines, format_table

    def progress(status: str) -> None:
        print(f"timing {status} ...", flush=True)

    result = bench_engines(runners=args.runner, geometries=args.geometry, repeats=args.repeats, warmup=args.warmup,
                           k=args.k, threads=args.threads, precisions=args.precision, model_path=args.model,
                           progress=progress)
    print(format_table(result))
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def register_engines(subparsers) -> None:
    parser = subparsers.add_parser(
        "engines",
        help="LDN inference per exposure window: ONNX Runtime vs PyTorch vs TensorRT",
        description="Time each available runner on the same random exposure windows (K frames as one batch) at "
        "the gopro (1280x720) and rsb (1600x1000) geometries; warm-up excluded; median and p99 per window and "
        "output frames/s. Unavailable runners are listed, not run. Weights: --model or a seeded random LDN.",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--geometry", nargs="+", default=["gopro", "rsb"], metavar="G",
                        help="presets (gopro, rsb) or HxW, e.g. 64x96 (default: gopro rsb)")
    parser.add_argument("--runner", nargs="+", default=["ort", "torch", "trt"], choices=("ort", "torch", "trt"))
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "fp16", "int8"),
                        help="ort/trt export precisions (default fp32; torch is always fp32)")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed windows per runner (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed windows first (default 2)")
    parser.add_argument("--k", type=positive_int, default=7, help="frames per exposure window (default 7)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: cores - 1)")
    parser.add_argument("--model", type=Path, default=None, help="LDN checkpoint (default: random seeded LDN)")
    parser.set_defaults(func=run_engines)


# later: register_transport, register_engines, register_pipeline
SUBVERBS = (register_kernels, register_engines)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure kernels, transport, engines and the pipeline",
        description="Benchmarks; each prints a short table and can write JSON (--json PATH).",
    )
    bench_subparsers = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    bench_subparsers.required = True
    for register_subverb in SUBVERBS:
        register_subverb(bench_subparsers)
