"""Conversions between the library's float planar images and OpenCV's uint8 interleaved BGR, in one pass.

* :func:`planar_to_bgr8`: float (N, 3, H, W) in any range -> uint8 (N, H, W, 3): clipped to [0, 1] (NaN
  -> 0), ``x * 255 + 0.5`` in the input's precision, truncated -- the arithmetic of the numpy expression
  ``(np.clip(x, 0, 1) * np.float32(255) + np.float32(0.5)).astype(np.uint8)``, bit for bit, without its
  four full-size temporaries (the network output of one exposure is ~134 MB at 1600x1000, K=7).
* :func:`bgr8_to_planar`: uint8 (H, W, 3) -> float32 (copies, 3, H, W), every copy ``x / 255`` (the LDN
  input batch repeats the blurry frame once per output time), written once instead of converted then copied.

Single-threaded on purpose: both are memory-bound (a prange version was slower on a shared 2-core CPU),
and numba's default (workqueue) threading layer refuses parallel regions entered from several threads at
once, which serve does when it runs processors in threads.
"""

from __future__ import annotations

import sys

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels._numba import njit
from spikereveal.kernels.accumulate import check_out

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_SCALE = np.float32(255.0)
_HALF = np.float32(0.5)


@njit
def _to_byte(value):
    """clip to [0, 1] (NaN -> 0), * 255 + 0.5 in the value's own precision, truncated to 0..255."""
    value = value if value > _ZERO else _ZERO
    value = value if value < _ONE else _ONE
    return np.uint32(np.int32(value * _SCALE + _HALF))


@njit
def _planar_to_bgr8_words_kernel(images, words):
    """``words``: the uint32 view of the (N, H, W*3) output, W a multiple of 4: 4 pixels = 3 words (LE)."""
    for i in range(images.shape[0]):
        for y in range(images.shape[2]):
            blue, green, red = images[i, 0, y], images[i, 1, y], images[i, 2, y]
            row = words[i, y]
            for group in range(images.shape[3] // 4):
                x = 4 * group
                b0, g0, r0 = _to_byte(blue[x]), _to_byte(green[x]), _to_byte(red[x])
                b1, g1, r1 = _to_byte(blue[x + 1]), _to_byte(green[x + 1]), _to_byte(red[x + 1])
                b2, g2, r2 = _to_byte(blue[x + 2]), _to_byte(green[x + 2]), _to_byte(red[x + 2])
                b3, g3, r3 = _to_byte(blue[x + 3]), _to_byte(green[x + 3]), _to_byte(red[x + 3])
                row[3 * group] = b0 | (g0 << 8) | (r0 << 16) | (b1 << 24)
                row[3 * group + 1] = g1 | (r1 << 8) | (b2 << 16) | (g2 << 24)
                row[3 * group + 2] = r2 | (b3 << 8) | (g3 << 16) | (r3 << 24)


@njit
def _planar_to_bgr8_bytes_kernel(images, pixels, out):
    """Any width: each row packed into ``pixels`` (W,) uint32 first, then stored byte by byte."""
    for i in range(images.shape[0]):
        for y in range(images.shape[2]):
            blue, green, red = images[i, 0, y], images[i, 1, y], images[i, 2, y]
            for x in range(images.shape[3]):
                pixels[x] = _to_byte(blue[x]) | (_to_byte(green[x]) << 8) | (_to_byte(red[x]) << 16)
            row = out[i, y]
            for x in range(images.shape[3]):
                packed = pixels[x]
                row[x, 0] = np.uint8(packed & 0xFF)
                row[x, 1] = np.uint8((packed >> 8) & 0xFF)
                row[x, 2] = np.uint8(packed >> 16)


@njit
def _bgr8_to_planar_kernel(image, out):
    """out[k, c, y, x] = image[y, x, c] / 255 (float32) for every k; the first copy is the source of the rest."""
    scale = np.float32(255.0)
    for y in range(image.shape[0]):
        pixels = image[y]
        for channel in range(3):
            first = out[0, channel, y]
            for x in range(image.shape[1]):
                first[x] = np.float32(pixels[x, channel]) / scale
            for k in range(1, out.shape[0]):
                row = out[k, channel, y]
                for x in range(image.shape[1]):
                    row[x] = first[x]


def _check_images(images) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != 3:
        got = getattr(images, "shape", type(images).__name__)
        raise ConfigError(f"images must be a float array (N, 3, H, W) in BGR order, got {got}")
    if images.dtype == np.float16:  # numba has no float16; widening is exact, so the result is unchanged
        images = images.astype(np.float32)
    if images.dtype not in (np.float32, np.float64):
        raise ConfigError(f"images must be float32 or float64 (values in [0, 1]), got {images.dtype}")
    return images


def planar_to_bgr8(images, out=None) -> np.ndarray:
    """float (N, 3, H, W) BGR (any range) -> uint8 (N, H, W, 3): clipped to [0, 1] (NaN -> 0), x 255, + 0.5,
    truncated. Written into ``out`` when given (a writeable C-contiguous uint8 array of that shape)."""
    images = _check_images(images)
    n, _, height, width = images.shape
    out = check_out(out, (n, height, width, 3), np.uint8)
    if out.size == 0:
        return out
    if width % 4 == 0 and out.ctypes.data % 4 == 0 and sys.byteorder == "little":
        _planar_to_bgr8_words_kernel(images, out.reshape(n, height, 3 * width).view(np.uint32))
    else:
        _planar_to_bgr8_bytes_kernel(images, np.empty(width, np.uint32), out)
    return out


def bgr8_to_planar(image, copies: int = 1, out=None) -> np.ndarray:
    """uint8 (H, W, 3) BGR -> float32 (copies, 3, H, W), each copy ``image / 255`` (float32 division).

    With ``out`` (a writeable C-contiguous float32 array) its first axis sets the number of copies.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = (getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__))
        raise ConfigError(f"image must be a uint8 (H, W, 3) BGR array, got {got}")
    if out is not None and isinstance(out, np.ndarray) and out.ndim == 4:
        copies = out.shape[0]
    if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 1:
        raise ConfigError(f"copies must be a positive integer, got {copies!r}")
    out = check_out(out, (int(copies), 3, image.shape[0], image.shape[1]), np.float32)
    if out.size:
        _bgr8_to_planar_kernel(image, out)
    return out
