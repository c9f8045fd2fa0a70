"""``spikereveal simulate``: write a simulated hybrid-rig recording (spikes, blurry RGB, ground truth)."""

from __future__ import annotations

import argparse

from spikereveal.commands._types import int_pair

PRESET_NAMES = ("gopro", "rsb", "tiny")  # spikereveal.sim.config.PRESETS; listed here to keep --help light


def _homography(text: str) -> tuple[float, ...]:
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not 9 numbers: {text!r}") from None
    if len(values) != 9:
        raise argparse.ArgumentTypeError(f"a homography needs 9 numbers (row-major 3x3), got {len(values)}")
    return values


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="write a simulated recording (spikes, blurry RGB exposures, ground truth) from images",
        description=(
            "Simulate a hybrid spike/RGB rig filming moving images and write a recording directory "
            "(meta.json, spikes.dat, exposures.csv, gt.csv, plus sim_truth.json with the simulation's truth)."
        ),
    )
    parser.add_argument(
        "--preset", choices=PRESET_NAMES, default="gopro", help="rig geometry and sensor (default gopro)"
    )
    parser.add_argument("--exposures", type=int, default=8, help="number of RGB exposures (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--out", required=True, help="output recording directory")
    parser.add_argument("--images", help="an image file or a folder of images (default: scikit-image's samples)")
    parser.add_argument("--sprites", type=int, default=0, help="independently moving objects per exposure")
    parser.add_argument("--k", type=int, help="ground-truth frames per exposure (default 7)")
    parser.add_argument("--exposure-frames", type=int, help="spike frames per exposure (preset default)")
    parser.add_argument("--gap-frames", type=int, help="spike frames between exposures (default 2x margin)")
    parser.add_argument("--motion-scale", type=float, default=1.0,
                        help="scale the camera's blur, roll and zoom per exposure (0: static camera; default 1)")
    parser.add_argument("--noise-rate", type=float, help="dark-current spikes per pixel-frame (preset default)")
    parser.add_argument("--homography", type=_homography, metavar="H11,H12,...,H33",
                        help="RGB camera homography: canonical (4x spike) pixel -> RGB pixel, 9 numbers row-major")
    parser.add_argument("--rgb-size", type=int_pair("WIDTHxHEIGHT", "1280x720"), metavar="WxH", help="RGB frame size (with --homography)")
    parser.add_argument("--clock-offset-ns", type=int, default=0, help="RGB clock minus spike clock, ns")
    parser.add_argument("--clock-drift-ppm", type=float, default=0.0, help="RGB clock rate error, ppm")
    scene = parser.add_mutually_exclusive_group()
    scene.add_argument("--dark", action="store_true", help="lens cap: only sensor noise and hot pixels")
    scene.add_argument("--checkerboard", action="store_true", help="film a checkerboard (for calibration)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing recording in --out")
    parser.set_defaults(func=run)


def config_from_args(args):
    """The SimConfig the command line asks for (validated)."""
    from spikereveal.errors import ConfigError
    from spikereveal.sim.config import preset

    changes: dict = {"sprites": args.sprites}
    if args.k is not None:
        changes["k"] = args.k
    if args.exposure_frames is not None:
        changes["exposure_frames"] = args.exposure_frames
    if args.gap_frames is not None:
        changes["gap_frames"] = args.gap_frames
    if args.motion_scale != 1.0:
        if not args.motion_scale >= 0:
            raise ConfigError(f"--motion-scale must be >= 0, got {args.motion_scale}")
        motion = preset(args.preset).motion
        changes["motion"] = {
            "blur_fraction": tuple(args.motion_scale * v for v in motion.blur_fraction),
            "rotation_deg": args.motion_scale * motion.rotation_deg,
            "zoom_ratio": min(args.motion_scale * motion.zoom_ratio, 0.49),
        }
    if args.noise_rate is not None:
        changes["sensor"] = {"dark_spike_rate": args.noise_rate}
    if args.homography is not None:
        changes["rgb_homography"] = args.homography
    if args.rgb_size is not None:
        if args.homography is None:
            raise ConfigError("--rgb-size needs --homography (without one the RGB frame is exactly 4x the spikes)")
        changes["rgb_width"], changes["rgb_height"] = args.rgb_size
    changes["clock_offset_ns"] = args.clock_offset_ns
    changes["clock_drift_ppm"] = args.clock_drift_ppm
    if args.dark:
        changes["scene"] = "dark"
    elif args.checkerboard:
        changes["scene"] = "checkerboard"
    return preset(args.preset, **changes)


def run(args) -> int:
    from tqdm import tqdm

    from spikereveal.sim.scenes import load_scene_images
    from spikereveal.sim.simulate import simulate_recording

    config = config_from_args(args)
    scenes = load_scene_images(args.images) if args.images else None
    with tqdm(total=args.exposures, unit="exposure", desc=f"simulate {config.name}") as bar:
        path = simulate_recording(
            config, args.out, args.seed, args.exposures, scenes=scenes, progress=bar.update, overwrite=args.overwrite
        )
    print(f"wrote {path} ({args.exposures} exposures, preset {config.name}, seed {args.seed})")
    return 0
