"""LDN input extraction against a slow numpy twin."""

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels import LDN_SPIKE_WINDOW, extract_ldn_input, pack_frames
from spikereveal.kernels.extract import SPIKE_LEVEL
from twins import reference_ldn_input


def random_bits(seed, frames, height, width):
    return (np.random.default_rng(seed).random((frames, height, width)) < 0.4).astype(np.uint8)


@pytest.mark.parametrize("height,width", [(250, 400), (8, 9), (13, 56), (3, 8), (1, 8)])
def test_matches_numpy_twin(height, width):
    frames = 60
    bits = random_bits(height + width, frames, height, width)
    half = LDN_SPIKE_WINDOW // 2
    centers = np.array([half, frames - half - 1, 30, 31, 30])  # both data edges, repeats, neighbours
    result = extract_ldn_input(pack_frames(bits), height, width, centers)
    assert result.dtype == np.float32 and result.shape == (5, LDN_SPIKE_WINDOW, height, width)
    np.testing.assert_array_equal(result, reference_ldn_input(bits, centers, LDN_SPIKE_WINDOW))


@pytest.mark.parametrize("height,width", [(250, 400), (13, 56), (1, 8)])
def test_uint8_levels_match_the_twin(height, width):
    bits = random_bits(7 * height + width, 40, height, width)
    centers = np.array([10, 29, 20])
    result = extract_ldn_input(pack_frames(bits), height, width, centers, dtype=np.uint8)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, reference_ldn_input(bits, centers, 21) * SPIKE_LEVEL)
    out = np.full(result.shape, 7, np.uint8)
    assert extract_ldn_input(pack_frames(bits), height, width, centers, out=out) is out
    np.testing.assert_array_equal(out, result)


def test_unknown_dtype_is_refused():
    with pytest.raises(ConfigError, match="dtype must be float32"):
        extract_ldn_input(pack_frames(random_bits(1, 30, 8, 8)), 8, 8, [15], dtype=np.int16)


@pytest.mark.parametrize("window", [1, 3, 9])
def test_other_windows_and_first_index(window):
    bits = random_bits(window, 25, 5, 24)
    centers = [500 + window // 2, 512, 524 - window // 2]
    result = extract_ldn_input(pack_frames(bits), 5, 24, centers, window=window, first_index=500)
    np.testing.assert_array_equal(result, reference_ldn_input(bits, centers, window, first_index=500))


def test_single_frame_input():
    bits = random_bits(1, 1, 7, 40)
    result = extract_ldn_input(pack_frames(bits), 7, 40, [0], window=1)
    np.testing.assert_array_equal(result[0, 0], bits[0])


def test_writes_into_caller_buffer():
    bits = random_bits(2, 30, 8, 9)
    out = np.full((2, 21, 8, 9), 5.0, dtype=np.float32)
    result = extract_ldn_input(pack_frames(bits), 8, 9, [10, 19], out=out)
    assert result is out
    np.testing.assert_array_equal(out, reference_ldn_input(bits, [10, 19], 21))


@pytest.mark.parametrize("dtype,offset", [(np.uint8, 1), (np.uint8, 3), (np.float32, 4), (np.uint8, 8), (np.float32, 8)])
def test_buffers_off_the_word_alignment_match_the_twin(dtype, offset):
    """The word kernels need an 8-byte aligned out; any other buffer takes the element-wise path."""
    bits = random_bits(offset, 40, 13, 56)
    centers = [10, 29]
    shape = (2, 21, 13, 56)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.full(nbytes + 16, 7, np.uint8)
    start = (-raw.ctypes.data) % 8 + offset  # exactly ``offset`` bytes past an 8-byte boundary
    out = raw[start : start + nbytes].view(dtype).reshape(shape)
    assert out.ctypes.data % 8 == offset % 8
    extract_ldn_input(pack_frames(bits), 13, 56, centers, out=out)
    level = SPIKE_LEVEL if dtype == np.uint8 else 1
    np.testing.assert_array_equal(out, reference_ldn_input(bits, centers, 21) * level)
    assert (raw[:start] == 7).all() and (raw[start + nbytes :] == 7).all()  # nothing written outside


def test_read_only_packed_frames_match_the_twin():
    """Decoded wire messages are read-only views (numba compiles them apart)."""
    bits = random_bits(11, 40, 8, 9)
    packed = pack_frames(bits)
    packed.flags.writeable = False
    for dtype, level in ((np.uint8, SPIKE_LEVEL), (np.float32, 1)):
        result = extract_ldn_input(packed, 8, 9, [10, 29], dtype=dtype)
        np.testing.assert_array_equal(result, reference_ldn_input(bits, [10, 29], 21) * level)


def test_no_centres_give_an_empty_batch():
    packed = pack_frames(random_bits(3, 30, 8, 9))
    assert extract_ldn_input(packed, 8, 9, np.array([], dtype=np.int64)).shape == (0, 21, 8, 9)


@pytest.mark.parametrize(
    "out",
    [
        np.zeros((2, 21, 8, 9), dtype=np.float64),
        np.zeros((2, 21, 9, 8), dtype=np.float32),
        np.zeros((2, 21, 8, 18), dtype=np.float32)[..., ::2],
        np.zeros((2, 21, 8, 9), dtype=np.float32, order="F"),
    ],
)
def test_bad_buffers_are_refused(out):
    packed = pack_frames(random_bits(4, 30, 8, 9))
    with pytest.raises(ConfigError, match="out"):
        extract_ldn_input(packed, 8, 9, [10, 19], out=out)


def test_read_only_buffer_is_refused():
    out = np.zeros((1, 21, 8, 9), dtype=np.float32)
    out.flags.writeable = False
    with pytest.raises(ConfigError, match="writeable"):
        extract_ldn_input(pack_frames(random_bits(5, 30, 8, 9)), 8, 9, [10], out=out)


@pytest.mark.parametrize("center", [9, 20, -3, 100])
def test_window_leaving_the_data_is_refused(center):
    packed = pack_frames(random_bits(6, 30, 8, 9))  # valid centres: 10 .. 19
    with pytest.raises(ConfigError, match="margin"):
        extract_ldn_input(packed, 8, 9, [15, center])


@pytest.mark.parametrize("window", [0, 2, 20, -1, 2.0, True])
def test_bad_window_sizes_are_refused(window):
    packed = pack_frames(random_bits(7, 30, 8, 9))
    with pytest.raises(ConfigError, match="odd"):
        extract_ldn_input(packed, 8, 9, [15], window=window)


def test_non_integer_centres_are_refused():
    packed = pack_frames(random_bits(8, 30, 8, 9))
    with pytest.raises(ConfigError, match="integer"):
        extract_ldn_input(packed, 8, 9, [15.0])
