"""Calibration estimators run over a recording: choose exposures, cut spike windows, call the pure maths.

Reads through :mod:`spikereveal.recording` only (no torch, no zmq). Each function returns one section of
the calibration or raises CalibrationError saying why the data cannot support it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from spikereveal.calibration import clock as clock_math
from spikereveal.calibration import geometry as geo
from spikereveal.calibration.clock import ClockCalibration
from spikereveal.calibration.errors import CalibrationError
from spikereveal.calibration.photometric import PhotometricCalibration, dark_maps
from spikereveal.errors import ConfigError
from spikereveal.kernels.accumulate import window_count
from spikereveal.kernels.images import tfp_range
from spikereveal.kernels.timing import frame_period_ns, time_to_index

logger = logging.getLogger(__name__)

DARK_CHUNK_FRAMES = 8192
CORNER_RESIDUAL_FACTOR = 2.0  # checkerboard corner residual limit, times max_residual_px
ROUGH_GEOMETRY_SMOOTHING_PX = 2.0
MAX_JOINT_ROUNDS = 6  # geometry <-> clock alternations
JOINT_TOLERANCE_PX = 0.05
JOINT_TOLERANCE_FRAMES = 0.25  # spike px; clock scores without a geometry calibration


def exposure_frames(recording, index: int, clock: ClockCalibration | None = None) -> tuple[int, int]:
    """Spike frames ``[first, stop)`` exposure ``index`` covers, on the spike clock."""
    exposure = recording.exposure(index)
    start, duration = exposure.start_ns, exposure.duration_ns
    if clock is not None:
        start, duration = clock.exposure_on_spike_clock(start, duration)
    spike = recording.meta.spike
    first = int(time_to_index(start, spike.t0_ns, spike.rate_hz))
    last = int(time_to_index(start + duration, spike.t0_ns, spike.rate_hz))
    return first, last + 1


def spread_exposures(candidates: list[int], limit: int) -> list[int]:
    """At most ``limit`` of ``candidates``, evenly spread over the recording."""
    if limit < 1:
        raise ConfigError(f"the number of exposures to use must be >= 1, got {limit}")
    if len(candidates) <= limit:
        return list(candidates)
    picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, limit)).astype(int))
    return [candidates[i] for i in picks]


def long_tfp(recording, index: int, clock: ClockCalibration | None = None,
             photometric: PhotometricCalibration | None = None) -> np.ndarray | None:
    """The spike rate over exposure ``index`` (h, w) float32, or None when its frames are not recorded."""
    first, stop = exposure_frames(recording, index, clock)
    if first < 0 or stop > recording.spikes.frame_count:
        return None
    spike = recording.meta.spike
    packed = recording.spikes.read(first, stop)
    rate = tfp_range(packed, spike.height, spike.width, 0, stop - first)
    return rate if photometric is None else photometric.correct_rate(rate)


def _recorded(recording, clock) -> list[int]:
    frames = recording.spikes.frame_count
    out = []
    for exposure in recording.exposures:
        first, stop = exposure_frames(recording, exposure.index, clock)
        if first >= 0 and stop <= frames:
            out.append(exposure.index)
    return out


def calibrate_geometry(
    recording,
    method: str = "features",
    board_inner_corners: tuple[int, int] = geo.DEFAULT_BOARD_INNER_CORNERS,
    clock: ClockCalibration | None = None,
    photometric: PhotometricCalibration | None = None,
    max_exposures: int = 8,
    max_residual_px: float = geo.DEFAULT_MAX_RESIDUAL_PX,
    min_correlation: float = geo.DEFAULT_MIN_CORRELATION,
    min_texture: float = geo.DEFAULT_MIN_TEXTURE,
    progress: Callable[[int], None] | None = None,
) -> geo.GeometryCalibration:
    """The homography canonical -> RGB of ``recording``'s rig (see :mod:`spikereveal.calibration.geometry`).

    ``checkerboard``: corners of a board seen by both cameras give a first fit; ECC on each exposure
    refines it (corners alone are noisy on a 4x-upsampled spike image). ``features``: target-free.
    """
    if method not in ("checkerboard", "features"):
        raise ConfigError(f"geometry method must be 'checkerboard' or 'features', got {method!r}")
    spike, rgb = recording.meta.spike, recording.meta.rgb
    canonical_shape = spike.canonical_shape
    rgb_shape = (rgb.height, rgb.width)
    chosen = spread_exposures(_recorded(recording, clock), max_exposures)
    if not chosen:
        raise CalibrationError(f"{recording.path}: no exposure has its spike frames recorded")
    prior = geo.scale_prior(canonical_shape, rgb_shape)
    rgb_per_canonical = float(np.sqrt(abs(np.linalg.det(prior[:2, :2]))))
    images: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    pairs, pair_exposures, misses = [], [], {"spike": 0, "rgb": 0}
    alignments, failures = [], []
    for index in chosen:
        tfp = long_tfp(recording, index, clock, photometric)
        rgb_gray = geo.gray(recording.read_exposure(index))
        images[index] = (tfp, rgb_gray)
        if method == "checkerboard":
            pair, missed = geo.checkerboard_correspondences(geo.spike_to_canonical(tfp), rgb_gray, board_inner_corners)
            if pair is None:
                misses[missed] += 1
            else:
                pairs.append(pair)
                pair_exposures.append(index)
        else:
            try:
                matrix, correlation, start = geo.align_exposure(
                    tfp, rgb_gray, prior, True, min_texture, min_correlation)
            except CalibrationError as exc:
                failures.append(str(exc).split(";")[0])
                logger.info("exposure %d: %s", index, exc)
            else:
                alignments.append((index, matrix, correlation, start))
        if progress is not None:
            progress(1)
    if method == "features":
        return geo.fit_target_free(alignments, canonical_shape, len(chosen), failures, max_residual_px)

    corners = geo.fit_checkerboard(pairs, pair_exposures, board_inner_corners, len(chosen), misses,
                                   max_residual_px=max(4.0 * max_residual_px, 2.0))
    refined = []
    for index in pair_exposures:  # ECC uses every pixel of the board, not 40 noisy corners
        tfp, rgb_gray = images[index]
        template, image = geo.prepare_target_free(tfp, rgb_gray, rgb_per_canonical)
        try:
            matrix, correlation = geo.align_ecc(template, image, corners.homography)
        except CalibrationError as exc:
            logger.info("exposure %d: ECC refinement failed: %s", index, exc)
            continue
        if correlation >= min_correlation:
            refined.append((index, matrix, correlation, "checkerboard"))
    details = dict(corners.details)
    details["corner_fit_residual_px"] = corners.residual_px
    if refined:
        matrix, deviation = geo._consensus([r[1] for r in refined], canonical_shape)
        details["ecc_spread_px"] = float(np.sqrt(np.mean(deviation**2))) if len(refined) > 1 else None
        details["ecc_correlations"] = [round(r[2], 5) for r in refined]
    else:
        matrix = corners.homography
        details["ecc_spread_px"] = None
    canonical = np.concatenate([p[0] for p in pairs])
    rgb_points = np.concatenate([p[1] for p in pairs])
    back = geo.project(np.linalg.inv(matrix), rgb_points)
    errors = np.sqrt(np.sum((back - canonical) ** 2, axis=1))
    inliers = errors <= max(3.0 * float(np.median(errors)), 1.0)
    residual = float(np.sqrt(np.mean(errors[inliers] ** 2)))
    result = geo.GeometryCalibration(matrix, "checkerboard", residual, int(inliers.sum()), len(canonical),
                                     tuple(pair_exposures), details)
    # corners found on a 4x-upsampled spike image scatter by ~0.8 px on their own, so the corner residual
    # gets twice the limit; the ECC alignments (every pixel of the board) must agree within the limit itself
    if residual > CORNER_RESIDUAL_FACTOR * max_residual_px:
        raise CalibrationError(
            f"checkerboard residual {residual:.2f} px RMS on the canonical grid exceeds "
            f"{CORNER_RESIDUAL_FACTOR * max_residual_px:g} px; the fit is not trustworthy (board moving during "
            "exposures, lens distortion, heavy blur)"
        )
    spread = details.get("ecc_spread_px")
    if spread is not None and spread > max_residual_px:
        raise CalibrationError(
            f"the per-exposure board alignments disagree by {spread:.2f} px RMS (> {max_residual_px} px); the "
            "board or the rig moved between exposures, or the lens distorts"
        )
    return result


def calibrate_geometry_and_clock(
    recording,
    method: str = "features",
    clock: ClockCalibration | None = None,
    max_residual_px: float = geo.DEFAULT_MAX_RESIDUAL_PX,
    **options,
) -> tuple[geo.GeometryCalibration, ClockCalibration | None]:
    """Geometry, and the clock when none is given: under motion blur they are coupled.

    Shifting an exposure's spike window in time moves its blur along the motion, which an alignment
    cannot tell from a shift in space (and vice versa). Across exposures moving in different directions
    the coupling averages out, so: a lenient geometry (consensus over exposures), the clock with it, the
    geometry again on the clock-corrected windows, and so on until both settle; the final geometry must
    pass the residual check. Footage without motion needs no clock for geometry (a static scene looks the
    same at any offset); then the clock stays None.
    """
    if clock is not None or method == "checkerboard":
        return calibrate_geometry(recording, method, clock=clock, max_residual_px=max_residual_px,
                                  **options), clock
    progress = options.pop("progress", None)
    photometric = options.get("photometric")
    lenient = float("inf")
    geometry = calibrate_geometry(recording, method, max_residual_px=lenient, progress=progress, **options)
    clock = None
    period = frame_period_ns(recording.meta.spike.rate_hz)
    canonical_shape = recording.meta.spike.canonical_shape
    for round_index in range(MAX_JOINT_ROUNDS):  # alternate; each round shrinks both errors ~3x
        try:
            new_clock = calibrate_clock(recording, geometry, photometric, check=False)  # a step, not the result
        except CalibrationError as exc:
            if clock is None:
                logger.info("no clock estimate from this footage (%s); geometry without it", exc)
            break
        new_geometry = calibrate_geometry(recording, method, clock=new_clock, max_residual_px=lenient, **options)
        moved_px = geo.corner_error_px(new_geometry.homography, geometry.homography, canonical_shape)
        moved_frames = abs(new_clock.offset_ns - (clock.offset_ns if clock else 0.0)) / period
        logger.info("round %d: clock %+.2f frames, geometry moved %.3f px", round_index, moved_frames, moved_px)
        geometry, clock = new_geometry, new_clock
        if moved_px < JOINT_TOLERANCE_PX and moved_frames < JOINT_TOLERANCE_FRAMES:
            break
    if clock is not None:
        try:  # the clock once more, with the final geometry; only a trustworthy one is returned (and written)
            clock = calibrate_clock(recording, geometry, photometric)
        except CalibrationError as exc:
            logger.warning("the clock estimated with the geometry is not kept (%s)", exc)
            clock = None
    if geometry.residual_px is not None and geometry.residual_px > max_residual_px:
        # redo the last fit with the real limit: it raises, saying why
        calibrate_geometry(recording, method, clock=clock, max_residual_px=max_residual_px, **options)
    return geometry, clock


def calibrate_clock(
    recording,
    geometry: geo.GeometryCalibration | None = None,
    photometric: PhotometricCalibration | None = None,
    search_frames: int | None = None,
    max_exposures: int = 64,
    fit_drift: bool = True,
    min_exposures: int = 3,
    progress: Callable[[int], None] | None = None,
    max_uncertainty_frames: float = clock_math.MAX_UNCERTAINTY_FRAMES,
    max_residual_frames: float = clock_math.MAX_RESIDUAL_FRAMES,
    check: bool = True,
) -> ClockCalibration:
    """Offset (and drift) of the exposure timestamps relative to the spike clock (see ``clock``), or
    CalibrationError when it cannot be trusted (:func:`check_clock`): too few exposures with motion, per-
    exposure offsets that scatter by more than ``max_residual_frames``, or an offset uncertainty above
    ``max_uncertainty_frames`` (spike frames). ``check=False``: no trust checks (an intermediate step of
    the joint geometry/clock fit, never written)."""
    if search_frames is None:  # host clocks can be off by a good part of an exposure
        first, stop = exposure_frames(recording, recording.exposures[0].index) if recording.exposures else (0, 0)
        search_frames = max(clock_math.DEFAULT_SEARCH_FRAMES, stop - first)
    if search_frames < 2:
        raise ConfigError(f"search_frames must be >= 2, got {search_frames}")
    spike, rgb = recording.meta.spike, recording.meta.rgb
    canonical_shape, rgb_shape = spike.canonical_shape, (rgb.height, rgb.width)
    smoothing = 0.0
    if geometry is not None:
        homography = geometry.homography
    elif rgb_shape == canonical_shape:
        homography = np.eye(3)
    else:
        homography = geo.scale_prior(canonical_shape, rgb_shape)
        smoothing = ROUGH_GEOMETRY_SMOOTHING_PX
        logger.warning("no geometry calibration: assuming the RGB camera sees the spike camera's view; comparing "
                       "blurred images (calibrate geometry, then time again, for the best offset)")
    valid = geo.canonical_to_spike(geo.valid_canonical_mask(homography, canonical_shape, rgb_shape).astype(np.float32))
    mask = valid > 0.999
    if photometric is not None:
        mask &= ~photometric.hot_mask
    period = frame_period_ns(spike.rate_hz)
    chosen = spread_exposures([e.index for e in recording.exposures], max_exposures)
    targets: dict[int, np.ndarray] = {}

    def target(index: int) -> np.ndarray:
        if index not in targets:
            image = geo.warp_to_canonical(recording.read_exposure(index), homography, canonical_shape)
            targets[index] = geo.canonical_to_spike(geo.gray(image))
        return targets[index]

    # pass 1 trusts the written durations; pass 2 searches around the first fit with the exposure lengths
    # that fit implies (a drifting clock stretches the written durations)
    result = _clock_pass(recording, chosen, None, target, mask, search_frames, fit_drift, min_exposures,
                         smoothing, progress)
    if fit_drift:
        narrow = max(4, int(np.ceil(3 * result.residual_ns / period)) + 2)
        try:
            result = _clock_pass(recording, chosen, result, target, mask, min(narrow, search_frames), fit_drift,
                                 min_exposures, smoothing, None)
        except CalibrationError as exc:  # keep the first pass rather than nothing
            logger.info("the refining pass failed (%s); keeping the first estimate", exc)
    if not check:
        return result
    return check_clock(result, recording.path, min_exposures, max_uncertainty_frames, max_residual_frames)


def _clock_pass(recording, chosen, previous, target, mask, search_frames, fit_drift, min_exposures, smoothing,
                progress):
    spike = recording.meta.spike
    period = frame_period_ns(spike.rate_hz)
    frames = recording.spikes.frame_count
    times, offsets, failures, uncertainties = [], [], [], []
    for index in chosen:
        if progress is not None:
            progress(1)
        first, stop = exposure_frames(recording, index, previous)
        length = stop - first
        low, high = max(-search_frames, -first), min(search_frames, frames - stop)
        if high - low < 4:
            failures.append("its window is not recorded")
            continue
        packed = recording.spikes.read(first + low, stop + high)

        def counts_at(shifts):
            return clock_math.shift_counts(packed, spike.height, spike.width, first + low, first, length, shifts,
                                           smoothing)

        smoothed = clock_math.smooth_target(target(index), smoothing)
        # coarse to fine: about 40 candidates over a wide range, then every frame around the best
        step = max(1, (high - low) // clock_math.COARSE_CANDIDATES)
        coarse = np.arange(low, high + 1, step)
        coarse_counts = counts_at(coarse)
        coarse_scores = clock_math._pearson_rows(coarse_counts, smoothed, mask)
        best = int(coarse[np.argmax(coarse_scores)])
        contrast_coarse = float(coarse_scores.max() - 0.5 * (coarse_scores[0] + coarse_scores[-1]))
        if step > 1:
            shifts = np.arange(max(low, best - 2 * step), min(high, best + 2 * step) + 1)
            counts = counts_at(shifts)
            scores = clock_math._pearson_rows(counts, smoothed, mask)
        else:
            shifts, counts, scores = coarse, coarse_counts, coarse_scores
        if scores.max() < clock_math.MIN_PEAK_CORRELATION:
            failures.append(f"the spikes do not explain the frame (correlation below {clock_math.MIN_PEAK_CORRELATION})")
            continue
        try:
            if step > 1 and best in (int(coarse[0]), int(coarse[-1])):
                raise CalibrationError(f"the best clock shift lies at the edge of the search ({best:+d} frames); "
                                       "raise --search-frames")
            shift, contrast = clock_math.peak_shift(shifts, scores)
        except CalibrationError as exc:
            failures.append(str(exc).split(";")[0])
            continue
        # the contrast against the ends of a wide search says the scene changes at all; a refining pass
        # searches only a few frames around a known peak, where the ends are close to it by design
        contrast = max(contrast, contrast_coarse)
        if previous is None and contrast < clock_math.MIN_PEAK_CONTRAST:
            failures.append("too little motion: the scene hardly changes, so no shift explains the frame better "
                            "than another")
            continue
        own = clock_math.exposure_peak_uncertainty(shifts, counts, smoothed, mask)
        if own > clock_math.MAX_EXPOSURE_UNCERTAINTY_FRAMES:
            failures.append("too little motion: two halves of the image disagree on the best shift by more "
                            f"than {2 * clock_math.MAX_EXPOSURE_UNCERTAINTY_FRAMES:g} frames")
            continue
        best_start = first + shift  # fractional spike index where the exposure really starts
        exposure = recording.exposure(index)
        offsets.append(exposure.start_ns - spike.t0_ns - best_start * period)
        times.append(spike.t0_ns + best_start * period)
        uncertainties.append(own * period)
    if len(offsets) < min_exposures:
        reasons = "; ".join(f"{reason} ({failures.count(reason)}x)" for reason in sorted(set(failures)))
        reasons = reasons or "too few exposures"
        raise CalibrationError(
            f"{recording.path}: the clock offset could be measured on {len(offsets)} of {len(chosen)} exposure(s), "
            f"at least {min_exposures} are needed ({reasons}); calibrate time on footage with motion"
        )
    return clock_math.fit_drift(np.array(times), np.array(offsets), spike.t0_ns, fit_drift, period,
                                exposures_tried=len(chosen), exposure_uncertainties_ns=np.array(uncertainties))


def check_clock(result: ClockCalibration, path, min_exposures: int = 3,
                max_uncertainty_frames: float = clock_math.MAX_UNCERTAINTY_FRAMES,
                max_residual_frames: float = clock_math.MAX_RESIDUAL_FRAMES) -> ClockCalibration:
    """``result`` when it can be trusted; CalibrationError saying why otherwise (nothing is written)."""
    period = result.frame_period_ns or 1.0
    tried = result.exposures_tried if result.exposures_tried is not None else result.exposures
    if result.exposures < min_exposures:
        raise CalibrationError(
            f"{path}: only {result.exposures} of {tried} exposures agree on a clock offset, at least {min_exposures} "
            "are needed; calibrate time on footage with motion, with more exposures")
    if result.residual_ns > max_residual_frames * period:
        raise CalibrationError(
            f"{path}: the per-exposure clock offsets scatter by {result.residual_ns / period:.2f} spike frames RMS "
            f"(> {max_residual_frames:g}) over {result.exposures} exposures: residual too large, the offset is not "
            "trustworthy (too little motion, a wrong geometry -- calibrate geometry first -- or a jittery clock)")
    if result.offset_uncertainty_ns is None or result.offset_uncertainty_ns > max_uncertainty_frames * period:
        shown = "unknown" if result.offset_uncertainty_ns is None else f"{result.offset_uncertainty_ns / period:.2f}"
        raise CalibrationError(
            f"{path}: the clock offset {result.offset_ns / period:+.2f} spike frames is uncertain by {shown} frames "
            f"(> {max_uncertainty_frames:g}) from {result.exposures} of {tried} exposures; calibrate time on longer "
            "footage with motion (more exposures)")
    return result


def calibrate_dark(recording, progress: Callable[[int], None] | None = None, **limits) -> PhotometricCalibration:
    """Dark-rate and hot-pixel maps from a dark (lens-cap) recording: every recorded frame counts."""
    spike = recording.meta.spike
    frames = recording.spikes.frame_count
    total = np.zeros((spike.height, spike.width), dtype=np.int64)
    for start in range(0, frames, DARK_CHUNK_FRAMES):
        stop = min(start + DARK_CHUNK_FRAMES, frames)
        total += window_count(recording.spikes.read(start, stop), spike.height, spike.width, 0, stop - start)
        if progress is not None:
            progress(stop - start)
    return dark_maps(total, frames, source=str(recording.path), **limits)
