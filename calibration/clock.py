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
MIN_DRIFT_SIGNIFICANCE = 3.0  # a fitted drift below this many standard errors is reported as 0
MIN_PEAK_CORRELATION = 0.5  # below this the spikes do not explain the frame at any shift


@dataclass(frozen=True)
class ClockCalibration:
    """RGB clock vs spike clock: ``rgb = t + offset_ns + drift_ppm * 1e-6 * (t - reference_ns)``."""

    offset_ns: float
    drift_ppm: float
    residual_ns: float
    exposures: int
    reference_ns: int
    frame_period_ns: float | None = None

    def __post_init__(self):
        for name in ("offset_ns", "drift_ppm", "residual_ns"):
            value = getattr(self, name)
            is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not is_number or not np.isfinite(value):
                raise ConfigError(f"clock {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if abs(self.drift_ppm) >= 1e5:
            raise ConfigError(f"clock drift_ppm must be within +-1e5, got {self.drift_ppm}")
        if self.residual_ns < 0:
            raise ConfigError(f"clock residual_ns must be >= 0, got {self.residual_ns}")
        object.__setattr__(self, "exposures", int(self.exposures))
        object.__setattr__(self, "reference_ns", int(self.reference_ns))

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
            "drift_ppm": self.drift_ppm,
            "residual_ns": self.residual_ns,
            "exposures": self.exposures,
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


def shift_scores(packed, height: int, width: int, first_index: int, exposure_first: int, exposure_frames: int,
                 shifts: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                 smoothing_px: float = 0.0) -> np.ndarray:
    """Correlation between ``target`` (gray blur on the spike grid) and the spike counts over
    ``[exposure_first + s, exposure_first + s + exposure_frames)`` for each shift ``s``.

    ``smoothing_px`` > 0 blurs both (Gaussian sigma, spike px) first, which tolerates a rough geometry."""
    shifts = np.asarray(shifts, dtype=np.int64)
    starts = exposure_first + shifts
    counts = window_counts(packed, height, width, starts, starts + exposure_frames, first_index=first_index)
    if mask is None:
        mask = np.ones((height, width), bool)
    if smoothing_px > 0:
        import cv2

        counts = np.stack([cv2.GaussianBlur(c.astype(np.float32), (0, 0), smoothing_px) for c in counts])
        target = cv2.GaussianBlur(np.asarray(target, dtype=np.float32), (0, 0), smoothing_px)
    return _pearson_rows(counts, target, mask)


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


def fit_drift(times_ns: np.ndarray, offsets_ns: np.ndarray, reference_ns: int, fit_drift: bool = True,
              frame_period_ns: float | None = None) -> ClockCalibration:
    """Straight line ``offset(t) = offset_ns + drift * (t - reference)`` through per-exposure offsets, with
    one round of outlier rejection (residual above 3 robust sigmas and above half a frame)."""
    times = np.asarray(times_ns, dtype=np.float64) - float(reference_ns)
    offsets = np.asarray(offsets_ns, dtype=np.float64)
    if times.size == 0:
        raise CalibrationError("no exposure gave a clock offset estimate")
    keep = np.ones(times.size, bool)
    floor = 0.5 * frame_period_ns if frame_period_ns else 0.0
    for _ in range(2):
        if fit_drift and keep.sum() >= MIN_DRIFT_EXPOSURES and np.ptp(times[keep]) > 0:
            slope, intercept = np.polyfit(times[keep], offsets[keep], 1)
        else:
            slope, intercept = 0.0, float(np.median(offsets[keep]))
        residual = offsets - (intercept + slope * times)
        sigma = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        new_keep = np.abs(residual) <= max(3.0 * sigma, floor)
        if new_keep.sum() < max(2, keep.sum() // 2) or (new_keep == keep).all():
            break
        keep = new_keep
    if slope != 0.0:
        # a drift the data cannot tell from zero (short recordings) only adds noise to every correction
        spread = times[keep] - times[keep].mean()
        dof_sigma = np.sqrt(np.sum(residual[keep] ** 2) / (keep.sum() - 2))
        standard_error = dof_sigma / np.sqrt(np.sum(spread**2))
        if abs(slope) < MIN_DRIFT_SIGNIFICANCE * standard_error:
            slope, intercept = 0.0, float(np.mean(offsets[keep]))
            residual = offsets - intercept
    rms = float(np.sqrt(np.mean(residual[keep] ** 2)))
    return ClockCalibration(float(intercept), float(slope * 1e6), rms, int(keep.sum()), int(reference_ns),
                            frame_period_ns)
