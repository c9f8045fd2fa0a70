"""``.dat`` spike files (SPEC §2): no header, packed binary frames back to back.

A stored frame is ``H*row_bits/8`` bytes, pixels row-major, ``bit_order`` within each byte; the real camera
stores the image upside down (``flip_rows=True``). The USB variant stores ``row_bits`` (e.g. 416) bits per
row of which only the first ``width`` (e.g. 400) are pixels. Geometry, orientation and bit order are
explicit arguments of every reader and writer here: a file cannot say which it uses, so nothing is guessed.

Readers return frames in the canonical in-memory layout of :mod:`spikereveal.kernels.packing`
(LSB first, top row first); writers take canonical frames and store them in the file layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from spikereveal.errors import ConfigError, FormatError
from spikereveal.kernels.packing import (
    as_packed,
    check_bit_order,
    from_canonical,
    packed_frame_bytes,
    to_canonical,
)

__all__ = ["SpikeFile", "SpikeFileWriter", "read_dat", "write_dat"]


def _check_flip_rows(flip_rows) -> bool:
    if not isinstance(flip_rows, (bool, np.bool_)):
        raise ConfigError(
            f"flip_rows must be True or False (True: the file stores the bottom row first, as the real "
            f"camera does), got {flip_rows!r}"
        )
    return bool(flip_rows)


def _check_row_bits(row_bits, height: int, width: int) -> int:
    if row_bits is None:
        return width
    if isinstance(row_bits, bool) or not isinstance(row_bits, (int, np.integer)) or row_bits < width:
        raise ConfigError(
            f"row_bits (bits stored per row) must be an integer >= the width {width}, got {row_bits!r}"
        )
    if (height * int(row_bits)) % 8:
        raise ConfigError(
            f"{height} rows of {row_bits} bits are not a whole number of bytes; check height and row_bits"
        )
    return int(row_bits)


class SpikeFile:
    """Memory-mapped reader of a ``.dat`` spike file; serves any frame range without loading the file.

    ``frame_count`` counts whole frames; a trailing partial frame is reported by ``truncated_bytes`` and
    never served. The file is mapped on the first read, and the size is taken when the reader is made.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        height: int,
        width: int,
        flip_rows: bool,
        bit_order: str = "little",
        row_bits: int | None = None,
    ):
        self.path = Path(path)
        self.height = int(height)
        self.width = int(width)
        self.frame_bytes = packed_frame_bytes(self.height, self.width)  # canonical bytes per frame
        self.flip_rows = _check_flip_rows(flip_rows)
        self.bit_order = check_bit_order(bit_order)
        self.row_bits = _check_row_bits(row_bits, self.height, self.width)
        self.stored_frame_bytes = self.height * self.row_bits // 8
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise FormatError(self.path, "spike file does not exist; check the path") from None
        if not self.path.is_file():
            raise FormatError(self.path, "is not a regular file; expected a .dat spike file")
        self.file_bytes = size
        self.frame_count = size // self.stored_frame_bytes
        self.truncated_bytes = size % self.stored_frame_bytes
        self._memmap: np.ndarray | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def _frames(self) -> np.ndarray:
        if self._closed:
            raise ConfigError(f"{self.path}: the spike file reader is closed")
        if self._memmap is None:
            # map whole frames only: a trailing partial frame stays out of reach
            self._memmap = np.memmap(
                self.path, dtype=np.uint8, mode="r", shape=(self.frame_count, self.stored_frame_bytes)
            )
        return self._memmap

    def close(self) -> None:
        self._memmap = None  # frames served are copies, so dropping the map releases the file
        self._closed = True

    def __enter__(self) -> SpikeFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __len__(self) -> int:
        return self.frame_count

    def __repr__(self) -> str:
        return (
            f"SpikeFile({str(self.path)!r}, {self.height}x{self.width}, frames={self.frame_count}, "
            f"flip_rows={self.flip_rows}, bit_order={self.bit_order!r}, row_bits={self.row_bits})"
        )

    # -- reading -----------------------------------------------------------------------------------
    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        if self._closed:
            raise ConfigError(f"{self.path}: the spike file reader is closed")
        for name, value in (("start", start), ("stop", stop)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"{self.path}: frame {name} must be an integer, got {value!r}")
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.frame_count:
            raise ConfigError(
                f"{self.path}: frame range [{start}, {stop}) is outside the file, which holds frames "
                f"[0, {self.frame_count})"
            )
        return start, stop

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``[start, stop)`` as canonical packed ``(stop-start, H*W/8)`` uint8 (a copy).

        ``out``, if given, is a C-contiguous uint8 array of that shape that receives the frames.
        """
        start, stop = self._check_range(start, stop)
        count = stop - start
        if out is not None:
            if (
                not isinstance(out, np.ndarray)
                or out.dtype != np.uint8
                or out.shape != (count, self.frame_bytes)
                or not out.flags.c_contiguous
            ):
                raise ConfigError(
                    f"out must be a C-contiguous uint8 array of shape ({count}, {self.frame_bytes})"
                )
        if count == 0:
            frames = np.empty((0, self.frame_bytes), dtype=np.uint8)
        else:
            frames = self._canonical(self._frames()[start:stop])
        if out is None:
            return frames
        out[...] = frames
        return out

    def _canonical(self, stored: np.ndarray) -> np.ndarray:
        if self.row_bits != self.width:
            stored = self._drop_padding(stored)
        if self.bit_order == "little" and not self.flip_rows:
            return np.array(stored, dtype=np.uint8, order="C")  # already canonical: one memcpy
        # to_canonical copies when it converts; ascontiguousarray guards against a view of the map
        return np.ascontiguousarray(
            to_canonical(stored, self.height, self.width, self.bit_order, self.flip_rows)
        )

    def _drop_padding(self, stored: np.ndarray) -> np.ndarray:
        """USB variant: keep the first ``width`` of the ``row_bits`` columns of each row."""
        count = stored.shape[0]
        if self.row_bits % 8 == 0 and self.width % 8 == 0:
            # whole-byte rows and pixels: the first width/8 bytes of a row hold exactly its pixels
            rows = stored.reshape(count, self.height, self.row_bits // 8)[:, :, : self.width // 8]
            return rows.reshape(count, self.frame_bytes)
        bits = np.unpackbits(np.asarray(stored), axis=1, bitorder=self.bit_order)
        bits = bits.reshape(count, self.height, self.row_bits)[:, :, : self.width]
        return np.packbits(bits.reshape(count, -1), axis=1, bitorder=self.bit_order)

    def __getitem__(self, key) -> np.ndarray:
        """``spike_file[i]`` -> one packed frame ``(H*W/8,)``; ``spike_file[a:b]`` -> ``read(a, b)``."""
        if isinstance(key, slice):
            start, stop, step = key.indices(self.frame_count)
            if step != 1:
                raise ConfigError(f"{self.path}: frame slices must have step 1, got {step}")
            return self.read(start, max(start, stop))
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            index = int(key) + self.frame_count if key < 0 else int(key)
            if not 0 <= index < self.frame_count:
                raise ConfigError(f"{self.path}: frame {key} is outside [0, {self.frame_count})")
            return self.read(index, index + 1)[0]
        raise ConfigError(f"{self.path}: index frames with an integer or a slice, got {key!r}")

    def blocks(
        self, block_frames: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_frame, packed_block)`` for ``[start, stop)`` in blocks of ``block_frames``."""
        if block_frames < 1:
            raise ConfigError(f"block_frames must be >= 1, got {block_frames}")
        start, stop = self._check_range(start, self.frame_count if stop is None else stop)
        for first in range(start, stop, block_frames):
            yield first, self.read(first, min(first + block_frames, stop))


class SpikeFileWriter:
    """Appends canonical packed frames to a new ``.dat`` file in the file layout (truncates the file)."""

    def __init__(
        self,
        path: str | os.PathLike,
        height: int,
        width: int,
        flip_rows: bool,
        bit_order: str = "little",
    ):
        self.path = Path(path)
        self.height = int(height)
        self.width = int(width)
        self.frame_bytes = packed_frame_bytes(self.height, self.width)
        self.flip_rows = _check_flip_rows(flip_rows)
        self.bit_order = check_bit_order(bit_order)
        self.frames_written = 0
        self._file = open(self.path, "wb")

    @property
    def closed(self) -> bool:
        return self._file.closed

    def append(self, packed_block: np.ndarray) -> None:
        """Write canonical packed frames ``(N, H*W/8)`` (or one frame ``(H*W/8,)``) after those written."""
        if self._file.closed:
            raise ConfigError(f"{self.path}: the spike file writer is closed")
        block = as_packed(packed_block, self.height, self.width)
        stored = from_canonical(block, self.height, self.width, self.bit_order, self.flip_rows)
        self._file.write(np.ascontiguousarray(stored).data)
        self.frames_written += block.shape[0]

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SpikeFileWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_dat(
    path: str | os.PathLike,
    packed: np.ndarray,
    height: int,
    width: int,
    flip_rows: bool,
    bit_order: str = "little",
) -> None:
    """Write canonical packed frames ``(N, H*W/8)`` to a new ``.dat`` file in the given layout."""
    block = as_packed(packed, height, width)  # validate before truncating anything
    with SpikeFileWriter(path, height, width, flip_rows, bit_order) as writer:
        writer.append(block)


def read_dat(
    path: str | os.PathLike,
    height: int,
    width: int,
    flip_rows: bool,
    bit_order: str = "little",
    row_bits: int | None = None,
    allow_truncated: bool = False,
) -> np.ndarray:
    """Every frame of a ``.dat`` file as canonical packed ``(N, H*W/8)`` uint8.

    A trailing partial frame is a FormatError unless ``allow_truncated`` (then it is dropped).
    """
    with SpikeFile(path, height, width, flip_rows, bit_order, row_bits) as spike_file:
        if spike_file.truncated_bytes and not allow_truncated:
            raise FormatError(
                path,
                f"ends with a partial frame ({spike_file.truncated_bytes} of {spike_file.stored_frame_bytes} "
                f"bytes) after {spike_file.frame_count} whole frames; the file is truncated or the geometry "
                f"{height}x{width} (row_bits={spike_file.row_bits}) is wrong",
            )
        return spike_file.read(0, spike_file.frame_count)
