"""Time model of a hybrid rig (SPEC §4). All timestamps are int64 nanoseconds.

Spike frame ``n`` of a stream sits at ``t0_ns + n * 1e9 / rate_hz``. An exposure covers the spike frames
whose times lie in ``[start_ns, start_ns + duration_ns]``: frames ``index(start) .. index(end)`` inclusive.
Its window adds ``margin_frames`` on each side (at least half the LDN spike window). Output timestamps are
``K`` evenly spaced times from exposure start to end inclusive; the spike index of a time is the nearest
frame (ties round up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikereveal.errors import ConfigError

NS_PER_S = 1_000_000_000
LDN_SPIKE_WINDOW = 21
DEFAULT_MARGIN_FRAMES = LDN_SPIKE_WINDOW // 2
DEFAULT_K = 7


def _check_rate(rate_hz: float) -> None:
    if not np.isfinite(rate_hz) or rate_hz <= 0:
        raise ConfigError(f"spike rate must be a positive number of Hz, got {rate_hz!r}")


def frame_period_ns(rate_hz: float) -> float:
    """Spike-clock period in (fractional) nanoseconds."""
    _check_rate(rate_hz)
    return NS_PER_S / float(rate_hz)


def index_to_time(index, t0_ns: int, rate_hz: float):
    """Timestamp (int64 ns) of spike frame(s) ``index``."""
    period = frame_period_ns(rate_hz)
    offset = np.floor(np.asarray(index, dtype=np.float64) * period + 0.5).astype(np.int64)
    result = np.int64(t0_ns) + offset
    return result if np.ndim(result) else np.int64(result)


def time_to_index(t_ns, t0_ns: int, rate_hz: float):
    """Nearest spike frame index (int64) of time(s) ``t_ns``; may be negative or past the data."""
    _check_rate(rate_hz)
    delta = np.asarray(t_ns, dtype=np.int64) - np.int64(t0_ns)
    index = np.floor(delta.astype(np.float64) * (float(rate_hz) / NS_PER_S) + 0.5).astype(np.int64)
    return index if np.ndim(index) else np.int64(index)


def output_timestamps(start_ns: int, duration_ns: int, k: int = DEFAULT_K) -> np.ndarray:
    """``k`` timestamps evenly spaced from exposure start to end inclusive (k == 1: the centre)."""
    if k < 1:
        raise ConfigError(f"the number of output frames per exposure must be >= 1, got {k}")
    if duration_ns < 0:
        raise ConfigError(f"exposure duration must be >= 0 ns, got {duration_ns}")
    if k == 1:
        return np.array([start_ns + duration_ns // 2], dtype=np.int64)
    steps = np.arange(k, dtype=np.int64)
    return np.int64(start_ns) + (steps * np.int64(duration_ns) + (k - 1) // 2) // (k - 1)


@dataclass(frozen=True, eq=False)
class ExposureWindow:
    """Spike-frame indices that one exposure needs. Ranges are half-open ``[first, stop)``."""

    exposure_first: int  # first spike frame inside the exposure
    exposure_stop: int  # one past the last spike frame inside the exposure
    window_first: int  # exposure_first - margin
    window_stop: int  # exposure_stop + margin
    centers: np.ndarray  # (K,) spike index nearest to each output timestamp
    timestamps_ns: np.ndarray  # (K,) output timestamps

    @property
    def exposure_frames(self) -> int:
        return self.exposure_stop - self.exposure_first

    def inside(self, frame_count: int) -> bool:
        """Whether a stream of ``frame_count`` frames starting at index 0 covers the whole window."""
        return self.window_first >= 0 and self.window_stop <= frame_count


def exposure_window(
    start_ns: int,
    duration_ns: int,
    t0_ns: int,
    rate_hz: float,
    k: int = DEFAULT_K,
    margin_frames: int = DEFAULT_MARGIN_FRAMES,
) -> ExposureWindow:
    """Spike frames of an exposure, its margins and the spike index of each of its K output times."""
    if margin_frames < DEFAULT_MARGIN_FRAMES:
        raise ConfigError(
            f"margin_frames must be at least half the LDN spike window ({DEFAULT_MARGIN_FRAMES}), "
            f"got {margin_frames}"
        )
    timestamps = output_timestamps(start_ns, duration_ns, k)
    first = int(time_to_index(start_ns, t0_ns, rate_hz))
    last = int(time_to_index(start_ns + duration_ns, t0_ns, rate_hz))
    centers = np.asarray(time_to_index(timestamps, t0_ns, rate_hz), dtype=np.int64)
    return ExposureWindow(
        exposure_first=first,
        exposure_stop=last + 1,
        window_first=first - margin_frames,
        window_stop=last + 1 + margin_frames,
        centers=centers,
        timestamps_ns=timestamps,
    )
