"""Photometric sensor maps from a dark (lens-cap) recording: dark-spike rate per pixel and hot pixels.

A dark recording fires only spontaneously: dark current (a low rate, slightly different per pixel) and hot
pixels (a rate far above the rest). ``dark_maps`` measures the per-pixel rate, flags pixels whose rate lies
far above the robust median (MAD, with the binomial spread of the measurement as a floor), and refuses a
recording that is not dark: a median rate too high, too many hot pixels, or spatially correlated rates
(scene light: neighbouring pixels see the same texture, dark current is independent per pixel).

The ``correct_*`` functions apply the maps: hot pixels are replaced by the mean of their non-hot
neighbours, dark spikes are removed (``(rate - dark) / (1 - dark)``: a pixel fires at most once per frame),
clipped at 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spikereveal.calibration.errors import CalibrationError
from spikereveal.errors import ConfigError

DEFAULT_HOT_SIGMAS = 6.0
DEFAULT_MAX_DARK_RATE = 0.05  # spikes per pixel-frame; the paper's dark current is ~0.007
DEFAULT_MAX_HOT_FRACTION = 0.02
DEFAULT_MAX_NEIGHBOUR_CORRELATION = 0.2


@dataclass(frozen=True, eq=False)
class PhotometricCalibration:
    """Per-pixel dark-spike rate (spikes per frame) and hot-pixel mask, both on the spike grid."""

    dark_rate: np.ndarray  # (h, w) float32
    hot_mask: np.ndarray  # (h, w) bool
    frames: int  # dark frames measured
    median_rate: float
    hot_threshold_rate: float
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        rate = np.asarray(self.dark_rate, dtype=np.float32)
        hot = np.asarray(self.hot_mask, dtype=bool)
        if rate.ndim != 2 or hot.shape != rate.shape:
            raise ConfigError(f"dark_rate and hot_mask must be (h, w) of one shape, got {rate.shape} / {hot.shape}")
        if not np.all(np.isfinite(rate)) or rate.min(initial=0.0) < 0 or rate.max(initial=0.0) >= 1:
            raise ConfigError("dark_rate must hold spike rates in [0, 1) per frame")
        object.__setattr__(self, "dark_rate", rate)
        object.__setattr__(self, "hot_mask", hot)
        object.__setattr__(self, "frames", int(self.frames))
        object.__setattr__(self, "median_rate", float(self.median_rate))
        object.__setattr__(self, "hot_threshold_rate", float(self.hot_threshold_rate))
        object.__setattr__(self, "_fill", _neighbour_fill_plan(hot))

    @property
    def shape(self) -> tuple[int, int]:
        return self.dark_rate.shape

    @property
    def hot_pixels(self) -> np.ndarray:
        """(N, 2) int64 (row, column) of the hot pixels."""
        return np.argwhere(self.hot_mask).astype(np.int64)

    def fill_hot_pixels(self, values: np.ndarray) -> np.ndarray:
        """A copy of ``values`` (..., h, w) with every hot pixel replaced by the mean of its non-hot
        neighbours (3x3, or 5x5 where a cluster leaves none)."""
        values = np.asarray(values)
        if values.shape[-2:] != self.shape:
            raise ConfigError(f"values are {values.shape[-2:]} but the hot-pixel map is {self.shape}")
        out = np.array(values, dtype=np.result_type(values.dtype, np.float32), copy=True)
        targets = self._fill[0]
        if targets.size:
            flat = out.reshape(out.shape[:-2] + (-1,))
            flat[..., targets] = self._neighbour_means(flat)
        return out

    def fill_hot_pixel_levels(self, levels: np.ndarray) -> np.ndarray:
        """In place: uint8 spike levels (..., h, w) (the deployed graph's spike input, see
        ``kernels.extract.SPIKE_LEVEL``) with every hot pixel set to its non-hot neighbours' mean level,
        rounded (what ``correct_spike_frames`` gives, to 1/255 of a spike). Returns ``levels``."""
        if (not isinstance(levels, np.ndarray) or levels.dtype != np.uint8 or not levels.flags.writeable
                or not levels.flags.c_contiguous):
            raise ConfigError(f"spike levels must be a writeable C-contiguous uint8 array, got {getattr(levels, 'dtype', levels)!r}")
        if levels.shape[-2:] != self.shape:
            raise ConfigError(f"spike levels are {levels.shape[-2:]} but the hot-pixel map is {self.shape}")
        targets = self._fill[0]
        if targets.size:
            flat = levels.reshape(levels.shape[:-2] + (-1,))  # a view: levels is written
            flat[..., targets] = np.rint(self._neighbour_means(flat)).astype(np.uint8)
        return levels

    def _neighbour_means(self, flat: np.ndarray) -> np.ndarray:
        """(..., n_hot) float64: the weighted mean of each hot pixel's fill sources in ``flat`` (..., h*w)."""
        targets, sources, weights = self._fill
        filled = np.zeros(flat.shape[:-1] + (targets.size,), dtype=np.float64)
        np.add.at(filled, (..., sources[:, 0]), flat[..., sources[:, 1]] * weights)
        return filled

    def correct_counts(self, counts: np.ndarray, frames: int) -> np.ndarray:
        """Spike counts (..., h, w) over ``frames`` frames: hot pixels filled, dark spikes removed (see
        ``correct_rate``), clipped at 0. float32."""
        if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 0:
            raise ConfigError(f"frames must be a non-negative integer, got {frames!r}")
        rate = np.asarray(counts, dtype=np.float32) / np.float32(max(frames, 1))
        return (self.correct_rate(rate) * np.float32(frames)).astype(np.float32)

    def correct_rate(self, rate: np.ndarray) -> np.ndarray:
        """A spike rate / TFP image (..., h, w): hot pixels filled, dark spikes removed, clipped at 0."""
        # a pixel fires at most once per frame, so a dark spike only shows in frames light left empty:
        # measured = light + dark * (1 - light)  =>  light = (measured - dark) / (1 - dark)
        corrected = (np.asarray(rate, dtype=np.float32) - self.dark_rate) / (np.float32(1.0) - self.dark_rate)
        return np.maximum(self.fill_hot_pixels(corrected), 0.0).astype(np.float32)

    def correct_spike_frames(self, frames: np.ndarray) -> np.ndarray:
        """Unpacked binary frames (..., h, w) (e.g. the LDN input): each hot pixel's spike train is replaced
        by the mean of its non-hot neighbours' trains (no dark subtraction: single spikes are binary)."""
        return self.fill_hot_pixels(frames).astype(np.float32)

    def to_json(self) -> dict:
        return {
            "frames": self.frames,
            "median_rate": self.median_rate,
            "hot_threshold_rate": self.hot_threshold_rate,
            "hot_pixel_count": int(self.hot_mask.sum()),
            "details": self.details,
        }


def _neighbour_fill_plan(hot: np.ndarray):
    """For each hot pixel: (target flat index, [(slot, source flat index)], weights) of its fill."""
    height, width = hot.shape
    rows, cols = np.nonzero(hot)
    targets, pairs, weights = [], [], []
    for slot, (row, col) in enumerate(zip(rows, cols)):
        for radius in (1, 2, 3):
            r0, r1 = max(row - radius, 0), min(row + radius + 1, height)
            c0, c1 = max(col - radius, 0), min(col + radius + 1, width)
            rr, cc = np.nonzero(~hot[r0:r1, c0:c1])
            if rr.size:
                break
        targets.append(row * width + col)
        if rr.size == 0:  # a hot cluster wider than 7x7: nothing sane to copy; becomes 0
            continue
        for r, c in zip(rr + r0, cc + c0):
            pairs.append((slot, r * width + c))
            weights.append(1.0 / rr.size)
    return (np.asarray(targets, dtype=np.int64), np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
            np.asarray(weights, dtype=np.float64))


def neighbour_correlation(rate: np.ndarray, exclude: np.ndarray) -> float:
    """Correlation between each pixel's rate and its right and lower neighbours' (pixels in ``exclude``
    left out). Scene light gives high values; independent per-pixel dark current about 0."""
    values = np.asarray(rate, dtype=np.float64)
    pairs = []
    for a, b, ea, eb in (
        (values[:, :-1], values[:, 1:], exclude[:, :-1], exclude[:, 1:]),
        (values[:-1, :], values[1:, :], exclude[:-1, :], exclude[1:, :]),
    ):
        keep = ~(ea | eb)
        pairs.append((a[keep], b[keep]))
    x = np.concatenate([p[0] for p in pairs])
    y = np.concatenate([p[1] for p in pairs])
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def dark_maps(
    counts: np.ndarray,
    frames: int,
    hot_sigmas: float = DEFAULT_HOT_SIGMAS,
    max_dark_rate: float = DEFAULT_MAX_DARK_RATE,
    max_hot_fraction: float = DEFAULT_MAX_HOT_FRACTION,
    max_neighbour_correlation: float = DEFAULT_MAX_NEIGHBOUR_CORRELATION,
    source: str = "the dark recording",
) -> PhotometricCalibration:
    """Dark rate and hot pixels from the spike counts (h, w) of a dark recording over ``frames`` frames."""
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ConfigError(f"counts must be (h, w), got {counts.shape}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ConfigError(f"frames must be a positive integer, got {frames!r}")
    if frames < 200:
        raise CalibrationError(
            f"{source} has only {frames} spike frames; at least 200 are needed to tell hot pixels from dark "
            "current (record a second or more with the lens cap on)"
        )
    rate = counts.astype(np.float64) / frames
    median = float(np.median(rate))
    if median > max_dark_rate:
        raise CalibrationError(
            f"{source} is not dark: the median pixel fires {median:.4f} spikes per frame (> {max_dark_rate}); "
            "record with the lens cap on and the room dark"
        )
    mad_sigma = 1.4826 * float(np.median(np.abs(rate - median)))
    binomial_sigma = float(np.sqrt(max(median, 1.0 / frames) * (1 - median) / frames))
    threshold = median + hot_sigmas * max(mad_sigma, binomial_sigma)
    hot = rate > threshold
    fraction = float(hot.mean())
    if fraction > max_hot_fraction:
        raise CalibrationError(
            f"{source} is not dark: {100 * fraction:.2f} % of the pixels fire far above the median "
            f"(> {100 * max_hot_fraction:.1f} % allowed); light reaches the sensor"
        )
    correlation = neighbour_correlation(rate, hot)
    if correlation > max_neighbour_correlation:
        raise CalibrationError(
            f"{source} is not dark: neighbouring pixels' rates correlate ({correlation:.2f} > "
            f"{max_neighbour_correlation}), i.e. the sensor sees a scene; cover the lens completely"
        )
    # Per-pixel rates, shrunk towards the median by how much of their spread is real rather than counting
    # noise (empirical Bayes): a short dark recording must not subtract its own noise from every frame.
    normal = rate[~hot]
    noise_variance = binomial_sigma**2
    real_variance = max(float(normal.var()) - noise_variance, 0.0)
    shrink = real_variance / (real_variance + noise_variance) if real_variance > 0 else 0.0
    dark = np.where(hot, median, median + shrink * (rate - median)).astype(np.float32)  # hot: filled instead
    details = {"neighbour_correlation": round(correlation, 5), "mad_sigma": mad_sigma, "shrink": shrink,
               "binomial_sigma": binomial_sigma, "hot_sigmas": hot_sigmas}
    return PhotometricCalibration(dark, hot, int(frames), median, threshold, details)
