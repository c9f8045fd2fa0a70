"""TFP, TFI, SDM, nearest upsampling and re-blur against slow numpy twins."""

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels import (
    pack_frames,
    reblur,
    sdm,
    tfi,
    tfp,
    tfp_range,
    tfp_stack,
    upsample_nearest,
)
from twins import reference_sdm, reference_tfi, reference_upsample


def random_bits(seed, frames, height, width, density=0.3):
    return (np.random.default_rng(seed).random((frames, height, width)) < density).astype(np.uint8)


@pytest.mark.parametrize("height,width", [(250, 400), (8, 9), (13, 56)])
@pytest.mark.parametrize("window", [1, 9, 41])
def test_tfp_matches_twin(height, width, window):
    bits = random_bits(window + height, 50, height, width)
    packed = pack_frames(bits)
    half = window // 2
    for center in (half, 49 - half, 25):
        expected = bits[center - half : center + half + 1].mean(axis=0)
        result = tfp(packed, height, width, center, window)
        assert result.dtype == np.float32
        np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_tfp_stack_and_first_index():
    bits = random_bits(1, 40, 5, 24)
    packed = pack_frames(bits)
    centers = np.array([104, 120, 135])
    stack = tfp_stack(packed, 5, 24, centers, 9, first_index=100)
    assert stack.shape == (3, 5, 24) and stack.dtype == np.float32
    for image, center in zip(stack, centers - 100):
        np.testing.assert_allclose(image, bits[center - 4 : center + 5].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(tfp(packed, 5, 24, 120, 9, 100), stack[1])


@pytest.mark.parametrize("window", [0, 2, 8, -3])
def test_tfp_refuses_even_or_empty_windows(window):
    packed = pack_frames(random_bits(2, 20, 8, 9))
    with pytest.raises(ConfigError, match="odd"):
        tfp(packed, 8, 9, 10, window)


def test_tfp_refuses_windows_outside_the_data():
    packed = pack_frames(random_bits(3, 20, 8, 9))
    with pytest.raises(ConfigError, match="margin"):
        tfp(packed, 8, 9, 3, 9)
    with pytest.raises(ConfigError, match="margin"):
        tfp(packed, 8, 9, 16, 9)


def test_tfp_range_matches_twin():
    bits = random_bits(4, 60, 250, 400)
    packed = pack_frames(bits)
    for start, stop in ((0, 60), (10, 11), (7, 50)):
        np.testing.assert_allclose(tfp_range(packed, 250, 400, start, stop), bits[start:stop].mean(0), rtol=1e-6)
    np.testing.assert_allclose(tfp_range(packed, 250, 400, 1010, 1050, 1000), bits[10:50].mean(0), rtol=1e-6)
    with pytest.raises(ConfigError, match="empty"):
        tfp_range(packed, 250, 400, 5, 5)


@pytest.mark.parametrize("height,width", [(8, 9), (13, 56), (250, 400)])
def test_tfi_matches_twin(height, width):
    bits = random_bits(height * width, 30, height, width, density=0.15)
    bits[:, 0, 0] = 0  # a pixel that never fires
    bits[:, 0, 1] = 0
    bits[3, 0, 1] = 1  # a pixel that fires only before the centre
    packed = pack_frames(bits)
    for center in (0, 12, 29):  # first frame, middle, last frame (nothing after it: all 0)
        result = tfi(packed, height, width, center)
        assert result.dtype == np.float32 and result.shape == (height, width)
        np.testing.assert_allclose(result, reference_tfi(bits, center), rtol=1e-6)
    assert tfi(packed, height, width, 12)[0, 0] == 0 and tfi(packed, height, width, 12)[0, 1] == 0


def test_tfi_of_a_regular_pixel_is_its_rate():
    bits = np.zeros((20, 1, 8), dtype=np.uint8)
    bits[::4, 0, 0] = 1  # spikes every 4 frames
    bits[:, 0, 1] = 1  # spikes every frame
    bits[10, 0, 2] = bits[11, 0, 2] = 1  # a spike exactly at the centre and the next frame
    image = tfi(pack_frames(bits), 1, 8, 10, first_index=0)
    np.testing.assert_allclose(image[0, :3], [0.25, 1.0, 1.0])
    np.testing.assert_array_equal(tfi(pack_frames(bits), 1, 8, 1010, first_index=1000), image)


def test_tfi_refuses_a_centre_outside_the_data():
    packed = pack_frames(random_bits(5, 10, 8, 9))
    with pytest.raises(ConfigError, match="outside"):
        tfi(packed, 8, 9, 10)
    with pytest.raises(ConfigError, match="outside"):
        tfi(packed, 8, 9, 4, first_index=5)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_upsample_nearest_matches_twin(factor):
    image = np.random.default_rng(factor).random((2, 3, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(upsample_nearest(image, factor), reference_upsample(image, factor))
    np.testing.assert_array_equal(upsample_nearest(image[0, 0], factor), reference_upsample(image[0, 0], factor))


@pytest.mark.parametrize("factor", [0, -2, 1.5, True])
def test_upsample_refuses_bad_factors(factor):
    with pytest.raises(ConfigError, match="factor"):
        upsample_nearest(np.zeros((2, 2)), factor)
    with pytest.raises(ConfigError, match="2 dimensions"):
        upsample_nearest(np.zeros(4))


def sdm_inputs(seed, k=None, height=5, width=7):
    rng = np.random.default_rng(seed)
    blur = rng.random((3, 4 * height, 4 * width)).astype(np.float32)
    long = rng.integers(0, 5, (height, width)).astype(np.float32) / 4  # exact zeros included
    shape = (height, width) if k is None else (k, height, width)
    short = rng.integers(0, 9, shape).astype(np.float32) / 8
    return blur, short, long


def test_sdm_matches_twin_and_division_rule():
    blur, short, long = sdm_inputs(0)
    assert (long == 0).any() and (short / np.where(long == 0, 1, long) * blur.max() > 1).any()
    result = sdm(blur, short, long)
    assert result.dtype == np.float32 and result.shape == blur.shape
    np.testing.assert_allclose(result, reference_sdm(blur, short, long), rtol=1e-6, atol=1e-7)
    zero = upsample_nearest(long == 0, 4)
    assert (result[:, zero] == 0).all()  # zero denominator -> 0, not inf or nan
    assert result.min() >= 0 and result.max() <= 1


def test_sdm_with_k_short_tfps():
    blur, short, long = sdm_inputs(1, k=4, height=6, width=3)
    result = sdm(blur, short, long)
    assert result.shape == (4, 3, 24, 12)
    np.testing.assert_allclose(result, reference_sdm(blur, short, long), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(result[2], sdm(blur, short[2], long))


def test_sdm_refuses_mismatched_shapes():
    blur, short, long = sdm_inputs(2)
    with pytest.raises(ConfigError, match="4x"):
        sdm(blur[:, :-4], short, long)
    with pytest.raises(ConfigError, match=r"\(3, H, W\)"):
        sdm(blur[:2], short, long)
    with pytest.raises(ConfigError, match="tfp_short"):
        sdm(blur, short[:-1], long)
    with pytest.raises(ConfigError, match="tfp_long"):
        sdm(blur, short, long[None])


def test_reblur_is_the_mean_of_the_sequence():
    sequence = np.random.default_rng(3).random((7, 3, 8, 12)).astype(np.float32)
    result = reblur(sequence)
    assert result.dtype == np.float32 and result.shape == (3, 8, 12)
    np.testing.assert_allclose(result, sum(sequence[i].astype(np.float64) for i in range(7)) / 7, rtol=1e-6)
    np.testing.assert_array_equal(reblur(sequence[:1]), sequence[0])
    with pytest.raises(ConfigError, match="K >= 1"):
        reblur(sequence[0])
