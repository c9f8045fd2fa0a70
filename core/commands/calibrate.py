"""``spikereveal calibrate geometry|time|dark``: estimate a rig's calibration and write calibration.json."""

from __future__ import annotations

from pathlib import Path

from spikereveal.commands._types import int_pair, output_file, output_path

TARGETS = ("geometry", "time", "dark")


_DESCRIPTIONS = {
    "geometry": (
        "the homography from the canonical grid (4x the spike grid) into the RGB frame",
        "Estimate the homography from the canonical grid (4x the spike grid) into the RGB frame and write it to "
        "REC/calibration.json (or --out): from a checkerboard seen by both cameras (--method checkerboard), or "
        "from ordinary textured footage (--method features, the default). Fits whose residual exceeds "
        "--max-residual-px are refused with the reason. Under motion blur geometry and time are coupled: on "
        "footage with motion this also estimates the clock offset when the file has none; run 'calibrate time' "
        "afterwards to refine it with the new geometry. --overlay writes the warped RGB edges over the spike "
        "image, to check by eye."),
    "time": (
        "the offset and drift of the exposure timestamps against the spike clock",
        "Estimate the offset and drift of the RGB exposure timestamps against the spike clock, from footage with "
        "motion (the blur must match the spikes), with the geometry already in the calibration file, and write "
        "them to REC/calibration.json (or --out). Untrustworthy fits are refused with the reason."),
    "dark": (
        "hot-pixel and dark-current maps from a lens-cap recording",
        "Estimate the hot-pixel map and the dark-current rate of the spike sensor from a lens-cap recording "
        "(--dark, default: --recording itself; at least 200 spike frames) and write them to REC/calibration.json "
        "(or --out)."),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="calibrate a rig: RGB->spike geometry, clock offset/drift, hot pixels and dark current",
        description=(
            "Estimate one part of a hybrid rig's calibration from a recording and write (or update) "
            "REC/calibration.json; deblur, eval and serve apply it. 'spikereveal calibrate TARGET --help' "
            "describes each target."
        ),
    )
    targets = parser.add_subparsers(dest="target", metavar="TARGET")
    targets.required = True
    for target in TARGETS:
        short, long = _DESCRIPTIONS[target]
        child = targets.add_parser(target, help=short, description=long)
        child.add_argument("--recording", required=True, type=Path, help="the recording to calibrate (REC)")
        child.add_argument("--out", type=output_path,
                           help="calibration file to write or update (default REC/calibration.json)")
        if target == "geometry":
            child.add_argument("--method", choices=("checkerboard", "features"), default="features",
                               help="a checkerboard seen by both cameras, or target-free (default features)")
            child.add_argument("--board", type=int_pair("COLUMNSxROWS of inner corners", "8x5", minimum=2),
                               default=(8, 5), metavar="CxR",
                               help="checkerboard inner corners, columns x rows (default 8x5: a 9x6-square board)")
            child.add_argument("--max-residual-px", type=float, default=1.0,
                               help="refuse fits whose residual exceeds this, canonical px (default 1.0)")
            child.add_argument("--overlay", type=output_file, metavar="PNG",
                               help="write the warped RGB edges over the spike image, to check by eye")
        if target in ("geometry", "time"):
            child.add_argument("--exposures", type=int, help="at most this many exposures, spread over the "
                               f"recording (default {8 if target == 'geometry' else 64})")
        if target == "time":
            child.add_argument("--search-frames", type=int,
                               help="search offsets up to +- this many spike frames (default: one exposure, >= 40)")
            child.add_argument("--no-drift", action="store_true", help="fit an offset only")
        if target == "dark":
            child.add_argument("--dark", type=Path, metavar="DARK_REC",
                               help="the lens-cap recording (default: --recording itself)")
        child.set_defaults(func=run)


def clock_summary(clock) -> str:
    """One line: offset +- uncertainty, drift (or why it was not estimated), residual, exposures used."""
    period = clock.frame_period_ns or 1.0
    if clock.offset_uncertainty_ns is None:
        offset = f"offset {clock.offset_ns:.0f} ns ({clock.offset_ns / period:+.3f} spike frames, uncertainty unknown)"
    else:
        offset = (f"offset {clock.offset_ns:.0f} +- {clock.offset_uncertainty_ns:.0f} ns "
                  f"({clock.offset_ns / period:+.3f} +- {clock.offset_uncertainty_ns / period:.3f} spike frames)")
    if clock.drift_estimated:
        spread = "" if clock.drift_uncertainty_ppm is None else f" +- {clock.drift_uncertainty_ppm:.3f}"
        drift = f"drift {clock.drift_ppm:.3f}{spread} ppm"
    else:
        drift = f"drift {clock.drift_note or 'not estimated'}"
    tried = "" if clock.exposures_tried is None else f" of {clock.exposures_tried}"
    return (f"{offset}, {drift}, residual {clock.residual_ns:.0f} ns ({clock.residual_ns / period:.3f} frames) "
            f"over {clock.exposures}{tried} exposures")


def run(args) -> int:
    import cv2
    import numpy as np
    from tqdm import tqdm

    from spikereveal.calibration import fit, geometry
    from spikereveal.calibration.store import CALIBRATION_FILE, read_calibration, update_calibration
    from spikereveal.errors import ConfigError
    from spikereveal.recording import open_recording

    out = args.out if args.out is not None else args.recording / CALIBRATION_FILE
    if out.is_dir():
        out = out / CALIBRATION_FILE
    with open_recording(args.recording, strict=False) as recording:
        spike, rgb = recording.meta.spike, recording.meta.rgb
        shapes = ((spike.height, spike.width), (rgb.height, rgb.width))
        existing = read_calibration(out) if out.is_file() else None
        if existing is not None and (existing.spike_shape, existing.rgb_shape) != shapes:
            raise ConfigError(f"{out} was made for another rig geometry; choose another --out")
        clock = existing.clock if existing is not None else None
        photometric = existing.photometric if existing is not None else None
        if args.target == "geometry":
            limit = args.exposures or 8
            with tqdm(total=min(limit, len(recording.exposures)), desc="geometry", unit="exposure") as bar:
                result, found_clock = fit.calibrate_geometry_and_clock(
                    recording, args.method, clock, args.max_residual_px, board_inner_corners=args.board,
                    photometric=photometric, max_exposures=limit, progress=bar.update)
            sections = {"geometry": result}
            if clock is None and found_clock is not None:  # geometry and clock are coupled under motion blur
                sections["clock"] = clock = found_clock
                print("time (estimated with the geometry): " + clock_summary(found_clock))
            calibration = update_calibration(out, *shapes, **sections)
            residual = "n/a" if result.residual_px is None else f"{result.residual_px:.3f} px RMS"
            print(f"geometry ({result.method}): residual {residual} on the canonical grid, "
                  f"{result.inliers}/{result.points} {'corners' if result.method == 'checkerboard' else 'exposures'} "
                  f"kept, from exposures {list(result.exposures)}")
            print("homography canonical->RGB:\n" + np.array2string(result.homography, precision=6, suppress_small=True))
            if args.overlay is not None:
                index = result.exposures[0]
                tfp = fit.long_tfp(recording, index, clock, photometric)
                warped = calibration.warp_exposure(recording.read_exposure(index))
                args.overlay.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(args.overlay), geometry.overlay_image(tfp, warped)):
                    raise ConfigError(f"could not write the overlay PNG {args.overlay}")
                print(f"overlay (red: RGB edges over the spike image): {args.overlay}")
        elif args.target == "time":
            limit = args.exposures or 64
            with tqdm(total=min(limit, len(recording.exposures)), desc="time", unit="exposure") as bar:
                result = fit.calibrate_clock(recording, existing.geometry if existing else None, photometric,
                                             args.search_frames, limit, not args.no_drift, progress=bar.update)
            update_calibration(out, *shapes, clock=result)
            print("time: " + clock_summary(result))
        else:
            dark_path = args.dark if args.dark is not None else args.recording
            with open_recording(dark_path, strict=False) as dark:
                if (dark.meta.spike.height, dark.meta.spike.width) != shapes[0]:
                    raise ConfigError(
                        f"the dark recording {dark_path} has another spike geometry than {args.recording}")
                with tqdm(total=dark.spikes.frame_count, desc="dark", unit="frame", unit_scale=True) as bar:
                    result = fit.calibrate_dark(dark, progress=bar.update)
            update_calibration(out, *shapes, photometric=result)
            print(f"dark: {int(result.hot_mask.sum())} hot pixels ({100 * result.hot_mask.mean():.3f} %), median dark "
                  f"rate {result.median_rate:.5f} spikes/frame, hot above {result.hot_threshold_rate:.5f}, "
                  f"from {result.frames} frames")
    print(f"wrote {out}")
    return 0
