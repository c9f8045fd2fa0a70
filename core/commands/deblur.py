"""``spikereveal deblur``: a recording in, sharp frames, a side-by-side video and a summary out."""

from __future__ import annotations

from pathlib import Path

from spikereveal.commands._types import ENGINE_CHOICES, add_k_argument, add_triton_arguments, output_dir, triton_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "deblur",
        help="deblur a recording offline: K sharp frames per exposure, PNGs + CSV + MP4",
        description="For every exposure of a recording, cut its spike window, run the LDN once with the K output "
                    "times as one batch and write DIR/frames/<exposure>_<k>.png, DIR/frames.csv "
                    "(exposure_index,t_ns,image), DIR/deblur.mp4 (blurry | sharp) and DIR/summary.json. "
                    "Exposures whose spike window is incomplete (e.g. a truncated spike file) are skipped and "
                    "listed. The ort and trt engines run an ONNX export: --onnx, or the checkpoint exported "
                    "once into DIR/onnx/ and reused while checkpoint and precision match.",
    )
    parser.add_argument("--recording", type=Path, required=True, help="recording directory")
    parser.add_argument("--out", type=output_dir, required=True, help="output directory")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="ort",
                        help="default: ort (CPU); triton: a Triton server (--triton-url)")
    parser.add_argument("--model", type=Path, default=None,
                        help="LDN checkpoint, or a shipped model's name: default, lite (default: default)")
    parser.add_argument("--onnx", type=Path, default=None, help="ort/trt: use this ONNX export (static, K x H x W)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="ort/trt export precision; int8 calibrates on this recording")
    add_k_argument(parser, "sharp frames per exposure")
    parser.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: cores - 1)")
    parser.add_argument("--no-video", action="store_true", help="skip the MP4")
    parser.add_argument("--fps", type=float, default=10.0, help="video frame rate (default 10)")
    parser.add_argument("--engine-cache", type=output_dir, default=None, help="trt: engine cache directory")
    add_triton_arguments(parser)
    parser.add_argument("--calibration", type=Path, default=None,
                        help="rig calibration to apply (default: the recording's calibration.json, if any)")
    parser.add_argument("--no-calibration", action="store_true", help="apply no rig calibration")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    parser.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from spikereveal.engines.choice import EngineChoice
    from spikereveal.stream.offline import DeblurConfig, deblur
    from spikereveal.engines.runners import RunnerOptions

    options = RunnerOptions(threads=args.threads, cache_dir=str(args.engine_cache) if args.engine_cache else None,
                            triton=triton_options(args))
    choice = EngineChoice(engine=args.engine, precision=args.precision,
                          model=str(args.model) if args.model else None,
                          onnx_path=str(args.onnx) if args.onnx else None, options=options)
    config = DeblurConfig(k=args.k, write_video=not args.no_video, video_fps=args.fps, overwrite=args.overwrite)
    bar = tqdm(unit="exposure", desc="deblur")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        summary = deblur(args.recording, args.out, choice, config, progress, calibration_path=args.calibration,
                         use_calibration=not args.no_calibration)
    finally:
        bar.close()
    inference = summary["stages"]["inference"]
    p50 = f"{inference['ms_p50']:.1f} ms" if inference["ms_p50"] is not None else "n/a"
    print(f"{summary['frames_written']} frames from {summary['exposures_processed']}/{summary['exposures_total']} "
          f"exposures with {summary['engine']} ({summary['precision']}), inference {p50}/window; "
          f"wrote {args.out}")
    gain = summary["firing_gain"]
    if gain["mean"] is not None:
        trained = gain["trained_range"]
        print(f"firing gain {gain['mean']:.3f} (min {gain['min']:.3f}, max {gain['max']:.3f})"
              + (f"; the model's trained range {trained[0]:g}-{trained[1]:g}" if trained else "")
              + (", OUT OF DOMAIN (see the warning above)" if gain["out_of_domain"] else ""))
    skipped = summary["skipped_exposures"]
    if skipped:
        print(f"skipped {len(skipped)} exposure(s) with incomplete spike windows: "
              + ", ".join(str(item["index"]) for item in skipped))
    return 0
