"""Spike counts over frame windows of packed frames: bit-sliced vertical counters.

A packed frame is viewed as words of the widest unsigned type that divides its size (64-bit for most
geometries, 32-bit for 250x400 = 12500 bytes); a b-bit word holds b pixels (pixel ``b*j + k`` is bit ``k``
of word ``j``: the canonical layout is least significant bit first and x86/ARM are little-endian).
Instead of unpacking, the kernels treat a word as b one-bit lanes and add frames into *bit-planes* of a
per-lane counter:

* planes 0..3 are the carry-save state of a Harley-Seal adder (weights 1, 2, 4, 8); every 16 frames go
  through a tree of 15 carry-save adders (5 word ops each), which leaves one "sixteens" word (leftover
  frames go through trees of 8 and 4, the last few one by one);
* planes 4..15 are a plain binary counter of those sixteens (a branch-free ripple add).

So a frame costs about 6 word operations per word of pixels, and the loops run along the words so that
LLVM vectorizes them (AVX2/AVX-512 here, NEON on ARM). The value of a lane is ``sum_b plane_b << b`` at
any moment, whatever the grouping of the frames, which is why the streaming accumulator gives exactly the
batch counts. Planes are converted to per-pixel ``uint16`` counts once per window (``_planes_to_counts``);
only planes below the bit length of the window length can be non-zero, and only those are touched.
16 planes hold 65535, the longest window allowed, so nothing ever overflows.
"""

from __future__ import annotations

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels._numba import njit
from spikereveal.kernels.packing import as_packed, packed_frame_bytes

MAX_WINDOW_FRAMES = 65535  # counts are uint16
_PLANES = 16
_HARLEY_SEAL_PLANES = 4  # planes 0..3 are the carry-save state; a group of 16 frames carries into plane 4


@njit
def _csa(a, b, c):
    """Carry-save adder on bit lanes: returns (carry, sum) of a + b + c."""
    u = a ^ b
    return (a & b) | (u & c), u ^ c


@njit
def _carry_into_counter(planes, carry, first_plane, n_planes):
    """Ripple ``carry`` (n_words,), of weight ``2**first_plane``, into planes ``first_plane .. n_planes - 1``
    taken as a binary counter. One pass per plane along the words: branch-free and vectorizable. Planes
    at or above the bit length of the window length never receive a carry, so callers pass that length."""
    for b in range(first_plane, n_planes):
        for j in range(carry.shape[0]):
            p = planes[b, j]
            c = carry[j]
            planes[b, j] = p ^ c
            carry[j] = p & c


@njit
def _add_group16(words, f, planes, carry):
    """Add the 16 frames ``words[f:f + 16]``: a Harley-Seal tree of 15 carry-save adders per word; the
    sixteens go to ``carry``. The ripple into the upper planes is a separate pass: with it inside, the
    loop touches too many arrays for LLVM's alias checks and stays scalar (about 1.7x slower)."""
    for j in range(words.shape[1]):
        ones = planes[0, j]
        twos = planes[1, j]
        fours = planes[2, j]
        eights = planes[3, j]
        twos_a, ones = _csa(ones, words[f, j], words[f + 1, j])
        twos_b, ones = _csa(ones, words[f + 2, j], words[f + 3, j])
        fours_a, twos = _csa(twos, twos_a, twos_b)
        twos_a, ones = _csa(ones, words[f + 4, j], words[f + 5, j])
        twos_b, ones = _csa(ones, words[f + 6, j], words[f + 7, j])
        fours_b, twos = _csa(twos, twos_a, twos_b)
        eights_a, fours = _csa(fours, fours_a, fours_b)
        twos_a, ones = _csa(ones, words[f + 8, j], words[f + 9, j])
        twos_b, ones = _csa(ones, words[f + 10, j], words[f + 11, j])
        fours_a, twos = _csa(twos, twos_a, twos_b)
        twos_a, ones = _csa(ones, words[f + 12, j], words[f + 13, j])
        twos_b, ones = _csa(ones, words[f + 14, j], words[f + 15, j])
        fours_b, twos = _csa(twos, twos_a, twos_b)
        eights_b, fours = _csa(fours, fours_a, fours_b)
        sixteens, eights = _csa(eights, eights_a, eights_b)
        planes[0, j] = ones
        planes[1, j] = twos
        planes[2, j] = fours
        planes[3, j] = eights
        carry[j] = sixteens


@njit
def _add_group8(words, f, planes, carry):
    """Add the 8 frames ``words[f:f + 8]`` (leftovers of a window or of a small block)."""
    for j in range(words.shape[1]):
        ones = planes[0, j]
        twos = planes[1, j]
        fours = planes[2, j]
        eights = planes[3, j]
        twos_a, ones = _csa(ones, words[f, j], words[f + 1, j])
        twos_b, ones = _csa(ones, words[f + 2, j], words[f + 3, j])
        fours_a, twos = _csa(twos, twos_a, twos_b)
        twos_a, ones = _csa(ones, words[f + 4, j], words[f + 5, j])
        twos_b, ones = _csa(ones, words[f + 6, j], words[f + 7, j])
        fours_b, twos = _csa(twos, twos_a, twos_b)
        eights_a, fours = _csa(fours, fours_a, fours_b)
        planes[0, j] = ones
        planes[1, j] = twos
        planes[2, j] = fours
        planes[3, j] = eights ^ eights_a
        carry[j] = eights & eights_a


@njit
def _add_group4(words, f, planes, carry):
    """Add the 4 frames ``words[f:f + 4]``."""
    for j in range(words.shape[1]):
        ones = planes[0, j]
        twos = planes[1, j]
        fours = planes[2, j]
        eights = planes[3, j]
        twos_a, ones = _csa(ones, words[f, j], words[f + 1, j])
        twos_b, ones = _csa(ones, words[f + 2, j], words[f + 3, j])
        fours_a, twos = _csa(twos, twos_a, twos_b)
        eights_a = fours & fours_a
        planes[0, j] = ones
        planes[1, j] = twos
        planes[2, j] = fours ^ fours_a
        planes[3, j] = eights ^ eights_a
        carry[j] = eights & eights_a


@njit
def _add_frames(words, first, stop, planes, carry, n_planes):
    """Add frames ``[first, stop)`` of ``words`` (N, n_words) into ``planes`` (16, n_words): trees of
    16 frames, then at most one tree of 8 and one of 4, then single frames. ``carry`` (n_words,) is
    scratch; ``n_planes`` is the bit length of the longest count the planes will hold."""
    frame = first
    while stop - frame >= 16:
        _add_group16(words, frame, planes, carry)
        _carry_into_counter(planes, carry, _HARLEY_SEAL_PLANES, n_planes)
        frame += 16
    if stop - frame >= 8:
        _add_group8(words, frame, planes, carry)
        _carry_into_counter(planes, carry, _HARLEY_SEAL_PLANES, n_planes)
        frame += 8
    if stop - frame >= 4:
        _add_group4(words, frame, planes, carry)
        _carry_into_counter(planes, carry, _HARLEY_SEAL_PLANES, n_planes)
        frame += 4
    for frame in range(frame, stop):  # a lone frame: a carry of weight 1 into every plane
        carry[:] = words[frame]
        _carry_into_counter(planes, carry, 0, n_planes)


@njit
def _bit_length(value):
    n = 0
    while value > 0:
        n += 1
        value >>= 1
    return n


@njit
def _planes_to_counts(planes, n_planes, out64, lanes):
    """Bit-planes (16, n_words) -> uint16 counts of one frame, written as uint64 (4 counts each).

    ``lanes`` (nibbles per word, n_words) uint64 is scratch. Each nibble of a plane is spread into four
    16-bit lanes by one multiply (bit l lands at 16*l + 3; no two partial products overlap); the loop
    runs along the words so that LLVM vectorizes it, and a final pass puts the lanes in pixel order.
    """
    n_words = planes.shape[1]
    nibbles_per_word = lanes.shape[0]
    spread = np.uint64((1 << 3) | (1 << 18) | (1 << 33) | (1 << 48))
    low_bits = np.uint64(0x0001000100010001)
    lanes[:, :] = 0
    for b in range(n_planes):
        weight = np.uint64(b)
        for q in range(nibbles_per_word):
            shift = np.uint64(4 * q)
            for j in range(n_words):
                nibble = (np.uint64(planes[b, j]) >> shift) & np.uint64(15)
                lanes[q, j] += (((nibble * spread) >> np.uint64(3)) & low_bits) << weight
    for j in range(n_words):
        for q in range(nibbles_per_word):
            out64[j * nibbles_per_word + q] = lanes[q, j]


@njit
def _window_counts_kernel(words, starts, stops, planes, carry, lanes, out64):
    """Counts of each window ``[starts[m], stops[m])`` into ``out64[m]`` (uint16 counts viewed as uint64)."""
    for m in range(starts.shape[0]):
        planes[:, :] = 0
        n_planes = _bit_length(stops[m] - starts[m])  # higher planes stay 0
        _add_frames(words, starts[m], stops[m], planes, carry, n_planes)
        _planes_to_counts(planes, n_planes, out64[m], lanes)


@njit
def _push_kernel(words, block_first, starts, stops, planes, carry, frames_seen):
    """Add the part of a block (frames ``block_first ..``) that falls in each window to its planes."""
    block_stop = block_first + words.shape[0]
    for m in range(starts.shape[0]):
        lo = max(starts[m], block_first)
        hi = min(stops[m], block_stop)
        if lo < hi:
            n_planes = _bit_length(stops[m] - starts[m])
            _add_frames(words, lo - block_first, hi - block_first, planes[m], carry, n_planes)
            frames_seen[m] += hi - lo


def as_words(packed: np.ndarray) -> np.ndarray:
    """Packed frames (N, nbytes) viewed, without a copy where possible, as C-contiguous words of the widest
    unsigned type (64, 32, 16 or 8 bits) that divides the frame size; each word is that many pixel lanes.
    250x400 frames (12500 bytes) give 32-bit words: 64-bit ones would straddle odd frames."""
    packed = np.ascontiguousarray(packed)
    nbytes = packed.shape[1]
    for dtype in (np.uint64, np.uint32, np.uint16):
        if nbytes % np.dtype(dtype).itemsize == 0:
            return packed.view(dtype)
    return packed


def _scratch(words: np.ndarray):
    """Bit-planes, the carry word per lane word, and the lanes of ``_planes_to_counts``."""
    n_words = words.shape[1]
    planes = np.empty((_PLANES, n_words), dtype=words.dtype)
    carry = np.empty(n_words, dtype=words.dtype)
    lanes = np.empty((2 * words.dtype.itemsize, n_words), dtype=np.uint64)
    return planes, carry, lanes


def check_windows(starts, stops, frame_count: int, first_index: int = 0):
    """Validate windows ``[starts, stops)`` (absolute indices) against data of ``frame_count`` frames
    starting at ``first_index``; returns int64 arrays relative to the first frame of the data."""
    starts = np.atleast_1d(np.asarray(starts))
    stops = np.atleast_1d(np.asarray(stops))
    if starts.ndim != 1 or starts.shape != stops.shape:
        raise ConfigError(f"starts and stops must be 1-D of the same length, got {starts.shape} and {stops.shape}")
    if starts.size and not (np.issubdtype(starts.dtype, np.integer) and np.issubdtype(stops.dtype, np.integer)):
        raise ConfigError(f"window bounds must be integer frame indices, got {starts.dtype} and {stops.dtype}")
    starts = starts.astype(np.int64) - first_index
    stops = stops.astype(np.int64) - first_index
    for m in range(starts.size):
        start, stop = int(starts[m]), int(stops[m])
        if stop < start:
            raise ConfigError(f"window {m} ends before it starts: [{start + first_index}, {stop + first_index})")
        if stop - start > MAX_WINDOW_FRAMES:
            raise ConfigError(
                f"window {m} spans {stop - start} frames; counts are uint16, so split windows longer than "
                f"{MAX_WINDOW_FRAMES} frames"
            )
        if stop > start and (start < 0 or stop > frame_count):
            raise ConfigError(
                f"window {m} [{start + first_index}, {stop + first_index}) is outside the spike data, which "
                f"holds frames [{first_index}, {first_index + frame_count})"
            )
    return starts, stops


def check_out(out, shape, dtype, name="out"):
    """Allocate an output array, or check that a caller's buffer has exactly the shape and dtype and is
    writeable and C-contiguous (kernels write through flat views)."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype:
        got = (getattr(out, "shape", None), getattr(out, "dtype", type(out).__name__))
        raise ConfigError(f"{name} must be a {np.dtype(dtype)} array of shape {tuple(shape)}, got {got}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ConfigError(f"{name} must be a writeable C-contiguous array (use np.empty or np.ascontiguousarray)")
    return out


def window_counts(packed, height: int, width: int, starts, stops, out=None, first_index: int = 0) -> np.ndarray:
    """Spike counts of every pixel over each half-open window ``[starts[m], stops[m])``.

    ``packed``: canonical packed frames (N, H*W/8); frame ``i`` of the array has index ``first_index + i``.
    Returns (M, H, W) uint16 (``out`` if given). An empty window gives zeros. Windows must lie inside the
    data and be at most 65535 frames long.
    """
    packed = as_packed(packed, height, width)
    starts, stops = check_windows(starts, stops, packed.shape[0], first_index)
    n_windows = starts.size
    out = check_out(out, (n_windows, height, width), np.uint16)
    if n_windows == 0:
        return out
    words = as_words(packed)
    out64 = out.reshape(n_windows, height * width).view(np.uint64)
    _window_counts_kernel(words, starts, stops, *_scratch(words), out64)
    return out


def window_count(packed, height: int, width: int, start: int, stop: int, out=None, first_index: int = 0):
    """Spike counts (H, W) uint16 over one window ``[start, stop)``; see :func:`window_counts`."""
    if out is not None:
        check_out(out, (height, width), np.uint16)
        out = out.reshape(1, height, width)
    return window_counts(packed, height, width, [start], [stop], out=out, first_index=first_index)[0]


class SpikeAccumulator:
    """Counts over fixed windows from frames that arrive block by block.

    ``push(first_index, block)`` adds the frames of a block (canonical packed, frame ``i`` of the block has
    index ``first_index + i``) to every window they fall in; frames outside all windows are ignored. Blocks
    must come in increasing index order without overlap; a gap leaves the windows it touches incomplete.
    Once ``complete[m]``, ``counts()[m]`` equals ``window_counts`` over the same frames exactly.
    """

    def __init__(self, height: int, width: int, starts, stops):
        nbytes = packed_frame_bytes(height, width)
        starts = np.atleast_1d(np.asarray(starts))
        if starts.size and np.issubdtype(starts.dtype, np.number) and starts.min() < 0:
            raise ConfigError(f"window starts must be frame indices >= 0, got {starts.min()}")
        # the data is unbounded here: the windows are only checked for type, order and length
        self.starts, self.stops = check_windows(starts, stops, np.iinfo(np.int64).max)
        self.height, self.width = height, width
        planes, self._carry, self._lanes = _scratch(as_words(np.empty((0, nbytes), dtype=np.uint8)))
        self._planes = np.zeros((self.starts.size,) + planes.shape, dtype=planes.dtype)  # one set per window
        self._frames_seen = np.zeros(self.starts.size, dtype=np.int64)
        self._next_index = 0

    @property
    def next_index(self) -> int:
        """The lowest frame index the next block may start at."""
        return self._next_index

    @property
    def frames_seen(self) -> np.ndarray:
        """(M,) frames added to each window so far."""
        return self._frames_seen.copy()

    @property
    def complete(self) -> np.ndarray:
        """(M,) bool: every frame of the window has been pushed."""
        return self._frames_seen == self.stops - self.starts

    def push(self, first_index: int, packed_block) -> None:
        block = as_packed(packed_block, self.height, self.width)
        first_index = int(first_index)
        if first_index < self._next_index:
            raise ConfigError(
                f"block starting at frame {first_index} overlaps frames already pushed (next expected frame: "
                f"{self._next_index}); push blocks in increasing order, each frame once"
            )
        if block.shape[0] == 0:
            return
        _push_kernel(as_words(block), first_index, self.starts, self.stops, self._planes, self._carry,
                     self._frames_seen)
        self._next_index = first_index + block.shape[0]

    def counts(self, out=None) -> np.ndarray:
        """(M, H, W) uint16 counts so far (partial for windows not yet complete)."""
        n_windows = self.starts.size
        out = check_out(out, (n_windows, self.height, self.width), np.uint16)
        out64 = out.reshape(n_windows, self.height * self.width).view(np.uint64)
        for m in range(n_windows):
            n_planes = int(self.stops[m] - self.starts[m]).bit_length()
            _planes_to_counts(self._planes[m], n_planes, out64[m], self._lanes)
        return out
