"""Window accumulation (batch and streaming) against a slow numpy twin."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikereveal.errors import ConfigError
from spikereveal.kernels import MAX_WINDOW_FRAMES, SpikeAccumulator, pack_frames, window_count, window_counts
from twins import reference_counts

# (H, W): H*W/8 bytes per frame = 12500 (250x400: 1562 words + 4 tail bytes), 3 (tail only), 9, 15, 35,
# 64 (whole words, no tail), 1, and a non-square one whose H*W is not a multiple of 64
GEOMETRIES = [(250, 400), (3, 8), (8, 9), (5, 24), (7, 40), (16, 32), (1, 8), (13, 56)]


def random_bits(rng, frames, height, width, density=0.3):
    return (rng.random((frames, height, width)) < density).astype(np.uint8)


def interesting_windows(rng, frames):
    """Empty, whole, edge, single-frame and group-boundary (16 frames per tree) windows, plus random ones."""
    windows = [(0, 0), (frames, frames), (0, frames), (frames - 1, frames), (0, 1)]
    for length in (2, 3, 4, 7, 8, 12, 13, 15, 16, 17, 18, 19, 31, 32, 33, 50):
        if length <= frames:
            start = int(rng.integers(0, frames - length + 1))
            windows.append((start, start + length))
    for _ in range(5):
        a, b = sorted(rng.integers(0, frames + 1, size=2))
        windows.append((int(a), int(b)))
    starts, stops = zip(*windows)
    return np.array(starts), np.array(stops)


@pytest.mark.parametrize("height,width", GEOMETRIES)
def test_window_counts_match_numpy_twin(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    frames = 70
    bits = random_bits(rng, frames, height, width)
    starts, stops = interesting_windows(rng, frames)
    counts = window_counts(pack_frames(bits), height, width, starts, stops)
    assert counts.dtype == np.uint16 and counts.shape == (starts.size, height, width)
    np.testing.assert_array_equal(counts, reference_counts(bits, starts, stops))


@pytest.mark.parametrize("height,width", [(250, 400), (3, 8), (5, 24)])
def test_single_frame_input(height, width):
    bits = random_bits(np.random.default_rng(1), 1, height, width, density=0.5)
    packed = pack_frames(bits)
    np.testing.assert_array_equal(window_count(packed, height, width, 0, 1), bits[0])
    np.testing.assert_array_equal(window_count(packed, height, width, 1, 1), np.zeros((height, width)))


def test_dense_frames_fill_every_bit_plane():
    # all-ones frames: the count of a window equals its length, up to the uint16 maximum
    height, width = 2, 36  # 9 bytes: one 64-bit word and a tail byte
    packed = np.full((MAX_WINDOW_FRAMES, height * width // 8), 255, dtype=np.uint8)
    lengths = np.array([MAX_WINDOW_FRAMES, 4095, 4096, 257, 256, 255, 17, 3])
    counts = window_counts(packed, height, width, np.zeros_like(lengths), lengths)
    np.testing.assert_array_equal(counts, np.broadcast_to(lengths[:, None, None], counts.shape))


def test_first_index_shifts_window_indices():
    rng = np.random.default_rng(2)
    bits = random_bits(rng, 40, 5, 24)
    packed = pack_frames(bits)
    counts = window_counts(packed, 5, 24, [1000, 1010], [1040, 1013], first_index=1000)
    np.testing.assert_array_equal(counts, reference_counts(bits, [0, 10], [40, 13]))
    with pytest.raises(ConfigError, match="outside"):
        window_count(packed, 5, 24, 999, 1005, first_index=1000)


def test_window_count_single_and_out_buffers():
    rng = np.random.default_rng(3)
    bits = random_bits(rng, 30, 8, 9)
    packed = pack_frames(bits)
    out = np.full((8, 9), 7, dtype=np.uint16)
    result = window_count(packed, 8, 9, 4, 21, out=out)
    assert np.shares_memory(result, out)
    np.testing.assert_array_equal(out, bits[4:21].sum(axis=0))

    many = np.full((2, 8, 9), 9, dtype=np.uint16)
    assert window_counts(packed, 8, 9, [0, 5], [30, 5], out=many) is many
    np.testing.assert_array_equal(many, reference_counts(bits, [0, 5], [30, 5]))


@pytest.mark.parametrize(
    "out",
    [
        np.zeros((2, 8, 9), dtype=np.uint32),  # wrong dtype
        np.zeros((1, 8, 9), dtype=np.uint16),  # wrong shape
        np.zeros((2, 8, 18), dtype=np.uint16)[:, :, ::2],  # not contiguous
        [[0]],  # not an array
    ],
)
def test_bad_out_buffers_are_refused(out):
    packed = pack_frames(np.zeros((4, 8, 9), dtype=np.uint8))
    with pytest.raises(ConfigError, match="out"):
        window_counts(packed, 8, 9, [0, 1], [4, 2], out=out)


@pytest.mark.parametrize(
    "start,stop,message",
    [(-1, 3, "outside"), (2, 11, "outside"), (5, 4, "ends before"), (0, MAX_WINDOW_FRAMES + 1, "65535")],
)
def test_bad_windows_are_refused(start, stop, message):
    packed = pack_frames(np.zeros((10, 3, 8), dtype=np.uint8))
    with pytest.raises(ConfigError, match=message):
        window_count(packed, 3, 8, start, stop)


def test_window_argument_errors():
    packed = pack_frames(np.zeros((10, 3, 8), dtype=np.uint8))
    with pytest.raises(ConfigError, match="same length"):
        window_counts(packed, 3, 8, [0, 1], [2])
    with pytest.raises(ConfigError, match="integer"):
        window_counts(packed, 3, 8, [0.5], [2.0])
    with pytest.raises(ConfigError, match="shape"):
        window_counts(packed[:, :2], 3, 8, [0], [2])
    assert window_counts(packed, 3, 8, [], []).shape == (0, 3, 8)


def test_unaligned_readonly_and_strided_inputs():
    rng = np.random.default_rng(4)
    bits = random_bits(rng, 20, 250, 400)
    packed = pack_frames(bits)
    shifted = np.empty((20 * 12500 + 3,), dtype=np.uint8)[3:].reshape(20, 12500)  # not 8-byte aligned
    shifted[...] = packed
    shifted.flags.writeable = False
    np.testing.assert_array_equal(window_count(shifted, 250, 400, 2, 19), bits[2:19].sum(axis=0))
    every_other = packed[::2]  # not C-contiguous
    np.testing.assert_array_equal(window_count(every_other, 250, 400, 0, 10), bits[::2].sum(axis=0))


def stream_in_blocks(packed, height, width, starts, stops, block_sizes, first_index=0):
    accumulator = SpikeAccumulator(height, width, starts, stops)
    position = 0
    for size in block_sizes:
        accumulator.push(first_index + position, packed[position : position + size])
        position += size
    return accumulator


@pytest.mark.parametrize("height,width", [(250, 400), (8, 9), (16, 32), (3, 8)])
def test_streaming_equals_batch_for_seeded_random_splits(height, width):
    rng = np.random.default_rng(height + width)
    frames = 90
    bits = random_bits(rng, frames, height, width)
    packed = pack_frames(bits)
    # overlapping windows, with frames before the first and after the last window
    starts = np.array([5, 10, 10, 40, 60, 70])
    stops = np.array([80, 30, 11, 75, 60, 86])
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, frames), size=int(rng.integers(1, 12)), replace=False))
        sizes = np.diff(np.concatenate([[0], cuts, [frames]]))
        accumulator = stream_in_blocks(packed, height, width, starts + 100, stops + 100, sizes, first_index=100)
        batch = window_counts(packed, height, width, starts + 100, stops + 100, first_index=100)
        assert accumulator.complete.all()
        np.testing.assert_array_equal(accumulator.counts(), batch)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    frames=st.integers(1, 60),
    geometry=st.sampled_from([(8, 9), (5, 24), (16, 32)]),
)
def test_streaming_equals_batch_for_any_blocks(data, frames, geometry):
    height, width = geometry
    seed = data.draw(st.integers(0, 2**32 - 1))
    bits = random_bits(np.random.default_rng(seed), frames, height, width)
    packed = pack_frames(bits)
    bounds = data.draw(
        st.lists(st.tuples(st.integers(0, frames), st.integers(0, frames)).map(sorted), min_size=1, max_size=5)
    )
    starts, stops = (np.array(column) for column in zip(*bounds))
    sizes = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=frames))
    sizes = [s for s in np.diff(np.minimum(np.cumsum([0] + sizes), frames)) if s] or [frames]
    if sum(sizes) < frames:
        sizes.append(frames - sum(sizes))
    accumulator = stream_in_blocks(packed, height, width, starts, stops, sizes)
    assert accumulator.complete.all()
    np.testing.assert_array_equal(accumulator.counts(), reference_counts(bits, starts, stops))


def test_streaming_progress_gaps_and_order():
    rng = np.random.default_rng(5)
    bits = random_bits(rng, 40, 8, 9)
    packed = pack_frames(bits)
    accumulator = SpikeAccumulator(8, 9, [0, 20], [20, 40])
    accumulator.push(0, packed[:10])
    np.testing.assert_array_equal(accumulator.frames_seen, [10, 0])
    np.testing.assert_array_equal(accumulator.complete, [False, False])
    np.testing.assert_array_equal(accumulator.counts()[0], bits[:10].sum(axis=0))  # partial counts
    with pytest.raises(ConfigError, match="overlaps"):
        accumulator.push(5, packed[5:15])
    accumulator.push(10, packed[10:25])
    accumulator.push(30, packed[30:40])  # frames 25..29 lost: the second window stays incomplete
    assert accumulator.next_index == 40
    np.testing.assert_array_equal(accumulator.complete, [True, False])
    np.testing.assert_array_equal(accumulator.counts()[0], bits[:20].sum(axis=0))
    accumulator.push(40, packed[:0])  # an empty block changes nothing
    assert accumulator.next_index == 40


def test_accumulator_validates_windows_and_out():
    with pytest.raises(ConfigError, match="ends before"):
        SpikeAccumulator(8, 9, [5], [4])
    with pytest.raises(ConfigError, match=">= 0"):
        SpikeAccumulator(8, 9, [-1], [4])
    with pytest.raises(ConfigError, match="multiple of 8"):
        SpikeAccumulator(3, 3, [0], [4])
    accumulator = SpikeAccumulator(8, 9, [0], [4])
    accumulator.push(0, pack_frames(np.ones((4, 8, 9), dtype=np.uint8)))
    out = np.zeros((1, 8, 9), dtype=np.uint16)
    assert accumulator.counts(out=out) is out and (out == 4).all()
    with pytest.raises(ConfigError, match="out"):
        accumulator.counts(out=np.zeros((8, 9), dtype=np.uint16))
