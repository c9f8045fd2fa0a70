"""The time model (spikereveal.kernels.timing) and bit packing (spikereveal.kernels.packing)."""

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels import (
    DEFAULT_K,
    DEFAULT_MARGIN_FRAMES,
    LDN_SPIKE_WINDOW,
    as_packed,
    exposure_window,
    frame_period_ns,
    from_canonical,
    index_to_time,
    output_timestamps,
    pack_frames,
    packed_frame_bytes,
    time_to_index,
    to_canonical,
    unpack_frames,
)

# ---- timing ----


def test_constants_follow_the_spec():
    assert LDN_SPIKE_WINDOW == 21 and DEFAULT_MARGIN_FRAMES == 10 and DEFAULT_K == 7


@pytest.mark.parametrize("rate_hz", [20_000.0, 40_000.0, 1920.0, 3.0])
def test_index_time_round_trip(rate_hz):
    t0 = 1_700_000_000_123_456_789
    indices = np.arange(-5, 2000, 7)
    times = index_to_time(indices, t0, rate_hz)
    assert times.dtype == np.int64
    np.testing.assert_array_equal(time_to_index(times, t0, rate_hz), indices)
    # within half a period of a frame's time, the nearest frame is that frame
    period = frame_period_ns(rate_hz)
    np.testing.assert_array_equal(time_to_index(times + int(period * 0.49), t0, rate_hz), indices)
    np.testing.assert_array_equal(time_to_index(times - int(period * 0.49), t0, rate_hz), indices)


def test_time_to_index_rounds_to_nearest_with_ties_up():
    # 20 kHz: 50 000 ns per frame
    assert time_to_index(24_999, 0, 20_000) == 0
    assert time_to_index(25_000, 0, 20_000) == 1
    assert time_to_index(-25_001, 0, 20_000) == -1
    assert isinstance(time_to_index(10, 0, 20_000), np.int64)
    assert index_to_time(3, 1000, 20_000) == 151_000


@pytest.mark.parametrize("rate_hz", [0, -1, float("nan"), float("inf")])
def test_bad_rates_are_refused(rate_hz):
    with pytest.raises(ConfigError, match="rate"):
        time_to_index(0, 0, rate_hz)
    with pytest.raises(ConfigError, match="rate"):
        index_to_time(0, 0, rate_hz)


def test_output_timestamps_span_the_exposure():
    times = output_timestamps(1_000, 15_000_000, 7)
    assert times.dtype == np.int64 and times.shape == (7,)
    assert times[0] == 1_000 and times[-1] == 15_001_000
    assert (np.diff(times) > 0).all() and np.ptp(np.diff(times)) <= 1
    np.testing.assert_array_equal(output_timestamps(100, 50, 1), [125])
    np.testing.assert_array_equal(output_timestamps(100, 0, 3), [100, 100, 100])


def test_output_timestamps_refuse_bad_arguments():
    with pytest.raises(ConfigError, match=">= 1"):
        output_timestamps(0, 10, 0)
    with pytest.raises(ConfigError, match="duration"):
        output_timestamps(0, -1, 3)


def test_exposure_window_of_the_rsb_rig():
    # 20 kHz, 15 ms exposure starting at frame 1000: frames 1000..1300 inclusive
    rate, t0 = 20_000.0, 5_000
    start = int(index_to_time(1000, t0, rate))
    window = exposure_window(start, 15_000_000, t0, rate)
    assert (window.exposure_first, window.exposure_stop) == (1000, 1301)
    assert window.exposure_frames == 301
    assert (window.window_first, window.window_stop) == (990, 1311)
    assert window.centers[0] == 1000 and window.centers[-1] == 1300 and window.centers.size == DEFAULT_K
    np.testing.assert_array_equal(window.centers, time_to_index(window.timestamps_ns, t0, rate))
    # every LDN window around a centre lies inside the exposure window
    assert window.centers.min() - LDN_SPIKE_WINDOW // 2 >= window.window_first
    assert window.centers.max() + LDN_SPIKE_WINDOW // 2 < window.window_stop
    assert window.inside(1311) and not window.inside(1310)


def test_exposure_window_margin_and_edge():
    window = exposure_window(0, 1_000_000, 0, 20_000, k=3, margin_frames=20)
    assert window.window_first == -20 and not window.inside(10_000)
    with pytest.raises(ConfigError, match="margin"):
        exposure_window(0, 1_000_000, 0, 20_000, margin_frames=9)


# ---- packing ----


def test_canonical_bit_layout():
    # pixel k is bit k % 8 of byte k // 8, least significant bit first, row-major
    frames = np.zeros((1, 2, 8), dtype=np.uint8)
    frames[0, 0, 0] = 1  # pixel 0 -> byte 0 bit 0
    frames[0, 1, 2] = 1  # pixel 10 -> byte 1 bit 2
    packed = pack_frames(frames)
    np.testing.assert_array_equal(packed, [[0b00000001, 0b00000100]])


@pytest.mark.parametrize("height,width", [(250, 400), (3, 8), (5, 24), (1, 8), (8, 9)])
def test_pack_unpack_round_trip(height, width):
    frames = np.random.default_rng(height).integers(0, 2, (4, height, width)).astype(np.uint8)
    packed = pack_frames(frames)
    assert packed.dtype == np.uint8 and packed.shape == (4, packed_frame_bytes(height, width))
    np.testing.assert_array_equal(unpack_frames(packed, height, width), frames)
    np.testing.assert_array_equal(pack_frames(frames.astype(bool)), packed)


@pytest.mark.parametrize("height,width", [(4, 16), (5, 24), (8, 9), (3, 8)])  # whole-byte rows and not
@pytest.mark.parametrize("bit_order", ["little", "big"])
@pytest.mark.parametrize("flip_rows", [False, True])
def test_canonical_conversion_round_trip(height, width, bit_order, flip_rows):
    frames = np.random.default_rng(width).integers(0, 2, (3, height, width)).astype(np.uint8)
    canonical = pack_frames(frames)
    stored = from_canonical(canonical, height, width, bit_order, flip_rows)
    # the stored layout is what a file written that way holds
    expected_rows = frames[:, ::-1] if flip_rows else frames
    expected = np.packbits(expected_rows.reshape(3, -1), axis=1, bitorder=bit_order)
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_array_equal(to_canonical(stored, height, width, bit_order, flip_rows), canonical)


def test_canonical_input_is_not_copied():
    packed = pack_frames(np.zeros((2, 4, 8), dtype=np.uint8))
    assert to_canonical(packed, 4, 8) is packed


def test_as_packed_accepts_flat_frames_and_refuses_bad_ones():
    packed = pack_frames(np.ones((3, 4, 8), dtype=np.uint8))
    assert as_packed(packed.ravel(), 4, 8).shape == (3, 4)
    with pytest.raises(ConfigError, match="uint8"):
        as_packed(packed.astype(np.int16), 4, 8)
    with pytest.raises(ConfigError, match="shape"):
        as_packed(packed[:, :3], 4, 8)
    with pytest.raises(ConfigError, match="multiple of 8"):
        packed_frame_bytes(3, 3)
    with pytest.raises(ConfigError, match="positive"):
        packed_frame_bytes(0, 8)
    with pytest.raises(ConfigError, match="bit_order"):
        to_canonical(packed, 4, 8, bit_order="middle")
    with pytest.raises(ConfigError, match=r"\(N, H, W\)"):
        pack_frames(np.zeros((4, 8), dtype=np.uint8))
