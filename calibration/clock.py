"""Clock offset and drift between the RGB camera's exposure timestamps and the spike clock (SPEC §4).

Model (the simulator's): ``rgb_ns = t_ns + offset_ns + drift_ppm * 1e-6 * (t_ns - reference_ns)`` where
``t_ns`` is the spike clock and ``reference_ns`` the spike stream's ``t0_ns``.

Estimation: each blurry frame is the mean of the scene over its exposure, and so, up to a gain, is the
spike count over the exposure's window. Slide the window over candidate whole-frame shifts, score each by
the correlation between gray(B) (on the spike grid) and the counts, and interpolate the peak
(parabola through the best score and its neighbours) for sub-frame resolution. The per-exposure offsets
then give offset and drift by a robust straight-line fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikereveal.calibration.errors import CalibrationError
from spikereveal.errors import ConfigError
from spikereveal.kernels.accumulate import window_counts

DEFAULT_SEARCH_FRAMES = 40  # candidate shifts +-, in spike frames, at least (default: one exposure)
COARSE_CANDIDATES = 40  # shifts tried on the coarse pass of a wide search
MIN_PEAK_CONTRAST = 0.003  # best score minus the mean of the scores at the search edges
MIN_DRIFT_EXPOSURES = 5  # fewer exposures give an offset only
MIN_DRIFT_SIGNIFICANCE = 3.0  # a drift is estimated when this many standard errors from 0 ...
MAX_DRIFT_UNCERTAINTY_PPM = 10.0  # ... or known to within this (1 sigma); otherwise offset only
BOOTSTRAP_RESAMPLES = 400  # resamplings of the exposures for the offset's uncertainty
MAX_UNCERTAINTY_FRAMES = 1.0  # an offset less certain than this (1 sigma, spike frames) is refused
MAX_RESIDUAL_FRAMES = 1.0  # per-exposure offsets scattering more than this (RMS, spike frames) are refused
MAX_EXPOSURE_UNCERTAINTY_FRAMES = 1.0  # an exposure whose own peak is less certain is "too little motion"
SPLIT_BLOCK_PX = 8  # block size of the two pixel halves that measure one exposure's peak uncertainty
MIN_PEAK_CORRELATION = 0.5  # below this the spikes do not explain the frame at any shift


@dataclass(frozen=True)
class ClockCalibration:
    """RGB clock vs spike clock: ``rgb = t + offset_ns + drift_ppm * 1e-6 * (t - reference_ns)``.

    ``offset_uncertainty_ns``: one standard uncertainty of ``offset_ns`` (the larger of the fit's standard
    error and a bootstrap over exposures; None when unknown, e.g. written by hand). ``drift_estimated``
    False: an offset-only fit, ``drift_ppm`` is 0 and ``drift_note`` says why the drift was not estimated
    (``--no-drift``, too few exposures, a recording too short to tell the drift from none).
    ``drift_uncertainty_ppm``: the drift's standard error where the data gave one."""

    offset_ns: float
    drift_ppm: float
    residual_ns: float
    exposures: int
    reference_ns: int
    frame_period_ns: float | None = None
    offset_uncertainty_ns: float | None = None
    drift_estimated: bool = True
    drift_uncertainty_ppm: float | None = None
    drift_note: str | None = None
    exposures_tried: int | None = None

    def __post_init__(self):
        for name in ("offset_ns", "drift_ppm", "residual_ns", "offset_uncertainty_ns", "drift_uncertainty_ppm"):
            value = getattr(self, name)
            if value is None and name in ("offset_uncertainty_ns", "drift_uncertainty_ppm"):
                continue
            is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not is_number or not np.isfinite(value):
                raise ConfigError(f"clock {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if abs(self.drift_ppm) >= 1e5:
            raise ConfigError(f"clock drift_ppm must be within +-1e5, got {self.drift_ppm}")
        for name in ("residual_ns", "offset_uncertainty_ns", "drift_uncertainty_ppm"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"clock {name} must be >= 0, got {value}")
        if not isinstance(self.drift_estimated, (bool, np.bool_)):
            raise ConfigError(f"clock drift_estimated must be true or false, got {self.drift_estimated!r}")
        object.__setattr__(self, "drift_estimated", bool(self.drift_estimated))
        if not self.drift_estimated and self.drift_ppm != 0.0:
            raise ConfigError(f"clock drift_ppm must be 0 when the drift was not estimated, got {self.drift_ppm}")
        object.__setattr__(self, "exposures", int(self.exposures))
        object.__setattr__(self, "reference_ns", int(self.reference_ns))
        if self.exposures_tried is not None:
            object.__setattr__(self, "exposures_tried", int(self.exposures_tried))

    def to_spike_clock(self, rgb_ns):
        """RGB-clock time(s) -> spike-clock int64 ns (inverts the model exactly, then rounds)."""
        rgb = np.asarray(rgb_ns, dtype=np.int64)
        delta = (rgb - np.int64(self.reference_ns)).astype(np.float64) - self.offset_ns
        result = np.int64(self.reference_ns) + np.round(delta / (1.0 + self.drift_ppm * 1e-6)).astype(np.int64)
        return result if np.ndim(result) else np.int64(result)

    def exposure_on_spike_clock(self, start_ns: int, duration_ns: int) -> tuple[int, int]:
        """An exposure's (start_ns, duration_ns) as written by the RGB camera -> on the spike clock."""
        start = int(self.to_spike_clock(start_ns))
        end = int(self.to_spike_clock(int(start_ns) + int(duration_ns)))
        return start, max(end - start, 1)

    def to_json(self) -> dict:
        return {
            "offset_ns": self.offset_ns,
            "offset_uncertainty_ns": self.offset_uncertainty_ns,
            "drift_ppm": self.drift_ppm,
            "drift_estimated": self.drift_estimated,
            "drift_uncertainty_ppm": self.drift_uncertainty_ppm,
            "drift_note": self.drift_note,
            "residual_ns": self.residual_ns,
            "exposures": self.exposures,
            "exposures_tried": self.exposures_tried,
            "reference_ns": self.reference_ns,
            "frame_period_ns": self.frame_period_ns,
            "model": "rgb_ns = t_ns + offset_ns + drift_ppm * 1e-6 * (t_ns - reference_ns)",
        }


def _pearson_rows(counts: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Correlation of each (h, w) count image with ``target`` over ``mask``."""
    x = counts.reshape(counts.shape[0], -1)[:, mask.ravel()].astype(np.float64)
    y = target.ravel()[mask.ravel()].astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean()
    denominator = np.sqrt((x * x).sum(axis=1) * (y * y).sum())
    scores = np.zeros(x.shape[0])
    np.divide(x @ y, denominator, out=scores, where=denominator > 0)
    return scores


def shift_counts(packed, height: int, width: int, first_index: int, exposure_first: int, exposure_frames: int,
                 shifts: np.ndarray, smoothing_px: float = 0.0) -> np.ndarray:
    """Spike counts (n, h, w) over ``[exposure_first + s, exposure_first + s + exposure_frames)`` for each
    shift ``s``, Gaussian-blurred by ``smoothing_px`` (spike px) when > 0."""
    starts = exposure_first + np.asarray(shifts, dtype=np.int64)
    counts = window_counts(packed, height, width, starts, starts + exposure_frames, first_index=first_index)
    if smoothing_px > 0:
        import cv2

        counts = np.stack([cv2.GaussianBlur(c.astype(np.float32), (0, 0), smoothing_px) for c in counts])
    return counts


def smooth_target(target: np.ndarray, smoothing_px: float = 0.0) -> np.ndarray:
    if smoothing_px <= 0:
        return np.asarray(target)
    import cv2

    return cv2.GaussianBlur(np.asarray(target, dtype=np.float32), (0, 0), smoothing_px)


def shift_scores(packed, height: int, width: int, first_index: int, exposure_first: int, exposure_frames: int,
                 shifts: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                 smoothing_px: float = 0.0) -> np.ndarray:
    """Correlation between ``target`` (gray blur on the spike grid) and the spike counts over
    ``[exposure_first + s, exposure_first + s + exposure_frames)`` for each shift ``s``.

    ``smoothing_px`` > 0 blurs both (Gaussian sigma, spike px) first, which tolerates a rough geometry."""
    counts = shift_counts(packed, height, width, first_index, exposure_first, exposure_frames, shifts, smoothing_px)
    if mask is None:
        mask = np.ones((height, width), bool)
    return _pearson_rows(counts, smooth_target(target, smoothing_px), mask)


def split_halves(mask: np.ndarray, block_px: int = SPLIT_BLOCK_PX) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` split into two interleaved halves: a checkerboard of ``block_px`` blocks (blocks, not
    single pixels, so that smoothing does not share noise between the halves)."""
    rows, columns = np.indices(mask.shape)
    parity = ((rows // block_px) + (columns // block_px)) % 2 == 0
    return mask & parity, mask & ~parity


def exposure_peak_uncertainty(shifts: np.ndarray, counts: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """How well one exposure pins its shift, in frames: the peak found on each of two disjoint halves of
    the pixels (:func:`split_halves`) and half their difference (the two see the same motion and
    independent noise). A static scene gives halves that peak anywhere (large); inf when a half has no
    interior peak."""
    peaks = []
    for half in split_halves(mask):
        if half.sum() < 16:
            return float("inf")
        try:
            peaks.append(peak_shift(shifts, _pearson_rows(counts, target, half))[0])
        except CalibrationError:
            return float("inf")
    return 0.5 * abs(peaks[0] - peaks[1])


def peak_shift(shifts: np.ndarray, scores: np.ndarray, half_width: int = 2) -> tuple[float, float]:
    """Sub-frame position of the best score, from a least-squares parabola through it and ``half_width``
    neighbours on each side, and the peak's contrast over the scores at the ends of the search.
    Raises CalibrationError for a peak on the edge of the search."""
    shifts = np.asarray(shifts, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    best = int(np.argmax(scores))
    if best < 1 or best > len(scores) - 2:
        raise CalibrationError(
            f"the best clock shift lies at the edge of the search ({shifts[best]:+.0f} frames); the offset is "
            "larger than the search range (raise --search-frames) or the scene does not constrain it"
        )
    lo, hi = max(best - half_width, 0), min(best + half_width + 1, len(scores))
    x = shifts[lo:hi] - shifts[best]
    a, b, _ = np.polyfit(x, scores[lo:hi], 2)
    step = shifts[1] - shifts[0] if len(shifts) > 1 else 1.0
    offset = 0.0 if a >= 0 else float(np.clip(-b / (2 * a), -step, step))
    contrast = float(scores[best] - 0.5 * (scores[0] + scores[-1]))
    return float(shifts[best] + offset), contrast


def _line_fit(times: np.ndarray, offsets: np.ndarray, with_drift: bool) -> tuple[float, float]:
    """(slope, intercept) by least squares; slope 0 for an offset-only fit."""
    if with_drift:
        slope, intercept = np.polyfit(times, offsets, 1)
        return float(slope), float(intercept)
    return 0.0, float(np.mean(offsets))


def bootstrap_offset_std(times: np.ndarray, offsets: np.ndarray, with_drift: bool,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Standard deviation of the fitted offset over resamplings of the exposures (with replacement,
    seeded: the same data gives the same figure). Resamples that cannot fit the model are skipped."""
    rng = np.random.default_rng(seed)
    n = times.size
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        if with_drift and np.unique(times[pick]).size < 2:
            continue
        values.append(_line_fit(times[pick], offsets[pick], with_drift)[1])
    return float(np.std(values)) if len(values) > 1 else float("inf")


def fit_drift(times_ns: np.ndarray, offsets_ns: np.ndarray, reference_ns: int, fit_drift: bool = True,
              frame_period_ns: float | None = None, exposures_tried: int | None = None,
              exposure_uncertainties_ns: np.ndarray | None = None) -> ClockCalibration:
    """Straight line ``offset(t) = offset_ns + drift * (t - reference)`` through per-exposure offsets, with
    one round of outlier rejection (residual above 3 robust sigmas and above half a frame) that must keep
    a clear majority (at least two thirds, and 3) of the exposures: when the exposures split into camps,
    none is dropped and the residual and the uncertainty say so.

    The drift is estimated (``drift_estimated``) from at least MIN_DRIFT_EXPOSURES exposures when it is
    significant (MIN_DRIFT_SIGNIFICANCE standard errors) or known to within MAX_DRIFT_UNCERTAINTY_PPM;
    otherwise the fit is offset-only and ``drift_note`` says why (a short recording cannot tell a drift
    from none). ``offset_uncertainty_ns``: the larger of the least-squares standard error and a bootstrap
    over the kept exposures, and at least the kept exposures' own peak uncertainties (RMS) / sqrt(n)."""
    times = np.asarray(times_ns, dtype=np.float64) - float(reference_ns)
    offsets = np.asarray(offsets_ns, dtype=np.float64)
    if times.size == 0:
        raise CalibrationError("no exposure gave a clock offset estimate")
    keep = np.ones(times.size, bool)
    floor = 0.5 * frame_period_ns if frame_period_ns else 0.0
    majority = max(3, int(np.ceil(2 * times.size / 3)))

    def can_drift(mask):
        return fit_drift and mask.sum() >= MIN_DRIFT_EXPOSURES and np.ptp(times[mask]) > 0

    for _ in range(2):
        slope, intercept = _line_fit(times[keep], offsets[keep], can_drift(keep))
        residual = offsets - (intercept + slope * times)
        sigma = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        new_keep = np.abs(residual) <= max(3.0 * sigma, floor)
        if new_keep.sum() < majority or (new_keep == keep).all():
            break
        keep = new_keep
    kept_times, kept_offsets, n = times[keep], offsets[keep], int(keep.sum())
    with_drift, drift_se, note = can_drift(keep), None, None
    if with_drift:
        slope, intercept = _line_fit(kept_times, kept_offsets, True)
        spread = kept_times - kept_times.mean()
        dof_sigma = np.sqrt(np.sum((kept_offsets - intercept - slope * kept_times) ** 2) / (n - 2))
        drift_se = float(dof_sigma / np.sqrt(np.sum(spread**2)))
        if abs(slope) < MIN_DRIFT_SIGNIFICANCE * drift_se and drift_se * 1e6 > MAX_DRIFT_UNCERTAINTY_PPM:
            with_drift = False
            span_s = float(np.ptp(kept_times)) * 1e-9
            note = (f"not estimated: over the {span_s:.2f} s these {n} exposures span, a drift within "
                    f"+-{MIN_DRIFT_SIGNIFICANCE * drift_se * 1e6:.0f} ppm cannot be told from none (fitted "
                    f"{slope * 1e6:.0f} +- {drift_se * 1e6:.0f} ppm); calibrate time on a longer recording to "
                    "estimate it")
    elif not fit_drift:
        note = "not estimated: offset only was asked for (--no-drift)"
    else:
        note = (f"not estimated: {n} exposure(s) gave an offset, at least {MIN_DRIFT_EXPOSURES} spread over "
                "the recording are needed for a drift")
    slope, intercept = _line_fit(kept_times, kept_offsets, with_drift)
    residual = offsets - (intercept + slope * times)
    dof = n - (2 if with_drift else 1)
    if dof >= 1:
        sigma = np.sqrt(np.sum(residual[keep] ** 2) / dof)
        if with_drift:
            leverage = 1.0 / n + kept_times.mean() ** 2 / np.sum((kept_times - kept_times.mean()) ** 2)
        else:
            leverage = 1.0 / n
        standard_error = float(sigma * np.sqrt(leverage))
        uncertainty = max(standard_error, bootstrap_offset_std(kept_times, kept_offsets, with_drift))
        if exposure_uncertainties_ns is not None:
            own = np.asarray(exposure_uncertainties_ns, dtype=np.float64)[keep]
            uncertainty = max(uncertainty, float(np.sqrt(np.mean(own**2) / n)))
    else:
        uncertainty = float("inf")
    rms = float(np.sqrt(np.mean(residual[keep] ** 2)))
    if not np.isfinite(uncertainty):
        uncertainty = None
    return ClockCalibration(float(intercept), float(slope * 1e6) if with_drift else 0.0, rms, n,
                            int(reference_ns), frame_period_ns, offset_uncertainty_ns=uncertainty,
                            drift_estimated=with_drift,
                            drift_uncertainty_ppm=None if drift_se is None or not with_drift else drift_se * 1e6,
                            drift_note=note,
                            exposures_tried=times.size if exposures_tried is None else exposures_tried)
