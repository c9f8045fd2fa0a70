"""The sensor's firing gain, a ground-truth-free check that a recording is in a model's domain.

Firing gain = the mean spike rate (spikes per pixel per spike frame) over an exposure's frames divided by the
mean gray intensity of its blurry frame (gray = 0.3 R + 0.59 G + 0.11 B, in [0, 1]): how many spikes per
frame the sensor fires at full intensity. The simulator's ``gopro`` preset (gain 1.985 against a threshold
of 2.0) gives about 1.0, a threshold twice as high about 0.5, four times about 0.25. A model learns the
relation between spike counts and brightness of the rigs it was trained on, so a recording far outside the
gains it saw is deblurred worse: :func:`domain_check` says when (``eval``, ``deblur`` and ``serve`` use it
with the range a model declares, ``firing_gain_range`` in its checkpoint's training metadata or its ONNX
metadata).

A frame darker than :data:`MIN_GRAY_MEAN` on average gives no gain (nan): the division would amplify
noise and dark current without bound; :func:`domain_check` reports nan as out of domain with that reason.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Sequence

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels._numba import njit
from spikereveal.kernels.packing import as_packed

logger = logging.getLogger(__name__)

#: gray = 0.11 B + 0.59 G + 0.3 R (the simulator's spike-sensor response; BGR channel order)
GRAY_WEIGHTS_BGR = (0.11, 0.59, 0.3)
#: below this mean gray (one 8-bit level) the firing gain is undefined (nan)
MIN_GRAY_MEAN = 1.0 / 255.0
#: How the student (``engines.ldn.LDNConfig.spike_norm``) reads its spike input: "none" (the paper's raw 0/1
#: frames) or "firing-gain" (the frames divided by the exposure's firing gain, so a sensor with another
#: threshold or gain feeds the network the same rates)
SPIKE_NORMS = ("none", "firing-gain")
#: the student's "firing-gain" spike normalisation (``engines.ldn``) divides its spike frames by the gain
#: clamped to this range (a lens-capped or saturated frame must not blow its input up or down without bound)
FIRING_GAIN_MIN = 1.0 / 16.0
FIRING_GAIN_MAX = 4.0
#: a gain within [lo / tolerance, hi * tolerance] of a model's trained range is in its domain
DEFAULT_GAIN_TOLERANCE = 1.25


@njit
def _popcount_kernel(words, first, stop, step):
    """Set bits in rows ``first, first + step, ... < stop`` of ``words`` (N, n_words), any unsigned type."""
    m1 = np.uint64(0x5555555555555555)
    m2 = np.uint64(0x3333333333333333)
    m4 = np.uint64(0x0F0F0F0F0F0F0F0F)
    h01 = np.uint64(0x0101010101010101)
    one, two, four, top = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)
    total = 0
    for f in range(first, stop, step):
        row = np.uint64(0)
        for j in range(words.shape[1]):
            x = np.uint64(words[f, j])
            x = x - ((x >> one) & m1)
            x = (x & m2) + ((x >> two) & m2)
            x = (x + (x >> four)) & m4
            row += (x * h01) >> top  # at most 64 per word: no overflow for any frame size
        total += row
    return total


@njit
def _channel_sums_kernel(image, step):
    """Sums of the 3 channels of ``image`` (H, W, 3) over every ``step``-th row and column, and the pixels summed."""
    height, width = image.shape[0], image.shape[1]
    s0 = s1 = s2 = 0.0
    count = 0
    for y in range(0, height, step):
        r0 = r1 = r2 = np.int64(0)  # int64 also without the JIT (a Python 0 + uint8 stays uint8 and wraps)
        for x in range(0, width, step):  # integer row sums for uint8: exact and vectorizable
            r0 += image[y, x, 0]
            r1 += image[y, x, 1]
            r2 += image[y, x, 2]
        s0 += r0
        s1 += r1
        s2 += r2
        count += (width + step - 1) // step
    return np.array([s0, s1, s2]), count


def _check_step(step, name: str = "step") -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ConfigError(f"{name} must be a positive integer, got {step!r}")
    return int(step)


def spike_count(packed, height: int, width: int, first: int = 0, stop: int | None = None, step: int = 1) -> int:
    """Spikes in frames ``first, first + step, ... < stop`` (rows of ``packed``, canonical packed frames)."""
    from spikereveal.kernels.accumulate import as_words

    packed = as_packed(packed, height, width)
    stop = packed.shape[0] if stop is None else int(stop)
    first = int(first)
    if not 0 <= first <= stop <= packed.shape[0]:
        raise ConfigError(f"frames [{first}, {stop}) are not inside the {packed.shape[0]} packed frames")
    step = _check_step(step)
    if first == stop:
        return 0
    return int(_popcount_kernel(as_words(packed), first, stop, step))


def mean_spike_rate(packed, height: int, width: int, first: int = 0, stop: int | None = None,
                    step: int = 1) -> float:
    """Mean spikes per pixel per frame over frames ``[first, stop)`` of ``packed`` (every ``step``-th one):
    a popcount of the packed bits, without unpacking. nan for an empty range."""
    stop = as_packed(packed, height, width).shape[0] if stop is None else int(stop)
    frames = len(range(int(first), stop, _check_step(step)))
    count = spike_count(packed, height, width, first, stop, step)
    return count / (frames * height * width) if frames else math.nan


def gray_mean(image, step: int = 1) -> float:
    """Mean gray (0.3 R + 0.59 G + 0.11 B) in [0, 1] of a BGR frame.

    ``image``: uint8 interleaved ``(..., H, W, 3)`` (the camera's and the deployed graph's layout, 0..255), or
    float planar ``(3, H, W)`` in [0, 1] (the layout of ``Recording.read_exposure`` and training). ``step``
    averages every ``step``-th row and column only (uint8 only; a cheap estimate for live use).
    """
    image = np.asarray(image)
    step = _check_step(step)
    weights = np.asarray(GRAY_WEIGHTS_BGR, np.float64)
    if image.dtype == np.uint8:
        if image.ndim < 3 or image.shape[-1] != 3 or int(np.prod(image.shape[:-3], dtype=np.int64)) != 1:
            raise ConfigError(f"a uint8 frame must be (H, W, 3) BGR (or (1, H, W, 3)), got {image.shape}")
        pixels = image.reshape(image.shape[-3:])
        if pixels.size == 0:
            raise ConfigError("the frame is empty")
        sums, count = _channel_sums_kernel(pixels, step)
        return float(weights @ sums) / (255.0 * count)
    if not np.issubdtype(image.dtype, np.floating) or image.ndim != 3 or image.shape[0] != 3 or image.size == 0:
        raise ConfigError(f"a float frame must be planar (3, H, W) BGR in [0, 1], got {image.dtype} {image.shape}")
    if step != 1:
        image = image[:, ::step, ::step]
    return float(weights @ image.reshape(3, -1).mean(axis=1, dtype=np.float64))


def firing_gain(mean_spike_rate: float, image, step: int = 1) -> float:
    """Spikes per pixel per frame at full intensity: ``mean_spike_rate / gray_mean(image)``.

    ``image``: the exposure's blurry frame, uint8 ``(H, W, 3)`` or float ``(3, H, W)`` BGR (see
    :func:`gray_mean`). Returns nan when the frame is darker than :data:`MIN_GRAY_MEAN` on average (or
    the rate is nan): the gain is not measurable there.
    """
    gray = gray_mean(image, step)
    rate = float(mean_spike_rate)
    if not gray >= MIN_GRAY_MEAN or not math.isfinite(rate):
        logger.debug("firing gain undefined: mean gray %.5f (minimum %.5f), spike rate %s", gray, MIN_GRAY_MEAN, rate)
        return math.nan
    return rate / gray


def exposure_firing_gain(packed, height: int, width: int, window, image, first_index: int | None = None,
                         step: int = 1) -> float:
    """The firing gain of one exposure: spikes over its frames ``[window.exposure_first, window.exposure_stop)``
    (an ``ExposureWindow``; ``packed`` holds frames from ``first_index`` on, default ``window.window_first``)
    against its blurry ``image``. ``step`` subsamples frames, rows and columns alike."""
    first_index = window.window_first if first_index is None else int(first_index)
    rate = mean_spike_rate(packed, height, width, window.exposure_first - first_index,
                           window.exposure_stop - first_index, step)
    return firing_gain(rate, image, step)


# -- a model's domain -----------------------------------------------------------------------------------------
def parse_gain_range(value) -> tuple[float, float] | None:
    """A declared ``firing_gain_range``: ``[lo, hi]`` (list/tuple) or its text (``"[0.6, 1.6]"``, ``"0.6,1.6"``,
    as ONNX metadata stores it); None when nothing is declared. ConfigError for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parsed = value
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text.strip("[]() ").split(",")
    try:
        lo, hi = (float(v) for v in parsed)
    except (TypeError, ValueError):
        raise ConfigError(f"firing_gain_range must be [lo, hi], got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ConfigError(f"firing_gain_range must be [lo, hi] with 0 < lo <= hi, got {value!r}")
    return lo, hi


def format_gain_range(trained_range: Sequence[float]) -> str:
    lo, hi = trained_range
    return f"{lo:g}-{hi:g}"


def domain_check(firing_gain: float, trained_range: Sequence[float] | None,
                 tolerance: float = DEFAULT_GAIN_TOLERANCE) -> str | None:
    """None when ``firing_gain`` is inside the model's ``trained_range`` ``(lo, hi)`` widened by ``tolerance``
    (``lo / tolerance <= gain <= hi * tolerance``) or when no range is declared; otherwise why not."""
    if trained_range is None:
        return None
    lo, hi = parse_gain_range(trained_range)
    if isinstance(tolerance, bool) or not (isinstance(tolerance, (int, float)) and tolerance >= 1.0):
        raise ConfigError(f"the firing-gain tolerance must be a number >= 1, got {tolerance!r}")
    gain = float(firing_gain)
    if math.isnan(gain):
        return (f"firing gain unknown (the blurry frames are too dark to measure it) while the model was trained "
                f"for {format_gain_range((lo, hi))}")
    if gain < lo / tolerance or gain > hi * tolerance:
        return f"firing gain {gain:.2f} outside the model's trained range {format_gain_range((lo, hi))}"
    return None


def adapt_hint(data: str = "REC") -> str:
    """The advice that follows an out-of-domain reason."""
    return f"quality may drop — adapt the model to this rig with `spikereveal adapt --data {data} --out DIR`"


def firing_gain_summary(gains: Sequence[float], trained_range, recording: str,
                        tolerance: float = DEFAULT_GAIN_TOLERANCE) -> dict:
    """One recording's gains: min/mean/max over its exposures' ``gains`` (nan: too dark to measure, left
    out), and the domain check of the mean against the model's ``trained_range`` (None: no check), with the
    ``warning`` to show (None inside the domain). The block ``deblur`` and ``eval`` report."""
    trained_range = parse_gain_range(trained_range)
    values = np.asarray(gains, np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if finite.size else math.nan
    reason = domain_check(mean, trained_range, tolerance) if values.size else None
    return {
        "exposures": int(values.size),
        "unmeasured_exposures": int(values.size - finite.size),
        "min": float(finite.min()) if finite.size else None,
        "mean": mean if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "trained_range": None if trained_range is None else list(trained_range),
        "tolerance": float(tolerance),
        "exposures_out_of_domain": int(sum(domain_check(g, trained_range, tolerance) is not None for g in values)),
        "out_of_domain": reason is not None,
        "warning": None if reason is None else f"recording {recording}: {reason}; {adapt_hint(recording)}",
    }
