"""Bit packing of binary spike frames, and conversion of file layouts to the in-memory layout.

In memory a packed frame is ``H*W/8`` bytes, row-major, least significant bit first, top row first.
Files may store the most significant bit first (``bit_order="big"``) or the image upside down
(``flip_rows=True``, as the real camera does); ``to_canonical``/``from_canonical`` convert once.
"""

from __future__ import annotations

import numpy as np

from spikereveal.errors import ConfigError

BIT_ORDERS = ("little", "big")

# byte -> the same byte with its 8 bits reversed: converts between little and big bit order
_REVERSED_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
_REVERSED_BITS = np.packbits(_REVERSED_BITS, axis=1, bitorder="big")[:, 0]


def _reverse_bits_in_bytes(packed: np.ndarray) -> np.ndarray:
    """Reverse the bit order of every byte (a new array). Word-wide swaps when the size allows."""
    flat = np.ascontiguousarray(packed).reshape(-1)
    if flat.size % 8:
        return _REVERSED_BITS[packed]
    words = flat.view(np.uint64)
    for shift, mask in ((1, 0x5555555555555555), (2, 0x3333333333333333), (4, 0x0F0F0F0F0F0F0F0F)):
        mask = np.uint64(mask)
        shift = np.uint64(shift)
        words = ((words >> shift) & mask) | ((words & mask) << shift)
    return words.view(np.uint8).reshape(packed.shape)


def check_bit_order(bit_order: str) -> str:
    if bit_order not in BIT_ORDERS:
        raise ConfigError(f"bit_order must be one of {BIT_ORDERS}, got {bit_order!r}")
    return bit_order


def packed_frame_bytes(height: int, width: int) -> int:
    """Bytes per packed frame; H*W must be a positive multiple of 8 (SPEC §2)."""
    if height <= 0 or width <= 0:
        raise ConfigError(f"spike geometry must be positive, got {height}x{width}")
    if (height * width) % 8:
        raise ConfigError(
            f"spike geometry {height}x{width} has {height * width} pixels, not a multiple of 8, "
            "so frames cannot be packed into whole bytes"
        )
    return height * width // 8


def pack_frames(frames: np.ndarray) -> np.ndarray:
    """Binary frames ``(N, H, W)`` (bool or 0/1 integers) -> packed ``(N, H*W/8)`` uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ConfigError(f"frames must have shape (N, H, W), got {frames.shape}")
    n, height, width = frames.shape
    packed_frame_bytes(height, width)
    return np.packbits(frames.reshape(n, height * width) != 0, axis=1, bitorder="little")


def unpack_frames(packed: np.ndarray, height: int, width: int) -> np.ndarray:
    """Packed ``(N, H*W/8)`` uint8 -> binary frames ``(N, H, W)`` uint8 (0/1)."""
    packed = as_packed(packed, height, width)
    bits = np.unpackbits(packed, axis=1, bitorder="little")
    return bits.reshape(packed.shape[0], height, width)


def as_packed(packed: np.ndarray, height: int, width: int) -> np.ndarray:
    """Validate (and view as 2-D) an array of packed frames for a ``height`` x ``width`` sensor."""
    nbytes = packed_frame_bytes(height, width)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ConfigError(f"packed frames must be uint8, got {packed.dtype}")
    if packed.ndim == 1 and packed.size % nbytes == 0:
        packed = packed.reshape(-1, nbytes)
    if packed.ndim != 2 or packed.shape[1] != nbytes:
        raise ConfigError(
            f"packed frames for a {height}x{width} sensor must have shape (N, {nbytes}), got {packed.shape}"
        )
    return packed


def _flip_packed_rows(packed: np.ndarray, height: int, width: int) -> np.ndarray:
    if width % 8 == 0:  # rows are whole bytes: reverse byte rows, no unpacking
        rows = packed.reshape(packed.shape[0], height, width // 8)
        return np.ascontiguousarray(rows[:, ::-1, :]).reshape(packed.shape[0], -1)
    return pack_frames(unpack_frames(packed, height, width)[:, ::-1, :])


def to_canonical(
    packed: np.ndarray, height: int, width: int, bit_order: str = "little", flip_rows: bool = False
) -> np.ndarray:
    """Packed frames as stored (``bit_order``, maybe upside down) -> the canonical in-memory layout.

    Returns the input itself (no copy) when it is already canonical.
    """
    packed = as_packed(packed, height, width)
    if check_bit_order(bit_order) == "big":
        packed = _reverse_bits_in_bytes(packed)
    if flip_rows:
        packed = _flip_packed_rows(packed, height, width)
    return packed


def from_canonical(
    packed: np.ndarray, height: int, width: int, bit_order: str = "little", flip_rows: bool = False
) -> np.ndarray:
    """The inverse of :func:`to_canonical` (both steps are involutions; order them in reverse)."""
    packed = as_packed(packed, height, width)
    if flip_rows:
        packed = _flip_packed_rows(packed, height, width)
    if check_bit_order(bit_order) == "big":
        packed = _reverse_bits_in_bytes(packed)
    return packed
