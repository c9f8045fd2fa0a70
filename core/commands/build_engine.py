"""``spikereveal build-engine ONNX --out PLAN``: a TensorRT engine for this GPU, cached and precision-checked."""

from __future__ import annotations

import json
from pathlib import Path

from spikereveal.commands._types import output_dir, output_file
from spikereveal.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-engine",
        help="build a TensorRT engine from an ONNX export (on the target GPU / Jetson)",
        description="Build a TensorRT engine from a spikereveal ONNX export with the API TensorRT 10.3 (JetPack 6) "
                    "and 11.x share: strongly typed network (precision comes from the export: use an fp16 or int8 "
                    "ONNX), one static optimisation profile, timing cache. Engines are cached by (ONNX sha256, "
                    "TensorRT version, GPU and compute capability, precision, shapes); the engine's real layer "
                    "types are checked against --precision. Needs TensorRT and an NVIDIA GPU.",
    )
    parser.add_argument("onnx", type=Path, help="ONNX export (spikereveal export)")
    parser.add_argument("--out", type=output_file, required=True, help="engine plan file to write")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="expected precision (default: the export's own, from its metadata)")
    parser.add_argument("--k", "--batch", dest="k", type=int, default=None, metavar="K",
                        help="for dynamic exports: frames per exposure window")
    parser.add_argument("--image-height", "--height", dest="height", type=int, default=None,
                        help="for dynamic exports: network image height")
    parser.add_argument("--image-width", "--width", dest="width", type=int, default=None,
                        help="for dynamic exports: network image width")
    parser.add_argument("--workspace-mib", type=int, default=1024, help="builder memory-pool limit (default 1024)")
    parser.add_argument("--cache-dir", type=output_dir, default=None, help="engine cache (default ~/.cache/spikereveal)")
    parser.add_argument("--device", type=int, default=None, help="CUDA device ordinal (default: current)")
    parser.set_defaults(func=run)


def shape_from_metadata(meta: dict, k, height, width):
    """The static shape to build: the export's own, or the given values for a dynamic export."""
    from spikereveal.engines.runners import InputShape

    flags = {"batch": "--k", "height": "--image-height", "width": "--image-width"}  # metadata key -> flag

    def pick(key, given):
        stored = meta.get(key)
        if stored not in (None, "dynamic"):
            if given is not None and int(given) != int(stored):
                raise ConfigError(f"the export is static with {key} {stored}; {flags[key]} {given} does not match it")
            return int(stored)
        if given is None:
            raise ConfigError(f"the export has a dynamic {key}: pass {flags[key]}")
        return int(given)

    spike_frames = int(meta.get("spike_window", 21))
    return InputShape(pick("batch", k), pick("height", height), pick("width", width), spike_frames)


def run(args) -> int:
    from spikereveal.engines.runners import RunnerOptions, read_export_metadata
    from spikereveal.engines.trt import build_engine

    meta = read_export_metadata(args.onnx)
    precision = args.precision or meta.get("precision")
    if precision is None:
        raise ConfigError(f"{args.onnx} has no spikereveal precision metadata; pass --precision")
    shape = shape_from_metadata(meta, args.k, args.height, args.width)
    options = RunnerOptions(workspace_bytes=args.workspace_mib << 20,
                            cache_dir=str(args.cache_dir) if args.cache_dir else None, device=args.device)
    info = build_engine(args.onnx, args.out, shape, precision, options)
    print(f"wrote {args.out} ({'built' if info['built'] else 'from cache'}; {precision}; cache {info['cache']})")
    print(json.dumps(info["tensor_types"], sort_keys=True))
    return 0
