"""``spikereveal bench``: benchmarks, one sub-verb each (kernels, engines, report, compare, transport, pipeline,
exposure-path, soak, all, device-check).

A sub-verb is a function ``register_<name>(subparsers)`` listed in ``SUBVERBS``; it adds its parser and
sets ``func``. Handlers import the benchmark code lazily, so ``spikereveal --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikereveal.commands._types import add_k_argument, output_dir, output_file, positive_int, preset_or_grid


def emit(table: str, result: dict, json_path: Path | None) -> int:
    """Print a benchmark's table and, when asked, write its JSON; the exit code of a finished benchmark."""
    print(table)
    if json_path is not None:
        write_json(json_path, result)
        print(f"wrote {json_path}")
    return 0


def write_json(path: Path, result: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run_kernels(args: argparse.Namespace) -> int:
    from spikereveal.bench.kernels import format_table, run_kernel_bench

    result = run_kernel_bench(
        height=args.height, width=args.width, frames=args.frames, repeats=args.repeats, seed=args.seed
    )
    return emit(format_table(result), result, args.json)


def register_kernels(subparsers) -> None:
    parser = subparsers.add_parser(
        "kernels",
        help="numba spike kernels vs their numpy twins",
        description="Time window accumulation, LDN input extraction and TFI on random packed frames "
        "(single-threaded numba, JIT warm-up excluded, median of repeats) against plain numpy.",
    )
    parser.add_argument("--json", type=output_file, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--frames", type=positive_int, default=2048, help="spike frames to process (default 2048)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per kernel (default 5)")
    _add_spike_data_arguments(parser)
    parser.set_defaults(func=run_kernels)


def _add_spike_data_arguments(parser) -> None:
    """The random spike data of ``bench kernels`` and ``bench transport``: the spike sensor's size (named apart
    from the network image's ``--image-height/--image-width`` of export; ``--height/--width`` still work)."""
    parser.add_argument("--sensor-height", "--height", dest="height", type=positive_int, default=250,
                        help="spike sensor height (default 250)")
    parser.add_argument("--sensor-width", "--width", dest="width", type=positive_int, default=400,
                        help="spike sensor width (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the spike data (default 0)")


def run_engines(args: argparse.Namespace) -> int:
    from spikereveal.bench.engines import bench_engines, format_table

    def progress(status: str) -> None:
        print(f"timing {status} ...", flush=True)

    result = bench_engines(runners=args.runner, geometries=args.geometry, repeats=args.repeats, warmup=args.warmup,
                           k=args.k, threads=args.threads, precisions=args.precision, models=args.model or (),
                           progress=progress, interleave=not args.sequential)
    return emit(format_table(result), result, args.json)


def register_engines(subparsers) -> None:
    parser = subparsers.add_parser(
        "engines",
        help="LDN inference per exposure window: ONNX Runtime vs PyTorch vs TensorRT",
        description="Time each available runner on the same random exposure windows (K frames as one batch) at "
        "the gopro (1280x720) and rsb (1600x1000) geometries; warm-up excluded; median and p99 per window and "
        "output frames/s. Unavailable runners are listed, not run. Weights: --model or a seeded random LDN.",
    )
    parser.add_argument("--json", type=output_file, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--geometry", nargs="+", type=preset_or_grid, default=["gopro", "rsb"], metavar="G",
                        help="presets (gopro, rsb) or HxW, e.g. 64x96 (default: gopro rsb)")
    parser.add_argument("--runner", nargs="+", default=["ort", "torch", "trt"], choices=("ort", "torch", "trt"))
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "fp16", "int8"),
                        help="ort/trt export precisions (default fp32; torch is always fp32)")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed windows per runner (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed windows first (default 2)")
    add_k_argument(parser, "frames per exposure window")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: cores - 1)")
    parser.add_argument("--model", nargs="+", default=None, metavar="M",
                        help="LDN checkpoints or shipped model names (default, lite), timed side by side with their "
                             "MACs and parameters counted from the ONNX graph (default: a random seeded LDN)")
    parser.add_argument("--sequential", action="store_true",
                        help="time runners one after the other (less memory) instead of round-robin")
    parser.set_defaults(func=run_engines)


def run_report(args: argparse.Namespace) -> int:
    from spikereveal.bench.report import build_report, format_table
    from spikereveal.stream.trace import load_trace

    trace = load_trace(args.trace)
    report = build_report(trace, warmup=args.warmup)
    emit(format_table(report), report, args.json)
    if args.plot is not None:
        from spikereveal.bench.plots import write_plots

        for path in write_plots(trace, args.plot, warmup=args.warmup).values():
            print(f"wrote {path}")
    return 0


def register_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="latency report (and plots) from a trace file of `serve --trace`",
        description="Per-stage and end-to-end latency (nearest-rank p50/p90/p95/p99/p99.9), throughput, "
        "real-time factor, drops and environment of a traced run; PNG plots with --plot (needs matplotlib).",
    )
    parser.add_argument("trace", type=Path, metavar="TRACE", help="trace file (.npz) written by serve --trace")
    parser.add_argument("--json", type=output_file, metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument("--plot", type=output_dir, metavar="DIR", help="write latency_cdf/timeline/throughput PNGs to DIR")
    parser.add_argument("--warmup", type=int, default=10, metavar="N",
                        help="exclude the first N exposures (default 10, as Holoscan's data-flow tracking)")
    parser.set_defaults(func=run_report)


def run_compare(args: argparse.Namespace) -> int:
    from spikereveal.bench.compare import (
        compare_summaries,
        format_compare_markdown,
        format_compare_table,
        load_summary,
    )

    result = compare_summaries(load_summary(args.a), load_summary(args.b), pattern=args.filter)
    names = (args.a.stem, args.b.stem) if args.a.stem != args.b.stem else (str(args.a), str(args.b))
    print(f"A = {args.a}, B = {args.b}")
    print(format_compare_table(result, names))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(format_compare_markdown(result, names), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0


def register_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="two bench JSON files side by side, with ratios",
        description="Every numeric value of two bench summaries (kernels, engines, pipeline report, bench all) "
        "side by side with the ratio B/A and which side is better (rates higher, durations lower).",
    )
    parser.add_argument("a", type=Path, metavar="A.json")
    parser.add_argument("b", type=Path, metavar="B.json")
    parser.add_argument("--markdown", type=output_file, metavar="PATH", help="also write a Markdown table to PATH")
    parser.add_argument("--filter", metavar="REGEX", help="only metrics whose dotted name matches REGEX")
    parser.set_defaults(func=run_compare)


def run_transport(args: argparse.Namespace) -> int:
    from spikereveal.bench.transport import REAL_TIME_RATE_HZ, bench_transport, format_table

    rates = [args.rate_hz if args.rate_hz is not None else 2 * REAL_TIME_RATE_HZ]
    if not args.paced_only:
        rates.append(None)
    result = bench_transport(height=args.height, width=args.width, block_frames=args.block, seconds=args.seconds,
                             rates_hz=tuple(rates), endpoint=args.endpoint, seed=args.seed)
    return emit(format_table(result), result, args.json)


def register_transport(subparsers) -> None:
    parser = subparsers.add_parser(
        "transport",
        help="spike blocks over loopback ZeroMQ: replay -> ingest (decode + synchroniser)",
        description="Publish a synthetic 250x400 spike stream with the replay publisher in blocks of F frames, "
        "paced at 2x the 40 kHz sensor rate (80k frames/s) and unpaced, into the serve ingest path (SUB, "
        "zero-copy decode, synchroniser ring). Reports frames/s, messages/s, loss (frames, gaps, publisher "
        "drops) and per-block latency p50/p99.",
    )
    parser.add_argument("--json", type=output_file, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--block", type=positive_int, default=32, metavar="F", help="frames per message (default 32)")
    parser.add_argument("--seconds", type=float, default=2.0, help="stream length at the paced rate (default 2)")
    parser.add_argument("--rate-hz", type=float, default=None, help="paced rate in frames/s (default 80000)")
    parser.add_argument("--paced-only", action="store_true", help="skip the unpaced run")
    parser.add_argument("--endpoint", choices=("ipc", "tcp"), default="ipc", help="loopback transport (default ipc)")
    _add_spike_data_arguments(parser)
    parser.set_defaults(func=run_transport)


def run_pipeline(args: argparse.Namespace) -> int:
    from spikereveal.bench.pipeline import bench_pipeline, format_independent, format_triton_hop
    from spikereveal.bench.report import format_table

    def progress(status: str) -> None:
        print(f"pipeline: {status} ...", flush=True)

    report = bench_pipeline(
        preset=args.preset, engine=args.engine, model=args.model, exposures=args.exposures, speed=args.speed,
        warmup=args.warmup, k=args.k, threads=args.threads, trace_path=args.trace, progress=progress,
        recording=args.recording, random_weights=args.random_weights, pass_through=args.pass_through,
        trace_overhead=args.trace_overhead, plot_dir=args.plot, seed=args.seed, triton_url=args.triton_url,
        triton_model=args.triton_model)
    text = format_table(report) + "\n" + format_independent(report)
    hop = report.get("triton_hop")
    if hop is not None:
        text += "\n" + format_triton_hop(hop)
    emit(text, report, args.json)
    for path in (report.get("plots") or {}).values():
        print(f"wrote {path}")
    return 0


def register_pipeline(subparsers) -> None:
    from spikereveal.commands._types import ENGINE_CHOICES, add_triton_arguments, speed_factor

    parser = subparsers.add_parser(
        "pipeline",
        help="simulate (or a recording) -> replay -> serve on loopback, traced: the latency report",
        description="Replay a simulated rig (or --recording) into serve over loopback ZeroMQ with tracing on, "
        "then the per-stage / end-to-end latency report (nearest-rank percentiles, warm-up excluded), an "
        "independent wall-clock measure from outside subscribers and the agreement between the two. "
        "--pass-through isolates the non-inference cost (no network).",
    )
    parser.add_argument("--json", type=output_file, metavar="PATH", required=True, help="write the report as JSON to PATH")
    parser.add_argument("--plot", type=output_dir, metavar="DIR", help="write latency_cdf/timeline/throughput PNGs to DIR")
    parser.add_argument("--trace", type=output_file, metavar="PATH", help="keep the trace file (.npz) at PATH")
    parser.add_argument("--preset", choices=("rsb", "gopro", "tiny"), default="rsb",
                        help="simulator preset (default rsb: 250x400 spikes, 1600x1000 RGB)")
    parser.add_argument("--recording", type=Path, metavar="REC", help="replay this recording instead of simulating")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="ort",
                        help="inference engine (default ort); triton: also runs ort and reports the Triton hop, on "
                             "a loopback Triton unless --triton-url is given")
    add_triton_arguments(parser)
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--model", metavar="CKPT", default=None, help="LDN checkpoint or a shipped model's name: default, lite (default: default)")
    weights.add_argument("--random-weights", action="store_true",
                         help="a seeded random LDN (same inference cost, meaningless images; said in the report)")
    weights.add_argument("--pass-through", action="store_true",
                         help="no network: the blurry batch is returned, isolating the non-inference cost")
    parser.add_argument("--exposures", type=positive_int, default=None, metavar="N",
                        help="exposures to simulate (default 40 with --pass-through, else 8 for rsb/gopro, 20 tiny)")
    parser.add_argument("--speed", type=speed_factor, default=None, metavar="X",
                        help="replay speed, x real time (default: 1 with --pass-through, else paced to the "
                        "measured inference time so exposures do not queue)")
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help="exclude the first N exposures (default min(10, exposures/5), at least 1)")
    add_k_argument(parser, "sharp frames per exposure")
    parser.add_argument("--threads", type=positive_int, default=None, help="inference threads (default: cores - 1)")
    parser.add_argument("--trace-overhead", action="store_true",
                        help="also two unpaced runs, tracing off and on: the throughput cost of tracing")
    parser.add_argument("--seed", type=int, default=0, help="simulation / random-weights seed (default 0)")
    parser.set_defaults(func=run_pipeline)


def run_all(args: argparse.Namespace) -> int:
    from spikereveal.bench.summary import bench_all

    def progress(status: str) -> None:
        print(f"bench all: {status} ...", flush=True)

    summary = bench_all(args.out, quick=args.quick, model=args.model, threads=args.threads, progress=progress)
    print(summary["markdown"])
    print(f"wrote {summary['files']['json']} and {summary['files']['markdown']}")
    return 0


def register_all(subparsers) -> None:
    parser = subparsers.add_parser(
        "all",
        help="kernels, transport, engines and pipeline: one summary (JSON + Markdown) for this machine",
        description="Run every benchmark with small repeats (the available runners only) and write "
        "OUT/summary.json (one key per benchmark + environment; compare two machines with `bench compare`) "
        "and OUT/summary.md (the headline numbers).",
    )
    parser.add_argument("--out", type=output_dir, metavar="DIR", required=True, help="output folder")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (seconds, not minutes): a smoke test of the whole bench")
    parser.add_argument("--model", metavar="CKPT", default=None,
                        help="LDN checkpoint for the engine and pipeline runs (default: the shipped model, else a "
                        "seeded random LDN)")
    parser.add_argument("--threads", type=positive_int, default=None, help="inference threads (default: cores - 1)")
    parser.set_defaults(func=run_all)


def run_exposure_path(args: argparse.Namespace) -> int:
    from spikereveal.bench.engines import geometry_shape
    from spikereveal.bench.exposure_path import format_table, time_exposure_path

    result = time_exposure_path(geometry_shape(args.geometry, args.k), repeats=args.repeats, warmup=args.warmup,
                                output_pixel_format=args.output_pixel_format)
    return emit(format_table(result), result, args.json)


def register_exposure_path(subparsers) -> None:
    parser = subparsers.add_parser(
        "exposure-path",
        help="the worker's own per-exposure cost around inference (no network, no sockets)",
        description="Run serve's exposure processor on a synthetic exposure with a pass-through runner and time "
        "its input preparation (frame copy, spike window cut into the graph's uint8 inputs) and its "
        "post-processing, per exposure: the part of the non-inference cost that is not transport or queueing.",
    )
    parser.add_argument("--geometry", type=preset_or_grid, default="rsb",
                        help="simulator preset (gopro, rsb) or HxW of the network grid (default rsb)")
    add_k_argument(parser, "frames per exposure")
    parser.add_argument("--repeats", type=positive_int, default=50, help="timed exposures (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed exposures first (default 3)")
    parser.add_argument("--output-pixel-format", choices=("bgr8", "bgr_f32"), default="bgr8",
                        help="what serve publishes (default bgr8)")
    parser.add_argument("--json", type=output_file, metavar="PATH", help="also write the results as JSON to PATH")
    parser.set_defaults(func=run_exposure_path)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def run_soak(args: argparse.Namespace) -> int:
    from spikereveal.bench.soak import SoakConfig, format_soak, run_soak as soak

    config = SoakConfig(duration_s=args.minutes * 60.0, speed=args.speed, restart_every_s=args.restart_every_s,
                        kill_worker_every_s=args.kill_worker_every_s, workers=args.workers,
                        fuzz_every_messages=args.fuzz_every, seed=args.seed, model=args.model,
                        rss_bound_bytes=None if args.rss_bound_mib is None else int(args.rss_bound_mib * 2**20))

    def progress(status: str) -> None:
        print(f"bench soak: {status}", flush=True)

    report = soak(config, args.out, progress=progress)
    print(format_soak(report))
    print(f"wrote {Path(args.out) / 'soak.json'}")
    return 0 if report["passed"] else 1


def register_soak(subparsers) -> None:
    parser = subparsers.add_parser(
        "soak",
        help="serve under restarts, killed workers and mutated messages; every frame checked against offline",
        description="Replay two simulated recordings into `serve --workers N` (a child process) at --speed x real "
        "time, restarting into the other recording every --restart-every-s, killing a worker every "
        "--kill-worker-every-s and interleaving mutated messages; a viewer compares every published frame with "
        "offline deblur. Fails (exit 1) when a frame differs, the counters do not add up, saved files and "
        "frames.csv disagree, serve did not exit cleanly, or its memory passed its stated bound.",
    )
    parser.add_argument("--out", type=output_dir, metavar="DIR", required=True,
                        help="report (soak.json), serve's log, counters and saved frames")
    parser.add_argument("--minutes", type=_positive_seconds, default=10.0, help="how long to stream (default 10)")
    parser.add_argument("--speed", type=_positive_seconds, default=2.0, help="x real time (default 2)")
    parser.add_argument("--restart-every-s", type=_positive_seconds, default=30.0,
                        help="restart the rig into the other recording this often (default 30)")
    parser.add_argument("--kill-worker-every-s", type=float, default=60.0,
                        help="SIGKILL one worker process this often (default 60; 0: never)")
    parser.add_argument("--workers", type=positive_int, default=2, help="serve --workers (default 2)")
    parser.add_argument("--fuzz-every", type=int, default=25, metavar="N",
                        help="a mutated copy after every N genuine messages (default 25; 0: none)")
    parser.add_argument("--rss-bound-mib", type=_positive_seconds, default=None,
                        help="serve's peak resident memory bound (default: its memory once serving plus the byte "
                             "bound of its queues stated in stream/config.py, 768 MiB by default)")
    parser.add_argument("--model", metavar="CKPT", default=None, help="LDN checkpoint or a shipped model's name: default, lite (default: default)")
    parser.add_argument("--seed", type=int, default=0, help="simulation and mutation seed (default 0)")
    parser.set_defaults(func=run_soak)


def run_device_check(args: argparse.Namespace) -> int:
    from spikereveal.bench.device_check import DeviceCheckConfig, device_check, format_summary

    def progress(status: str) -> None:
        print(f"device-check: {status}", flush=True)

    report = device_check(DeviceCheckConfig(out_dir=str(args.out), model=args.model), progress=progress)
    print(format_summary(report))
    print(f"wrote {report['files']['json']} and {report['files']['markdown']}")
    return 1 if report["status"] == "failed" else 0


def register_device_check(subparsers) -> None:
    parser = subparsers.add_parser(
        "device-check",
        help="one-shot check of the TensorRT path on a GPU/Jetson: engines, frames vs ONNX Runtime, timings",
        description="On a machine with TensorRT and an NVIDIA GPU: build fp32/fp16/int8 engines of the student at "
        "the gopro and rsb geometries, deblur a simulated recording with --engine trt against --engine ort (fp32 "
        "frames agree to >= 45 dB; fp16/int8 lose <= 0.3 dB of PSNR against ground truth), time the engines (copies "
        "and compute apart, with the trtexec line to cross-check) and the trt pipeline, each step within its own "
        "time budget (under 8 minutes in all). Writes OUT/device_check.json and OUT/device_check.md; exit 1 when a "
        "step or criterion failed. Without TensorRT or a GPU it says why and exits 0 at once.",
    )
    parser.add_argument("--out", type=output_dir, metavar="DIR", required=True, help="report and work folder")
    parser.add_argument("--model", metavar="CKPT", default=None, help="LDN checkpoint or a shipped model's name: default, lite (default: default)")
    parser.set_defaults(func=run_device_check)


def run_tradeoff(args: argparse.Namespace) -> int:
    from spikereveal.bench.tradeoff import format_points, parse_eval_spec, tradeoff_points

    evals = dict(parse_eval_spec(text) for text in args.eval)
    points = tradeoff_points(args.engines, evals, geometry=args.geometry, runner=args.runner)
    result = {"geometry": args.geometry, "runner": args.runner, "engines": str(args.engines),
              "points": [point.to_dict() for point in points]}
    emit(format_points(points), result, args.json)
    if args.plot is not None:
        from spikereveal.bench.plots import plot_speed_quality

        print(f"wrote {plot_speed_quality(points, args.plot)}")
    return 0


def register_tradeoff(subparsers) -> None:
    parser = subparsers.add_parser(
        "tradeoff",
        help="speed vs quality per model, from a bench engines report and eval reports (PNG with --plot)",
        description="Per model: ms per output frame and MACs per frame from one 'bench engines --model A B ...' "
                    "report, PSNR/SSIM averaged over 'eval' reports (one per test family). Measures nothing itself.",
    )
    parser.add_argument("--engines", type=Path, required=True, metavar="JSON", help="bench engines --json report")
    parser.add_argument("--eval", nargs="+", required=True, metavar="NAME=JSON[,JSON...]",
                        help="a model's eval reports, e.g. lite=th2.json,th4.json (NAME as in the engines report)")
    parser.add_argument("--geometry", default="gopro", help="geometry key of the engines report (default gopro)")
    parser.add_argument("--runner", default="ort", help="runner key, e.g. ort or ort-int8 (default ort)")
    parser.add_argument("--json", type=output_file, metavar="PATH", help="also write the points as JSON")
    parser.add_argument("--plot", type=output_file, metavar="PNG", help="write the speed-vs-quality plot (matplotlib)")
    parser.set_defaults(func=run_tradeoff)


SUBVERBS = (register_kernels, register_engines, register_report, register_compare, register_transport,
            register_pipeline, register_exposure_path, register_soak, register_all, register_device_check,
            register_tradeoff)


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
