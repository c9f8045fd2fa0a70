"""``spikereveal export``: the LDN student as an ONNX file (fp32, fp16 or int8 Q/DQ)."""

from __future__ import annotations

from pathlib import Path

from spikereveal.commands._types import add_k_argument, output_file
from spikereveal.errors import ConfigError

PRECISION_CHOICES = ("fp32", "fp16", "int8")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the LDN student to ONNX (fp32, fp16 or int8)",
        description="Export an LDN checkpoint to ONNX as the deployed graph: inputs 'image' (1,H,W,3) BGR and "
                    "'spikes' (K,21,H/4,W/4) levels (255 = one spike), output 'sharp' (K,H,W,3) BGR, uint8 at "
                    "every precision (the float conversions, clipping and rounding are in the graph). "
                    "fp16: a float16 graph inside the uint8 edges. int8: static Q/DQ quantization calibrated on real "
                    "exposure windows cut from --calib recordings (the form TensorRT 11 needs). The file carries "
                    "spikereveal.* metadata (network config, spike window, colour order, precision, checkpoint "
                    "sha256) and passes the ONNX checker.",
    )
    parser.add_argument("--model", type=Path, default=None,
                        help="LDN checkpoint, or a shipped model's name: default, lite (default: default)")
    parser.add_argument("--out", type=output_file, required=True, help="ONNX file to write")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32")
    parser.add_argument("--calib", type=Path, nargs="+", default=[], metavar="REC",
                        help="recordings whose exposure windows calibrate an int8 export")
    parser.add_argument("--calib-windows", type=int, default=16, help="int8: windows used (default 16)")
    parser.add_argument("--calib-cache", type=output_file, default=None, metavar="NPZ",
                        help="int8: cache of the cut calibration windows (reused while recordings and settings match)")
    add_k_argument(parser, "frames per exposure window", "--batch")
    parser.add_argument("--image-height", "--height", dest="height", type=int, default=None,
                        help="network image height, 4x the spike sensor (default: from --calib or the gopro grid)")
    parser.add_argument("--image-width", "--width", dest="width", type=int, default=None,
                        help="network image width, 4x the spike sensor")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch/height/width instead of static")
    parser.add_argument("--keep-deconv", action="store_true",
                        help="export transposed convolutions as ConvTranspose (default: the exact Conv + "
                             "DepthToSpace rewrite, faster on ONNX Runtime)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(func=run)


def run(args) -> int:
    from spikereveal.engines.export import ExportConfig, export_checkpoint
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} exists; pass --force to overwrite it")
    height, width = args.height, args.width
    if not args.dynamic and (height is None or width is None) and args.calib:
        height, width = _grid_of(args.calib[0])  # a static export defaults to the calibration geometry
    config = ExportConfig(precision=args.precision, k=args.k, height=height, width=width,
                          dynamic=args.dynamic, calibration_windows=args.calib_windows,
                          subpixel_decoder=not args.keep_deconv)
    path = export_checkpoint(args.model, args.out, config, calib_recordings=args.calib, calib_cache=args.calib_cache)
    meta = read_onnx_metadata(path)
    shape = "dynamic" if args.dynamic else f"K={config.k}, {config.width}x{config.height}"
    print(f"wrote {path}: {meta['precision']}, {shape}, checkpoint sha256 {meta['source_sha256'][:12]}"
          + (f", calibrated on {meta['calibration_windows']} windows" if "calibration_windows" in meta else ""))
    return 0


def _grid_of(recording_path) -> tuple[int, int]:
    from spikereveal.recording import open_recording

    with open_recording(recording_path, strict=False) as recording:
        return recording.meta.spike.canonical_shape
