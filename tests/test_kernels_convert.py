"""Planar float <-> interleaved uint8 BGR kernels against slow numpy twins (the arithmetic they replace)."""

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels import bgr8_to_planar, planar_to_bgr8
from twins import reference_bgr8, reference_planar


def random_images(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-0.3, 1.3, shape).astype(dtype)


def rounding_edges(dtype=np.float32) -> np.ndarray:
    """Values a few ulps either side of every rounding boundary (k + 0.5) / 255, and of 0 and 1."""
    boundaries = ((np.arange(256) + 0.5) / 255).astype(dtype)
    values = [boundaries]
    for direction in (np.inf, -np.inf):
        step = boundaries
        for _ in range(4):
            step = np.nextafter(step, dtype(direction))
            values.append(step)
    specials = [0.0, -0.0, 1.0, np.nextafter(dtype(1), dtype(0)), np.nextafter(dtype(1), dtype(2)),
                np.finfo(dtype).tiny, -np.finfo(dtype).tiny, np.finfo(dtype).smallest_subnormal]
    values.append(np.array(specials, dtype))
    return np.concatenate(values)


@pytest.mark.parametrize("shape", [(7, 3, 16, 32), (2, 3, 5, 7), (1, 3, 1, 6), (3, 3, 13, 4), (1, 3, 9, 1)])
def test_matches_numpy_twin_on_random_images(shape):
    images = random_images(sum(shape), shape)
    result = planar_to_bgr8(images)
    assert result.dtype == np.uint8 and result.shape == (shape[0], shape[2], shape[3], 3)
    np.testing.assert_array_equal(result, reference_bgr8(images))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [4, 5])  # the word kernel (width % 4 == 0) and the byte kernel
def test_rounding_boundaries_are_bit_identical(dtype, width):
    values = rounding_edges(dtype)
    pad = (-values.size) % (3 * width)
    values = np.concatenate([values, np.zeros(pad, dtype)])
    images = values.reshape(-1, 3, 1, width)
    np.testing.assert_array_equal(planar_to_bgr8(images), reference_bgr8(images))
    # every channel carries every value at some position: rotate the channels and check again
    rotated = np.ascontiguousarray(np.roll(images, 1, axis=1))
    np.testing.assert_array_equal(planar_to_bgr8(rotated), reference_bgr8(rotated))


@pytest.mark.parametrize("width", [8, 7])
def test_nan_is_zero_and_infinities_clip(width):
    images = random_images(3, (2, 3, 5, width))
    images[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    images[1, 2, 4, -2:] = [-np.nan, 1e30]
    result = planar_to_bgr8(images)
    assert result[0, 0, :3, 0].tolist() == [0, 255, 0]
    assert result[1, 4, -2:, 2].tolist() == [0, 255]
    np.testing.assert_array_equal(result, reference_bgr8(images))


def test_half_and_strided_inputs():
    images = random_images(5, (2, 3, 12, 16))
    half = images.astype(np.float16)
    np.testing.assert_array_equal(planar_to_bgr8(half), reference_bgr8(half.astype(np.float32)))
    strided = images[:, :, ::2, ::2]  # not contiguous: width 8 takes the word kernel through strides
    np.testing.assert_array_equal(planar_to_bgr8(strided), reference_bgr8(strided))
    reversed_channels = images[:, ::-1]
    np.testing.assert_array_equal(planar_to_bgr8(reversed_channels), reference_bgr8(reversed_channels))


def test_writes_into_out_including_an_unaligned_one():
    images = random_images(9, (2, 3, 6, 8))
    out = np.full((2, 6, 8, 3), 7, np.uint8)
    assert planar_to_bgr8(images, out) is out
    np.testing.assert_array_equal(out, reference_bgr8(images))
    storage = np.zeros(out.nbytes + 1, np.uint8)
    unaligned = storage[1:].reshape(out.shape)  # an address not a multiple of 4: the byte kernel
    assert unaligned.ctypes.data % 4 and planar_to_bgr8(images, unaligned) is unaligned
    np.testing.assert_array_equal(unaligned, reference_bgr8(images))
    assert storage[0] == 0


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 8), (2, 3, 3, 0)])
def test_empty_images(shape):
    result = planar_to_bgr8(np.zeros(shape, np.float32))
    assert result.shape == (shape[0], shape[2], shape[3], 3)


@pytest.mark.parametrize("images,out", [
    (np.zeros((1, 4, 2, 4), np.float32), None),  # four channels
    (np.zeros((3, 2, 4), np.float32), None),  # no batch axis
    (np.zeros((1, 3, 2, 4), np.int32), None),
    ([[[[0.5]]]], None),
    (np.zeros((1, 3, 2, 4), np.float32), np.zeros((1, 2, 4, 3), np.float32)),
    (np.zeros((1, 3, 2, 4), np.float32), np.zeros((1, 4, 2, 3), np.uint8)),
    (np.zeros((1, 3, 2, 4), np.float32), np.zeros((1, 2, 8, 3), np.uint8)[:, :, ::2]),
])
def test_bad_arguments_raise_config_errors(images, out):
    with pytest.raises(ConfigError):
        planar_to_bgr8(images, out)


# -- uint8 interleaved -> float planar, repeated -------------------------------------------------------------
def test_every_byte_converts_like_numpy_division():
    image = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    image[..., 1] = image[..., 1][::-1]
    np.testing.assert_array_equal(bgr8_to_planar(image, 2), reference_planar(image, 2))


@pytest.mark.parametrize("shape,copies", [((16, 24, 3), 7), ((5, 7, 3), 1), ((1, 1, 3), 3), ((9, 4, 3), 2)])
def test_planar_matches_numpy_twin(shape, copies):
    image = np.random.default_rng(copies).integers(0, 256, shape, dtype=np.uint8)
    result = bgr8_to_planar(image, copies)
    assert result.dtype == np.float32 and result.shape == (copies, 3, shape[0], shape[1])
    np.testing.assert_array_equal(result, reference_planar(image, copies))


def test_planar_out_sets_the_copies_and_strided_images_work():
    image = np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    out = np.full((4, 3, 5, 7), -1.0, np.float32)
    strided = image[::2, ::2]
    assert bgr8_to_planar(strided, out=out) is out
    np.testing.assert_array_equal(out, reference_planar(strided, 4))
    np.testing.assert_array_equal(bgr8_to_planar(image[..., ::-1], 1), reference_planar(image[..., ::-1], 1))


def test_planar_empty_image():
    assert bgr8_to_planar(np.zeros((0, 5, 3), np.uint8), 2).shape == (2, 3, 0, 5)


@pytest.mark.parametrize("image,copies,out", [
    (np.zeros((4, 4, 3), np.float32), 1, None),
    (np.zeros((4, 4, 4), np.uint8), 1, None),
    (np.zeros((4, 4), np.uint8), 1, None),
    (np.zeros((4, 4, 3), np.uint8), 0, None),
    (np.zeros((4, 4, 3), np.uint8), True, None),
    (np.zeros((4, 4, 3), np.uint8), 1, np.zeros((1, 3, 4, 5), np.float32)),
    (np.zeros((4, 4, 3), np.uint8), 1, np.zeros((1, 3, 4, 4), np.float64)),
    (np.zeros((4, 4, 3), np.uint8), 1, np.zeros((0, 3, 4, 4), np.float32)),
    (np.zeros((4, 4, 3), np.uint8), 1, np.zeros((1, 3, 4, 8), np.float32)[..., ::2]),
])
def test_planar_bad_arguments_raise_config_errors(image, copies, out):
    with pytest.raises(ConfigError):
        bgr8_to_planar(image, copies, out)
