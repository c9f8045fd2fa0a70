"""Latency and throughput statistics in the conventions users compare against (trtexec, Holoscan).

* Percentiles are **nearest-rank** (as trtexec reports them): the p-th percentile of n sorted samples is
  the sample of rank ``ceil(p/100 * n)`` (1-based, clamped to 1..n), i.e. always an observed value and the
  same as ``np.percentile(..., method="inverted_cdf")``. The rank is computed in integer arithmetic on
  p in tenths of a percent, so p99.9 of 1000 samples is exactly the 999th.
* Warm-up: the first ``warmup`` samples (in arrival order) are excluded; the output states how many.
* ``std_ms`` is the population standard deviation (ddof=0, as trtexec); ``cv`` = std / mean, with
  ``cv_warning`` set above 2.5 % (trtexec warns on the coefficient of variation of GPU compute time).
* Empty input (or everything excluded as warm-up): ``count`` is 0 and every statistic is ``None``
  (JSON ``null``), so that a report on a run where a stage never happened still serialises. One sample:
  every percentile, min, max and mean is that sample, ``std_ms`` and ``cv`` are 0. Non-finite samples,
  negative warm-up and non-1-D input raise ConfigError.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Sequence

import numpy as np

from spikereveal.errors import ConfigError

PERCENTILE_METHOD = "nearest-rank"
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
CV_WARNING_THRESHOLD = 0.025  # trtexec: "coefficient of variance ... > 2.5 %"
UNIT_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
STAT_FIELDS = ("count", "min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p99_9_ms",
               "max_ms", "cv", "cv_warning")


def percentile_key(q: float) -> str:
    """``50`` -> ``"p50_ms"``, ``99.9`` -> ``"p99_9_ms"`` (a dot is awkward in JSON paths)."""
    return "p" + f"{q:g}".replace(".", "_") + "_ms"


def nearest_rank(n: int, q: float) -> int:
    """1-based rank of the q-th percentile among n samples: ``ceil(q/100 * n)`` clamped to 1..n."""
    if n < 1:
        raise ConfigError("a percentile needs at least one sample")
    if not 0.0 <= q <= 100.0:
        raise ConfigError(f"a percentile must be within 0..100, got {q}")
    tenths = round(q * 10)  # exact integer arithmetic: no 0.999 * 1000 = 999.0000000000001 rounding up
    if abs(tenths - q * 10) > 1e-6:
        raise ConfigError(f"percentiles are supported to one decimal (e.g. 99.9), got {q}")
    rank = -(-(tenths * n) // 1000)
    return min(max(rank, 1), n)


def nearest_rank_percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th nearest-rank percentile of ``samples`` (any order)."""
    ordered = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    return float(ordered[nearest_rank(ordered.size, q) - 1])


def _as_ms(samples, unit: str) -> np.ndarray:
    if unit not in UNIT_TO_MS:
        raise ConfigError(f"unit must be one of {sorted(UNIT_TO_MS)}, got {unit!r}")
    values = np.asarray(samples)
    if values.ndim != 1:
        raise ConfigError(f"latency samples must be a 1-D sequence, got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.number):
        raise ConfigError(f"latency samples must be numbers, got dtype {values.dtype}")
    values = values.astype(np.float64) * UNIT_TO_MS[unit]
    if not np.all(np.isfinite(values)):
        raise ConfigError("latency samples contain NaN or infinity; drop incomplete records before summarising")
    return values


def latency_stats(samples, *, warmup: int = 0, unit: str = "ms") -> dict:
    """Summary of latency samples (arrival order) in milliseconds; ``unit`` is that of the samples.

    Returns ``count`` (after warm-up), ``warmup_excluded``, ``min_ms``, ``mean_ms``, ``std_ms``,
    ``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms``, ``p99_9_ms``, ``max_ms``, ``cv``, ``cv_warning`` and
    ``percentile_method`` ("nearest-rank"). See the module docstring for the empty/one-sample policy.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ConfigError(f"warmup must be a whole number >= 0, got {warmup!r}")
    values = _as_ms(samples, unit)
    excluded = min(int(warmup), values.size)
    values = values[excluded:]
    result: dict = {"count": int(values.size), "warmup_excluded": excluded, "percentile_method": PERCENTILE_METHOD}
    if values.size == 0:
        result.update({name: None for name in STAT_FIELDS if name != "count"})
        return result
    ordered = np.sort(values)
    mean = float(ordered.mean())
    std = float(ordered.std())  # ddof=0
    cv = std / mean if mean > 0 else 0.0
    result.update(min_ms=float(ordered[0]), mean_ms=mean, std_ms=std)
    for q in PERCENTILES:
        result[percentile_key(q)] = float(ordered[nearest_rank(ordered.size, q) - 1])
    result.update(max_ms=float(ordered[-1]), cv=cv, cv_warning=bool(cv > CV_WARNING_THRESHOLD))
    return result


def real_time_factor(output_frames_per_s: float, k: int, exposure_rate_hz: float) -> float | None:
    """Output frames per second over what real time needs (K sharp frames per exposure at the exposure rate).

    1.0 keeps up exactly; below 1 the pipeline falls behind (and must drop). None when the rate is unknown.
    """
    if k is None or exposure_rate_hz is None or not exposure_rate_hz > 0 or k < 1:
        return None
    return float(output_frames_per_s / (k * exposure_rate_hz))


def throughput(completion_ns, frames_per_completion=None, *, warmup: int = 0, k: int | None = None,
               exposure_rate_hz: float | None = None) -> dict:
    """Completion rate of a run: ``exposures_per_s`` = (n - 1) / (last - first completion time).

    ``completion_ns``: monotonic completion times (any order; sorted here), after warm-up exclusion of
    the first ``warmup`` (in the given order). ``frames_per_completion``: output frames each completion
    produced (default 1); the frames of the first completion are not counted (the span starts there).
    Returns exposures/s, output frames/s, the span, and the real-time factor when ``k`` and
    ``exposure_rate_hz`` are given. Fewer than two completions (or a zero span): the rates are None.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ConfigError(f"warmup must be a whole number >= 0, got {warmup!r}")
    times = np.asarray(completion_ns, dtype=np.int64).ravel()
    frames = (np.ones(times.size, dtype=np.int64) if frames_per_completion is None
              else np.asarray(frames_per_completion, dtype=np.int64).ravel())
    if frames.shape != times.shape:
        raise ConfigError(f"frames_per_completion has {frames.size} entries for {times.size} completions")
    excluded = min(int(warmup), times.size)
    times, frames = times[excluded:], frames[excluded:]
    order = np.argsort(times, kind="stable")
    times, frames = times[order], frames[order]
    result = {"completions": int(times.size), "warmup_excluded": excluded, "span_s": None,
              "exposures_per_s": None, "output_frames_per_s": None, "k": k, "exposure_rate_hz": exposure_rate_hz,
              "real_time_factor": None}
    if times.size < 2 or times[-1] <= times[0]:
        return result
    span_s = float(times[-1] - times[0]) / 1e9
    result.update(span_s=span_s, exposures_per_s=(times.size - 1) / span_s,
                  output_frames_per_s=float(frames[1:].sum()) / span_s)
    if k is not None and exposure_rate_hz is not None:
        result["real_time_factor"] = real_time_factor(result["output_frames_per_s"], k, exposure_rate_hz)
    return result


def rate_hz(event_times_ns) -> float | None:
    """Mean event rate from timestamps: (n - 1) / (last - first); None for fewer than 2 or a zero span."""
    times = np.sort(np.asarray(event_times_ns, dtype=np.int64).ravel())
    if times.size < 2 or times[-1] <= times[0]:
        return None
    return (times.size - 1) / (float(times[-1] - times[0]) / 1e9)


class LatencyLog:
    """Per-exposure times (ms) of the newest ``capacity`` exposures, summarised with stream.stats conventions."""

    FIELDS = ("end_to_end_ms", "from_receive_ms", "from_ready_ms", "queue_wait_ms", "ingest_ms", "prepare_ms",
              "inference_ms", "postprocess_ms", "publish_ms", "save_ms", "non_inference_work_ms")

    def __init__(self, capacity: int = 100_000):
        self.rows: deque[dict] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, row: dict) -> None:
        with self._lock:
            self.rows.append(row)

    def snapshot(self) -> list[dict]:
        """A copy of the rows (newest ``capacity`` exposures), in the order they were added."""
        with self._lock:
            return [dict(row) for row in self.rows]

    def summary(self) -> dict:
        with self._lock:
            rows = list(self.rows)
        out = {}
        for name in self.FIELDS:
            values = [r[name] for r in rows if r.get(name) is not None]
            out[name] = latency_stats(np.asarray(values, dtype=np.float64))
        out["definitions"] = {
            "end_to_end_ms": "rig send of the last message the window needed -> K frames published (same-host clocks)",
            "from_receive_ms": "exposure message received -> K frames published",
            "from_ready_ms": "spike window complete -> K frames published",
            "non_inference_work_ms": "serve's work that is not the network (SPEC §8's non-inference target): "
                                     "ingest (decode + sync of the completing message) + prepare (window cut, input "
                                     "conversion) + postprocess (clip, uint8) + publish; excludes the queue wait, the "
                                     "wait for spikes and saving",
        }
        return out
