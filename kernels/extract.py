"""The LDN's spike input: the raw frames around each output timestamp, unpacked to planes.

float32 0/1 for training and PyTorch; uint8 levels (``SPIKE_LEVEL`` = one spike) for the deployed graph,
which divides by ``SPIKE_LEVEL`` itself: a quarter of the bytes to write per exposure, and room for the
fractional values a hot-pixel fill gives (``calibration.photometric``).
"""

from __future__ import annotations

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels._numba import njit
from spikereveal.kernels.accumulate import check_out
from spikereveal.kernels.packing import as_packed
from spikereveal.kernels.timing import LDN_SPIKE_WINDOW

#: one spike in the uint8 spike planes of the deployed graph
SPIKE_LEVEL = 255
_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
# byte -> its 8 bits, least significant bit first (the canonical bit order), in each output dtype
_BYTE_TO_BITS = {np.dtype(np.float32): _BITS.astype(np.float32),
                 np.dtype(np.uint8): (_BITS * SPIKE_LEVEL).astype(np.uint8)}
# the same tables as 64-bit words per byte (float32: 4 words), for outputs aligned to 8 bytes
_BYTE_TO_WORDS = {dtype: np.ascontiguousarray(table).view(np.uint64) for dtype, table in _BYTE_TO_BITS.items()}


# the bytes of one word: one output byte per packed bit (little-endian words, least significant bit first)
_BROADCAST = np.uint64(0x0101010101010101)  # byte b -> b in all 8 bytes
_BIT_OF_BYTE = np.uint64(0x8040201008040201)  # byte j keeps bit j
_LOW_7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_SEVEN = np.uint64(7)
_LEVEL = np.uint64(SPIKE_LEVEL)


@njit
def _unpack_rows_kernel(packed, first_rows, window, table, out):
    """out[k, f, :] = table[bit] for the bits of packed[first_rows[k] + f]; out is (K, window, H*W).

    The general path (any dtype, any alignment of ``out``)."""
    n_bytes = packed.shape[1]
    for k in range(first_rows.shape[0]):
        for f in range(window):
            row = first_rows[k] + f
            for i in range(n_bytes):
                bits = table[packed[row, i]]
                for bit in range(8):
                    out[k, f, 8 * i + bit] = bits[bit]


@njit
def _unpack_rows_uint8_kernel(packed, first_rows, window, out_words):
    """uint8 levels, one 64-bit word (8 pixels) per packed byte, computed with no table and no temporary:
    the byte is broadcast to 8 bytes, byte j keeps bit j, a non-zero byte becomes 1, times ``SPIKE_LEVEL``
    (a compile-time constant: the multiply becomes a shift and a subtraction).
    ``out_words`` is the caller's (K, window, H*W) uint8 output viewed as (K, window, H*W/8) uint64."""
    n_bytes = packed.shape[1]
    for k in range(first_rows.shape[0]):
        for f in range(window):
            source = packed[first_rows[k] + f]
            target = out_words[k, f]
            for i in range(n_bytes):
                spread = (np.uint64(source[i]) * _BROADCAST) & _BIT_OF_BYTE  # byte j: 0 or 1 << j
                high = (spread + _LOW_7) & _HIGH  # 0x80 in every non-zero byte (bytes <= 0x80: no carry)
                target[i] = (high >> _SEVEN) * _LEVEL


@njit
def _unpack_rows_words_kernel(packed, first_rows, window, table_words, out_words):
    """Any dtype through 64-bit words: ``table_words[b]`` holds byte ``b``'s 8 output values as
    ``table_words.shape[1]`` uint64 words, copied into the caller's output viewed as uint64."""
    n_bytes = packed.shape[1]
    words = table_words.shape[1]
    for k in range(first_rows.shape[0]):
        for f in range(window):
            source = packed[first_rows[k] + f]
            target = out_words[k, f]
            for i in range(n_bytes):
                value = table_words[source[i]]
                for w in range(words):
                    target[words * i + w] = value[w]


def check_window_size(window: int, name: str = "window") -> int:
    """A centred window must hold an odd, positive number of frames (SPEC §2)."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise ConfigError(f"{name} must be an odd number of frames >= 1 (it is centred on a frame), got {window!r}")
    return int(window)


def centred_rows(centers, window: int, frame_count: int, first_index: int = 0) -> np.ndarray:
    """First array row of the ``window`` frames centred on each of ``centers`` (absolute frame indices).

    Raises ConfigError when a window reaches outside the ``frame_count`` frames that start at ``first_index``.
    """
    centers = np.atleast_1d(np.asarray(centers))
    if centers.ndim != 1 or (centers.size and not np.issubdtype(centers.dtype, np.integer)):
        raise ConfigError(f"centers must be a 1-D array of integer frame indices, got {centers.dtype} {centers.shape}")
    half = window // 2
    first_rows = centers.astype(np.int64) - first_index - half
    for center, row in zip(centers, first_rows):
        if row < 0 or row + window > frame_count:
            raise ConfigError(
                f"the {window}-frame window centred on frame {center} needs frames [{center - half}, "
                f"{center + half}], but the spike data holds frames [{first_index}, {first_index + frame_count - 1}]; "
                "keep a margin of window // 2 frames around every centre"
            )
    return first_rows


def extract_ldn_input(
    packed, height: int, width: int, centers, window: int = LDN_SPIKE_WINDOW, first_index: int = 0, out=None,
    dtype=np.float32,
) -> np.ndarray:
    """The ``window`` raw frames centred on each of ``centers``, unpacked: (K, window, H, W).

    float32 0/1, or with ``dtype=np.uint8`` the deployed graph's levels 0/``SPIKE_LEVEL``. Frame ``i`` of
    ``packed`` (canonical packed frames) has index ``first_index + i``; window ``k`` holds frames
    ``centers[k] - window // 2 .. centers[k] + window // 2``. Written into ``out`` when given (a
    C-contiguous array of exactly that shape whose dtype sets the output's, e.g. the engine's input buffer).
    """
    packed = as_packed(packed, height, width)
    window = check_window_size(window)
    first_rows = centred_rows(centers, window, packed.shape[0], first_index)
    what = "dtype"
    if isinstance(out, np.ndarray):
        dtype, what = out.dtype, "out"
    table = _BYTE_TO_BITS.get(np.dtype(dtype))
    if table is None:
        raise ConfigError(f"{what} must be float32 (spikes 0/1) or uint8 (spikes 0/{SPIKE_LEVEL}), got {np.dtype(dtype)}")
    out = check_out(out, (first_rows.size, window, height, width), table.dtype)
    if first_rows.size:
        flat = out.reshape(first_rows.size, window, height * width)
        if out.ctypes.data % 8:  # rare (a caller's odd offset): the element-wise path
            _unpack_rows_kernel(packed, first_rows, window, table, flat)
        elif table.dtype == np.uint8:  # the deployed graph's input, every exposure
            _unpack_rows_uint8_kernel(packed, first_rows, window, flat.view(np.uint64))
        else:
            _unpack_rows_words_kernel(packed, first_rows, window, _BYTE_TO_WORDS[table.dtype], flat.view(np.uint64))
    return out
