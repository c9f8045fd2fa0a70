"""Images from spikes (TFP, TFI) and the SDM formula (SPEC §2, §3).

TFP and TFI are (H, W) float32 at the spike resolution. ``sdm`` works on float32 BGR images (3, H, W) in
[0, 1] on the canonical grid, which is ``factor`` (4) times the spike grid in each dimension.
"""

from __future__ import annotations

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels._numba import njit
from spikereveal.kernels.accumulate import window_count, window_counts
from spikereveal.kernels.extract import centred_rows, check_window_size
from spikereveal.kernels.packing import as_packed

SDM_SHORT_WINDOW = 9  # the reference's short TFP (SPEC §3)
SPIKE_TO_IMAGE_SCALE = 4  # the canonical (network) grid is 4x the spike grid (SPEC §4): the one name for this ratio
#: How the student's frames of one exposure are tied to its blurry frame's colour (``engines.ldn.LDNConfig.
#: colour_anchor``): "none" (the network's output as is, the paper's) or "exposure-mean" (each channel shifted by
#: one offset so the mean of the exposure's K frames has the blurry frame's mean: the blur formation
#: ``B = (1/T) integral L dt`` (SPEC §3) pins each channel's mean over the exposure, so a colour cast cannot stay)
COLOUR_ANCHORS = ("none", "exposure-mean")


def tfp(packed, height: int, width: int, center: int, window: int, first_index: int = 0) -> np.ndarray:
    """Texture from playback: the spike rate over the ``window`` frames centred on ``center`` (odd window).

    ``TFP_W(x, c) = (1/W) * sum_{n=c-W//2}^{c+W//2} S(x, n)``, float32 (H, W) in [0, 1].
    """
    return tfp_stack(packed, height, width, [center], window, first_index)[0]


def tfp_stack(packed, height: int, width: int, centers, window: int, first_index: int = 0) -> np.ndarray:
    """TFPs centred on each of ``centers`` in one pass: (K, H, W) float32."""
    window = check_window_size(window)
    packed = as_packed(packed, height, width)
    first_rows = centred_rows(centers, window, packed.shape[0], first_index)
    counts = window_counts(packed, height, width, first_rows, first_rows + window)
    return counts.astype(np.float32) / np.float32(window)


def tfp_range(packed, height: int, width: int, start: int, stop: int, first_index: int = 0) -> np.ndarray:
    """The spike rate over frames ``[start, stop)`` (the long TFP over an exposure): (H, W) float32."""
    if stop <= start:
        raise ConfigError(f"a TFP needs at least one frame, got the empty range [{start}, {stop})")
    counts = window_count(packed, height, width, start, stop, first_index=first_index)
    return counts.astype(np.float32) / np.float32(stop - start)


@njit
def _tfi_kernel(packed, center_row, previous, following, pending):
    """For every pixel, the row of its last spike at or before ``center_row`` (``previous``) and of its
    first spike after it (``following``); -1 where there is none. ``pending`` (n_bytes,) uint8 is scratch:
    the pixels of each byte still searched for. Frames are walked row by row (cache-friendly) and the walk
    stops as soon as every pixel is found."""
    n_rows, n_bytes = packed.shape
    for direction in range(2):
        found = previous if direction == 0 else following
        row = center_row if direction == 0 else center_row + 1
        step = -1 if direction == 0 else 1
        found[:] = -1
        pending[:] = 0xFF
        left = n_bytes  # bytes with a pixel still pending
        while 0 <= row < n_rows and left > 0:
            for i in range(n_bytes):
                wanted = pending[i]
                if wanted == 0:
                    continue
                hits = packed[row, i] & wanted
                if hits == 0:
                    continue
                for bit in range(8):
                    if (hits >> bit) & 1:
                        found[8 * i + bit] = row
                wanted &= ~hits
                pending[i] = wanted
                if wanted == 0:
                    left -= 1
            row += step


def tfi(packed, height: int, width: int, center: int, first_index: int = 0) -> np.ndarray:
    """Texture from inter-spike interval at frame ``center``: (H, W) float32.

    Per pixel ``1 / (n_next - n_prev)`` where ``n_prev`` is its last spike at or before ``center`` and
    ``n_next`` its first spike after ``center``; the search spans the whole array passed in. A pixel
    without a spike on both sides within the data gets 0 (no interval can be measured).
    """
    packed = as_packed(packed, height, width)
    center_row = int(center) - first_index
    if not 0 <= center_row < packed.shape[0]:
        raise ConfigError(
            f"TFI centre frame {center} is outside the spike data, which holds frames "
            f"[{first_index}, {first_index + packed.shape[0]})"
        )
    n_pixels = height * width
    previous = np.empty(n_pixels, dtype=np.int64)
    following = np.empty(n_pixels, dtype=np.int64)
    _tfi_kernel(packed, center_row, previous, following, np.empty(packed.shape[1], dtype=np.uint8))
    image = np.zeros(n_pixels, dtype=np.float32)
    both = (previous >= 0) & (following >= 0)
    image[both] = 1.0 / (following[both] - previous[both]).astype(np.float32)
    return image.reshape(height, width)


def upsample_nearest(image: np.ndarray, factor: int = SPIKE_TO_IMAGE_SCALE) -> np.ndarray:
    """Nearest-neighbour upsampling of the last two axes by an integer ``factor``."""
    image = np.asarray(image)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ConfigError(f"upsampling factor must be an integer >= 1, got {factor!r}")
    if image.ndim < 2:
        raise ConfigError(f"upsample_nearest needs an array of at least 2 dimensions (.., H, W), got {image.shape}")
    return np.repeat(np.repeat(image, factor, axis=-2), factor, axis=-1)


def sdm(blur: np.ndarray, tfp_short: np.ndarray, tfp_long: np.ndarray) -> np.ndarray:
    """The SDM physical model: ``clip(B * TFP_short / TFP_long, 0, 1)`` (SPEC §3).

    ``blur``: (3, H, W) float image on the canonical grid; ``tfp_short``: (h, w) or (K, h, w) and
    ``tfp_long``: (h, w) at the spike grid, with ``H, W = 4h, 4w``. The gray ratio map short/long follows
    the reference division rule (no epsilon; 0 where ``tfp_long`` is exactly 0), is upsampled x4 nearest
    and multiplies all three channels; only the product is clipped to [0, 1] (a ratio above 1 is a moment
    brighter than the exposure's mean). Returns float32 (3, H, W) or (K, 3, H, W).
    """
    blur = np.asarray(blur, dtype=np.float32)
    tfp_short = np.asarray(tfp_short, dtype=np.float32)
    tfp_long = np.asarray(tfp_long, dtype=np.float32)
    if blur.ndim != 3 or blur.shape[0] != 3:
        raise ConfigError(f"blur must be a (3, H, W) image, got shape {blur.shape}")
    if tfp_long.ndim != 2:
        raise ConfigError(f"tfp_long must be (h, w), got shape {tfp_long.shape}")
    if tfp_short.ndim not in (2, 3) or tfp_short.shape[-2:] != tfp_long.shape:
        raise ConfigError(
            f"tfp_short must be (h, w) or (K, h, w) with (h, w) = tfp_long's {tfp_long.shape}, got {tfp_short.shape}"
        )
    scale = SPIKE_TO_IMAGE_SCALE
    expected = (scale * tfp_long.shape[0], scale * tfp_long.shape[1])
    if blur.shape[1:] != expected:
        raise ConfigError(
            f"blur is {blur.shape[1]}x{blur.shape[2]} but the spikes are {tfp_long.shape[0]}x{tfp_long.shape[1]}; "
            f"the image must be exactly {scale}x the spike grid ({expected[0]}x{expected[1]}): warp it first"
        )
    ratio = np.zeros(np.broadcast_shapes(tfp_short.shape, tfp_long.shape), dtype=np.float32)
    np.divide(tfp_short, tfp_long, out=ratio, where=np.broadcast_to(tfp_long != 0, ratio.shape))
    ratio = upsample_nearest(ratio, scale)[..., None, :, :]  # one gray ratio for all 3 channels
    return np.clip(blur * ratio, 0.0, 1.0, dtype=np.float32)


def reblur(sequence: np.ndarray) -> np.ndarray:
    """The blur a sharp sequence (K, 3, H, W) implies: its mean over time, float32 (3, H, W)."""
    sequence = np.asarray(sequence)
    if sequence.ndim != 4 or sequence.shape[0] < 1:
        raise ConfigError(f"reblur needs a sequence of shape (K, C, H, W) with K >= 1, got {sequence.shape}")
    return sequence.mean(axis=0, dtype=np.float64).astype(np.float32)
