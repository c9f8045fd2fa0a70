"""``spikereveal export``: the LDN student as an ONNX file (fp32, fp16 or int8 Q/DQ)."""

from __future__ import annotations

from pathlib import Path

from spikereveal.commands._types import add_k_argument, output_file, positive_int
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
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=output_file, help="ONNX file to write")
    target.add_argument("--triton-repo", type=Path, default=None, metavar="DIR",
                        help="write a Triton Inference Server model repository instead: DIR/<model>/config.pbtxt and "
                             "DIR/<model>/<version>/model.onnx (one request = one exposure; see engines/README.md)")
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
    triton = parser.add_argument_group("Triton model repository (--triton-repo)")
    triton.add_argument("--triton-model", default=None, metavar="NAME",
                        help="model name in the repository (default spikereveal_ldn; serve's --triton-model)")
    triton.add_argument("--triton-backend", choices=("onnxruntime", "tensorrt_plan"), default="onnxruntime",
                        help="onnxruntime (CPU or GPU; default) or tensorrt_plan (model.plan built on the target "
                             "with 'spikereveal build-engine', same TensorRT as the Triton server)")
    triton.add_argument("--triton-version", type=positive_int, default=1, metavar="N",
                        help="model version folder (default 1); Triton serves the newest")
    triton.add_argument("--triton-gpus", default="all", metavar="LIST",
                        help="where instances run: 'all' (every GPU the server sees; default), a list such as 0,1, "
                             "or 'cpu' (onnxruntime only)")
    triton.add_argument("--triton-instances", type=positive_int, default=1, metavar="N",
                        help="model instances per GPU (or on the CPU) (default 1)")
    triton.add_argument("--triton-queue", type=positive_int, default=8, metavar="N",
                        help="exposures that may wait at the server; beyond it a request is rejected (default 8)")
    triton.add_argument("--triton-queue-timeout-ms", type=positive_int, default=1000, metavar="MS",
                        help="an exposure that waited longer at the server is rejected, not run (default 1000)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from spikereveal.engines.export import ExportConfig, export_checkpoint
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    repo_config = _triton_config(args) if args.triton_repo is not None else None
    out = args.out
    if repo_config is not None:
        out = args.triton_repo / repo_config.model / str(repo_config.version) / "model.onnx"
        if out.exists() and not args.force:
            raise ConfigError(f"{out} exists; choose another --triton-version, or pass --force to overwrite it")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    height, width = args.height, args.width
    if not args.dynamic and (height is None or width is None) and args.calib:
        height, width = _grid_of(args.calib[0])  # a static export defaults to the calibration geometry
    config = ExportConfig(precision=args.precision, k=args.k, height=height, width=width,
                          dynamic=args.dynamic, calibration_windows=args.calib_windows,
                          subpixel_decoder=not args.keep_deconv)
    path = export_checkpoint(args.model, out, config, calib_recordings=args.calib, calib_cache=args.calib_cache)
    meta = read_onnx_metadata(path)
    shape = "dynamic" if args.dynamic else f"K={config.k}, {config.width}x{config.height}"
    print(f"wrote {path}: {meta['precision']}, {shape}, checkpoint sha256 {meta['source_sha256'][:12]}"
          + (f", calibrated on {meta['calibration_windows']} windows" if "calibration_windows" in meta else ""))
    if repo_config is not None:
        from spikereveal.engines.triton_repo import write_triton_repository

        written = write_triton_repository(path, args.triton_repo, repo_config)
        print(f"wrote {written['config']} (Triton model {repo_config.model!r}, version {repo_config.version}, "
              f"{repo_config.backend}, one exposure per request)")
        if "plan" in written:
            print(f"next, on the Triton machine: spikereveal build-engine {written['onnx']} --out {written['plan']}")
    return 0


def _triton_config(args):
    from spikereveal.engines.triton_repo import DEFAULT_TRITON_MODEL, TritonRepoConfig

    text = args.triton_gpus.strip().lower()
    if text == "all":
        gpus = None
    elif text == "cpu":
        gpus = ()
    else:
        try:
            gpus = tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ConfigError(f"--triton-gpus takes 'all', 'cpu' or a list such as 0,1; got {args.triton_gpus!r}") from None
    return TritonRepoConfig(backend=args.triton_backend, model=args.triton_model or DEFAULT_TRITON_MODEL,
                            version=args.triton_version, gpus=gpus, instances_per_gpu=args.triton_instances,
                            max_queue_size=args.triton_queue, queue_timeout_us=args.triton_queue_timeout_ms * 1000)


def _grid_of(recording_path) -> tuple[int, int]:
    from spikereveal.recording import open_recording

    with open_recording(recording_path, strict=False) as recording:
        return recording.meta.spike.canonical_shape
