"""``spikereveal simulate``: write a simulated hybrid-rig recording (spikes, blurry RGB, ground truth)."""

from __future__ import annotations

import argparse
import math

from spikereveal.commands._types import add_k_argument, int_pair, output_dir_text, positive_int

# listed here (not imported) to keep --help light; tests check them against spikereveal.sim
PRESET_NAMES = ("gopro", "rsb", "tiny")  # spikereveal.sim.config.PRESETS
#: what each preset is for, in every --preset help
PRESET_HELP = ("gopro: the shipped model's geometry, judge quality here; rsb: the paper's real rig, 20 kHz "
               "400x250 spikes; tiny: 64x40 spikes, a plumbing check that runs in seconds, not a quality check "
               "(its sensor carries too little detail for the x4 network: student ~1.7 dB above the blurry input)")
SCENE_FAMILIES = (  # spikereveal.sim.scenes.SCENE_FAMILIES
    "default", "deadleaves", "synthetic", "skimage-train", "skimage-val", "skimage-test", "mixed-train",
)
MOTION_FAMILIES = ("camera", "objects")  # spikereveal.sim.config.MOTION_FAMILIES
SUITE_NAMES = ("generalisation", "adaptation")  # spikereveal.sim.suites.SUITES
DEFAULT_PRESET, DEFAULT_EXPOSURES, DEFAULT_SEED = "gopro", 8, 0


def _number(low: float, high: float | None = None, low_inclusive: bool = True, what: str = "a number"):
    """An argparse type: a finite float in [low, high] (``low`` excluded unless ``low_inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        above = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and above and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive = _number(0.0, low_inclusive=False, what="a finite number > 0 (e.g. 2)")
_non_negative = _number(0.0, what="a finite number >= 0 (e.g. 0.5)")
_probability = _number(0.0, 1.0, what="a probability in [0, 1] (e.g. 0.005)")
_relative_std = _number(0.0, 0.99, what="a relative std in [0, 0.99] (e.g. 0.02)")


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
        "--preset", choices=PRESET_NAMES, help=f"rig geometry and sensor (default {DEFAULT_PRESET}). {PRESET_HELP}"
    )
    parser.add_argument("--exposures", type=positive_int, help=f"number of RGB exposures (default {DEFAULT_EXPOSURES})")
    parser.add_argument("--seed", type=int, help=f"random seed; same seed, same bytes (default {DEFAULT_SEED})")
    parser.add_argument("--out", type=output_dir_text, required=True, help="output recording directory (with --suite: the suite's root)")
    scene = parser.add_mutually_exclusive_group()
    scene.add_argument("--scenes", choices=SCENE_FAMILIES,
                       help="scene family: default (10 scikit-image pictures, the default), deadleaves, synthetic, "
                            "skimage-train/-val/-test (disjoint scikit-image splits), mixed-train (deadleaves + "
                            "synthetic + skimage-train, drawn per exposure)")
    scene.add_argument("--images", help="an image file or a folder of images (your own scenes)")
    scene.add_argument("--dark", action="store_true", help="lens cap: only sensor noise and hot pixels")
    scene.add_argument("--checkerboard", action="store_true", help="film a checkerboard (for calibration)")
    parser.add_argument("--motion", choices=MOTION_FAMILIES,
                        help="motion family: camera (a moving camera, the default) or objects (a nearly static "
                             "camera and 2-5 fast objects cut from another image, occluding the background)")
    parser.add_argument("--sprites", type=int, default=0, help="independently moving sprites per exposure")
    add_k_argument(parser, "ground-truth frames per exposure", use_default=False)
    parser.add_argument("--exposure-frames", type=int, help="spike frames per exposure (preset default)")
    parser.add_argument("--gap-frames", type=int, help="spike frames between exposures (default 2x margin)")
    parser.add_argument("--motion-scale", type=_non_negative,
                        help="scale the camera's blur, roll and zoom per exposure (0: static camera; default 1)")
    parser.add_argument("--object-speed-scale", type=_non_negative,
                        help="scale the sprites' and objects' displacement per exposure (default 1)")
    parser.add_argument("--threshold-scale", type=_positive,
                        help="multiply the preset's spike threshold (gopro: 2 gives the paper's V_th 2 x 2; default 1)")
    parser.add_argument("--noise-rate", type=_probability, help="dark-current spikes per pixel-frame (preset default)")
    parser.add_argument("--hot-pixel-fraction", type=_probability, help="fraction of hot pixels (preset default)")
    parser.add_argument("--threshold-mismatch", type=_relative_std,
                        help="per-pixel relative std of the threshold (preset default)")
    parser.add_argument("--homography", type=_homography, metavar="H11,H12,...,H33",
                        help="RGB camera homography: canonical (4x spike) pixel -> RGB pixel, 9 numbers row-major")
    parser.add_argument("--rgb-size", type=int_pair("WIDTHxHEIGHT", "1280x720"), metavar="WxH", help="RGB frame size (with --homography)")
    parser.add_argument("--clock-offset-ns", type=int, default=0, help="RGB clock minus spike clock, ns")
    parser.add_argument("--clock-drift-ppm", type=float, default=0.0, help="RGB clock rate error, ppm")
    parser.add_argument("--suite", choices=SUITE_NAMES,
                        help="write a whole suite (spikereveal.sim.suites) under --out/<split>/<name>: it sets the "
                             "scenes, motion, sensor, seeds and exposure counts itself (--preset overrides its "
                             "gopro preset, e.g. tiny for a smoke test)")
    parser.add_argument("--exposures-scale", type=_positive,
                        help="with --suite: multiply every recording's exposure count (at least 1; default 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing recording in --out (with --suite: rewrite complete recordings)")
    parser.set_defaults(func=run)


# options a suite sets itself, with the value that means "not given"
_SUITE_CONFLICTS = {
    "exposures": None, "seed": None, "scenes": None, "images": None, "dark": False, "checkerboard": False,
    "motion": None, "sprites": 0, "k": None, "exposure_frames": None, "gap_frames": None, "motion_scale": None,
    "object_speed_scale": None, "threshold_scale": None, "noise_rate": None, "hot_pixel_fraction": None,
    "threshold_mismatch": None, "homography": None, "rgb_size": None, "clock_offset_ns": 0, "clock_drift_ppm": 0.0,
}


def config_from_args(args):
    """The SimConfig the command line asks for (validated)."""
    from spikereveal.errors import ConfigError
    from spikereveal.sim.config import motion_family, preset, scaled_motion, scaled_sensor

    base = preset(args.preset or DEFAULT_PRESET)
    changes: dict = {"sprites": args.sprites}
    if args.k is not None:
        changes["k"] = args.k
    if args.exposure_frames is not None:
        changes["exposure_frames"] = args.exposure_frames
    if args.gap_frames is not None:
        changes["gap_frames"] = args.gap_frames
    motion = motion_family(args.motion, base.motion) if args.motion else base.motion
    motion = scaled_motion(
        motion,
        1.0 if args.motion_scale is None else args.motion_scale,
        1.0 if args.object_speed_scale is None else args.object_speed_scale,
    )
    if motion != base.motion:
        changes["motion"] = motion
    sensor_changes = {
        field: value
        for field, value in (("dark_spike_rate", args.noise_rate), ("hot_pixel_fraction", args.hot_pixel_fraction),
                             ("threshold_mismatch", args.threshold_mismatch))
        if value is not None
    }
    threshold_scale = 1.0 if args.threshold_scale is None else args.threshold_scale
    sensor = scaled_sensor(base.sensor, threshold_scale, **sensor_changes)
    if sensor != base.sensor:
        changes["sensor"] = sensor
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
    return base.with_changes(**changes)


def _run_suite(args) -> int:
    from tqdm import tqdm

    from spikereveal.errors import ConfigError
    from spikereveal.sim.suites import recording_complete, suite, write_entry

    given = [name for name, unset in _SUITE_CONFLICTS.items() if getattr(args, name) != unset]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"--suite {args.suite} sets scenes, motion, sensor, seeds and exposures itself; drop {flags}")
    entries = suite(args.suite)
    scale = 1.0 if args.exposures_scale is None else args.exposures_scale
    for entry in entries:  # fail on a bad scale before writing anything
        entry.exposure_count(scale)
    written = skipped = 0
    for entry in entries:
        path = entry.path(args.out)
        if recording_complete(path) and not args.overwrite:
            print(f"skip {path} (exists; --overwrite to rewrite it)")
            skipped += 1
            continue
        count = entry.exposure_count(scale)
        with tqdm(total=count, unit="exposure", desc=f"{entry.split}/{entry.name}", leave=False) as bar:
            write_entry(entry, args.out, scale, overwrite=args.overwrite, preset_name=args.preset,
                        suite_name=args.suite, progress=bar.update)
        config = entry.config(args.preset)
        print(f"wrote {path} ({count} exposures, preset {config.name}, seed {entry.seed}, scenes {entry.scenes}, "
              f"motion {entry.motion} x{entry.motion_scale:g}, threshold x{entry.threshold_scale:g})")
        written += 1
    print(f"suite {args.suite}: {written} written, {skipped} skipped under {args.out}")
    return 0


def run(args) -> int:
    from tqdm import tqdm

    from spikereveal.errors import ConfigError
    from spikereveal.sim.scenes import load_scene_images
    from spikereveal.sim.simulate import simulate_recording

    if args.suite:
        return _run_suite(args)
    if args.exposures_scale is not None:
        raise ConfigError("--exposures-scale only applies to --suite; use --exposures for one recording")
    config = config_from_args(args)
    exposures = DEFAULT_EXPOSURES if args.exposures is None else args.exposures
    seed = DEFAULT_SEED if args.seed is None else args.seed
    scenes = load_scene_images(args.images) if args.images else args.scenes
    labels = {  # the CLI's scales; the resulting config is in sim_truth.json too
        "threshold_scale": 1.0 if args.threshold_scale is None else args.threshold_scale,
        "motion_scale": 1.0 if args.motion_scale is None else args.motion_scale,
        "object_speed_scale": 1.0 if args.object_speed_scale is None else args.object_speed_scale,
    }
    if args.images:
        labels["images"] = str(args.images)
    with tqdm(total=exposures, unit="exposure", desc=f"simulate {config.name}") as bar:
        path = simulate_recording(
            config, args.out, seed, exposures, scenes=scenes, progress=bar.update, overwrite=args.overwrite,
            labels=labels,
        )
    family = args.scenes or ("images" if args.images else config.scene if config.scene != "images" else "default")
    print(f"wrote {path} ({exposures} exposures, preset {config.name}, seed {seed}, scenes {family}, "
          f"motion {config.motion.family})")
    return 0
