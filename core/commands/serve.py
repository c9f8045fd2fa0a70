"""``spikereveal serve``: the live pipeline (camera streams in, sharp frames out)."""

from __future__ import annotations

from spikereveal.commands._types import (
    ENGINE_CHOICES,
    add_k_argument,
    add_triton_arguments,
    int_pair,
    output_dir_text,
    output_file_text,
)


def add_engine_arguments(parser) -> None:
    """--engine/--precision/--model/--onnx/--threads/--triton-url/--triton-model (shared by serve and worker)."""
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default=None,
                        help="inference engine (default ort; triton: a Triton server, --triton-url)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="export precision for ort/trt (default fp32)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="CKPT", default=None,
                        help="LDN checkpoint or a shipped model's name (default, lite; default: default); a checkpoint is "
                             "exported to ONNX for ort/trt, a shipped model runs its shipped export")
    source.add_argument("--onnx", metavar="PATH", default=None, help="ort/trt: an exported ONNX file to run")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="inference threads (default: all cores but one)")
    add_triton_arguments(parser)


def engine_overrides(args) -> dict:
    return {"engine": args.engine, "precision": args.precision, "model": args.model, "onnx": args.onnx,
            "threads": args.threads, "triton_url": args.triton_url, "triton_model": args.triton_model}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="live deblurring: subscribe to a rig's spike and RGB streams, publish sharp frames",
        # the three endpoints are required, from the command line or from --config's 'endpoints' section
        usage="%(prog)s (--spike-endpoint E1 --rgb-endpoint E2 --output-endpoint E3 | --config RIG_JSON)\n"
              "       [--spike-geometry HxW] [--save DIR] [--stats-json PATH] [other options]",
        description=(
            "Connect SUB sockets to the rig's spike and RGB publishers, cut each exposure's spike window as soon "
            "as its spikes are in, run the network (K frames as one batch) in a worker thread or processes, and "
            "publish K sharp frames per exposure on a PUB socket. Inference slower than the exposures: the "
            "oldest waiting exposure is dropped and counted. At exit the counters are printed and written as "
            "JSON (--stats-json). Ctrl-C / SIGTERM stop cleanly."
        ),
    )
    parser.add_argument("--spike-endpoint", metavar="E1", default=None,
                        help="the rig's spike publisher to connect to (required unless --config gives it)")
    parser.add_argument("--rgb-endpoint", metavar="E2", default=None,
                        help="the rig's RGB publisher to connect to (required unless --config gives it)")
    parser.add_argument("--output-endpoint", metavar="E3", default=None,
                        help="endpoint to bind for sharp frames, e.g. tcp://*:5557 (required unless --config "
                             "gives it)")
    parser.add_argument("--config", metavar="RIG_JSON", default=None,
                        help="rig.json with these settings, per-stage options and the calibration (options override)")
    add_engine_arguments(parser)
    parser.add_argument("--spike-geometry", type=int_pair("HxW", "250x400"), default=None, metavar="HxW",
                        help="spike sensor size, e.g. 250x400: the engine loads before streaming instead of on "
                             "the first exposure; spike blocks of another size are counted "
                             "(spike_geometry_mismatches) and warned about")
    parser.add_argument("--save", type=output_dir_text, metavar="DIR", default=None,
                        help="also write DIR/frames/*.png and DIR/frames.csv as 'deblur' does")
    parser.add_argument("--video", action="store_true", help="with --save: also a side-by-side (blurry | sharp) MP4")
    parser.add_argument("--exit-after", type=int, default=None, metavar="N", help="stop after N published exposures")
    parser.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                        help="stop after S seconds without a camera message (queued exposures are finished)")
    parser.add_argument("--stats-json", type=output_file_text, metavar="PATH", default=None, help="write the counters as JSON")
    parser.add_argument("--trace", type=output_file_text, metavar="PATH", default=None,
                        help="record per-exposure stage times to PATH (.npz) for 'spikereveal bench report'")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="run inference in N local worker processes (default: one thread in serve)")
    parser.add_argument("--job-endpoint", default=None, metavar="E",
                        help="also bind the job port here for remote 'spikereveal worker' s (with --result-endpoint);"
                             " each worker gets jobs only while it has a free credit")
    parser.add_argument("--result-endpoint", default=None, metavar="E", help="bind PULL here for remote results")
    parser.add_argument("--remote-workers", type=int, default=None, metavar="N",
                        help="no longer used: workers announce their own credits (accepted for old scripts)")
    parser.add_argument("--reorder-wait", type=float, default=None, metavar="S",
                        help="with workers: the longest a finished exposure waits for an earlier one before serve "
                             "skips ahead of it (counted in reorder_skipped; default 2)")
    parser.add_argument("--lost-job-policy", choices=("requeue_once", "drop"), default=None,
                        help="with workers: a lost worker's unfinished jobs are sent again once if fresh "
                             "(requeue_once, the default; jobs_requeued) or dropped (worker_lost)")
    parser.add_argument("--result-timeout", type=float, default=None, metavar="S",
                        help="with workers: a job whose result is not back after S seconds is counted lost "
                             "(default 30)")
    parser.add_argument("--heartbeat-timeout", type=float, default=None, metavar="S",
                        help="with workers: a worker silent for S seconds is lost and its jobs are released "
                             "(default 10; workers beat every second; a local worker that exits is lost at once)")
    keys = parser.add_argument_group(
        "CURVE keys ('spikereveal keys generate'; required for --job-endpoint/--result-endpoint on a non-loopback "
        "address)")
    keys.add_argument("--secret-key", metavar="FILE", default=None,
                      help="serve's own NAME.key_secret: the job and result ports admit only allow-listed workers")
    keys.add_argument("--allow-keys", metavar="DIR", default=None,
                      help="folder of the public *.key files of the workers (and viewers) serve admits")
    keys.add_argument("--curve-output", action="store_true", default=None,
                      help="also require an allow-listed key of every viewer on the output endpoint")
    keys.add_argument("--rig-key", metavar="FILE", default=None,
                      help="the rig publishers' public .key: subscribe to them with serve's own key pair")
    parser.add_argument("--max-subscriptions", type=int, default=None, metavar="N",
                        help="distinct subscription topics the output may hold before it is re-bound (default 64)")
    parser.add_argument("--queue", type=int, default=None, metavar="JOBS",
                        help="exposures that may wait for inference before the oldest is dropped (default 2)")
    add_k_argument(parser, "sharp frames per exposure", use_default=False)
    parser.set_defaults(func=run)


def config_from_args(args):
    from spikereveal.stream.config import load_serve_config

    spike_height, spike_width = args.spike_geometry or (None, None)
    return load_serve_config(
        args.config,
        spike_endpoint=args.spike_endpoint, rgb_endpoint=args.rgb_endpoint, output_endpoint=args.output_endpoint,
        spike_height=spike_height, spike_width=spike_width,
        exit_after_exposures=args.exit_after, idle_timeout_s=args.idle_timeout, stats_json=args.stats_json,
        trace=args.trace,
        engine=engine_overrides(args),
        worker={"save_dir": args.save, "write_video": True if args.video else None,
                "queue_capacity_jobs": args.queue},
        sync={"k": args.k},
        scale_out={"workers": args.workers, "job_endpoint": args.job_endpoint,
                   "result_endpoint": args.result_endpoint, "remote_workers": args.remote_workers,
                   "result_timeout_s": args.result_timeout, "heartbeat_timeout_s": args.heartbeat_timeout,
                   "reorder_wait_s": args.reorder_wait, "lost_job_policy": args.lost_job_policy},
        publish={"max_subscriptions": args.max_subscriptions},
        security={"secret_key_file": args.secret_key, "allow_keys_dir": args.allow_keys,
                  "output_curve": args.curve_output, "rig_key_file": args.rig_key},
    )


def check_outputs(config) -> None:
    """Refuse, before serving, output paths from --config that cannot be written (the command line's own are
    checked by argparse): a failure at exit would lose the run's counters."""
    from spikereveal.commands._types import output_problem
    from spikereveal.errors import ConfigError

    for what, path, kind in (("the save folder", config.worker.save_dir, "dir"),
                             ("the stats JSON", config.stats_json, "file"), ("the trace", config.trace, "file")):
        problem = None if path is None else output_problem(path, kind)
        if problem is not None:
            raise ConfigError(f"{what} {path} cannot be written: {problem}; choose another path")


def format_counters(counters: dict) -> str:
    keys = ("messages", "malformed", "gaps", "late", "duplicates", "exposures_done", "exposures_skipped",
            "exposures_dropped", "exposures_failed", "exposures_abandoned")
    lines = ["counters: " + ", ".join(f"{k}={counters[k]}" for k in keys)]
    if counters.get("results_rejected"):
        lines.append(f"results_rejected={counters['results_rejected']}: worker results that answer no job in flight "
                     f"or do not match their job ({counters.get('results_rejected_by_reason')}); dropped unpublished")
    if counters.get("subscriptions_refused") or counters.get("output_resets"):
        lines.append(f"subscriptions_refused={counters['subscriptions_refused']}, output_resets="
                     f"{counters['output_resets']}: subscribers asked for topics the output never publishes; "
                     "consider --curve-output")
    if counters.get("spike_geometry_mismatches"):
        lines.append(f"spike_geometry_mismatches={counters['spike_geometry_mismatches']}: spike blocks of another "
                     f"size than --spike-geometry {counters.get('spike_geometry_declared')} (seen: "
                     f"{', '.join(counters.get('spike_geometry_seen') or [])}); fix --spike-geometry or the rig")
    if counters.get("out_of_domain_exposures"):
        lines.append(f"out_of_domain_exposures={counters['out_of_domain_exposures']}: firing gain outside the "
                     "model's trained range (quality may drop; see the warning above)")
    engine_stats = counters.get("engine_stats") or {}
    if any(engine_stats.get(key) for key in ("retries", "timeouts", "unavailable", "rejected", "failed")):
        lines.append(f"{counters.get('engine')} engine: " + ", ".join(f"{k}={v}" for k, v in engine_stats.items()))
    latency = counters.get("latency", {})
    for name in ("end_to_end_ms", "inference_ms", "non_inference_work_ms"):
        stats = latency.get(name) or {}
        if stats.get("count"):
            lines.append(f"{name[:-3]}: p50 {stats['p50_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms "
                         f"({stats['count']} exposures)")
    return "\n".join(lines)


def run(args) -> int:
    import signal
    import threading

    from spikereveal.stream.serve import Server

    config = config_from_args(args)
    check_outputs(config)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = Server(config)
    try:
        counters = server.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"serve stopped ({counters['stop_reason']}); output was {server.output_endpoint}")
    print(format_counters(counters))
    for path in (config.stats_json, config.trace):
        if path:
            print(f"wrote {path}")
    return 0
