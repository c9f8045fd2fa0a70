"""Photometric maps: hot pixels and dark rate from a dark recording, refusals, and applying the maps."""

import cv2
import numpy as np
import pytest

from calibration_support import dark_recording, truth
from spikereveal.calibration import CalibrationError, PhotometricCalibration, dark_maps
from spikereveal.calibration.fit import calibrate_dark
from spikereveal.errors import ConfigError
from spikereveal.recording import open_recording
from twins import reference_fill


def _hot_truth_mask(path, shape):
    mask = np.zeros(shape, bool)
    hot = np.asarray(truth(path)["hot_pixels"], dtype=int).reshape(-1, 2)
    mask[hot[:, 0], hot[:, 1]] = True
    return mask


def _found_and_false(found, true):
    return (found & true).sum() / max(true.sum(), 1), (found & ~true).sum() / (~true).sum()


def test_simulated_hot_pixels_are_found(tmp_path):
    path = dark_recording(tmp_path / "dark", hot_fraction=0.01, hot_rate=0.05)
    with open_recording(path) as recording:
        maps = calibrate_dark(recording)
        true = _hot_truth_mask(path, maps.shape)
    found, false = _found_and_false(maps.hot_mask, true)
    assert true.sum() >= 20
    assert found >= 0.99 and false <= 0.001, (found, false)
    assert maps.median_rate == pytest.approx(0.0071, rel=0.15)
    assert maps.frames == recording.spikes.frame_count


@pytest.mark.parametrize("seed", range(3))
def test_hot_pixel_statistics_on_many_pixels(seed):
    """200x300 binomial dark counts with per-pixel dark-current spread and 0.3 % hot pixels."""
    rng = np.random.default_rng(seed)
    shape, frames = (200, 300), 3000
    rate = np.clip(rng.normal(0.007, 0.001, shape), 0, 1)
    true = rng.random(shape) < 0.003
    rate[true] = rng.uniform(0.03, 0.5, true.sum())
    counts = rng.binomial(frames, rate)
    maps = dark_maps(counts, frames)
    found, false = _found_and_false(maps.hot_mask, true)
    assert found >= 0.99 and false <= 0.001, (found, false)
    # the shrunk per-pixel dark rate is closer to the truth than the raw measured rate
    raw_error = np.mean((counts[~true] / frames - rate[~true]) ** 2)
    assert np.mean((maps.dark_rate[~true] - rate[~true]) ** 2) < 0.8 * raw_error
    assert 0.0 < maps.details["shrink"] < 1.0


def test_a_recording_that_is_not_dark_is_refused():
    rng = np.random.default_rng(1)
    frames = 2000
    bright = rng.binomial(frames, 0.3, (40, 64))
    with pytest.raises(CalibrationError, match="is not dark: the median pixel fires"):
        dark_maps(bright, frames)
    # a dim scene: a low median rate, but neighbouring pixels see the same texture
    scene = cv2.GaussianBlur(rng.random((40, 64)), (0, 0), 3)
    scene = 0.002 + 0.03 * (scene - scene.min()) / np.ptp(scene)
    with pytest.raises(CalibrationError, match="neighbouring pixels' rates correlate"):
        dark_maps(rng.binomial(frames, scene), frames)
    with pytest.raises(CalibrationError, match="at least 200 are needed"):
        dark_maps(rng.binomial(50, 0.007, (40, 64)), 50)


@pytest.mark.parametrize("shape", [(5, 7), (12, 16), (3, 3)])
def test_fill_matches_reference_including_clusters_and_edges(shape):
    rng = np.random.default_rng(sum(shape))
    hot = rng.random(shape) < 0.2
    hot[0, 0] = hot[-1, -1] = True  # corners
    values = rng.random((2,) + shape).astype(np.float32)
    maps = PhotometricCalibration(np.zeros(shape, np.float32), hot, 1000, 0.0, 0.01)
    np.testing.assert_allclose(maps.fill_hot_pixels(values), reference_fill(values, hot), rtol=1e-6)
    np.testing.assert_array_equal(maps.fill_hot_pixels(values)[..., ~hot], values[..., ~hot])
    none = PhotometricCalibration(np.zeros(shape, np.float32), np.zeros(shape, bool), 1000, 0.0, 0.01)
    np.testing.assert_array_equal(none.fill_hot_pixels(values), values)


@pytest.mark.parametrize("shape", [(5, 7), (12, 16)])
def test_level_fill_is_the_float_fill_rounded_in_place(shape):
    rng = np.random.default_rng(3 * sum(shape))
    hot = rng.random(shape) < 0.2
    maps = PhotometricCalibration(np.zeros(shape, np.float32), hot, 1000, 0.0, 0.01)
    levels = ((rng.random((3, 21) + shape) < 0.4) * 255).astype(np.uint8)
    expected = np.rint(reference_fill(levels.astype(np.float64), hot)).astype(np.uint8)
    original = levels.copy()
    assert maps.fill_hot_pixel_levels(levels) is levels
    np.testing.assert_array_equal(levels, expected)
    np.testing.assert_array_equal(levels[..., ~hot], original[..., ~hot])
    with pytest.raises(ConfigError, match="uint8"):
        maps.fill_hot_pixel_levels(levels.astype(np.float32))
    with pytest.raises(ConfigError, match="C-contiguous"):
        maps.fill_hot_pixel_levels(np.zeros((2,) + shape, np.uint8, order="F")[0:1, ::1].transpose(0, 1, 2)[..., ::-1])


def test_corrections_subtract_dark_rate_and_clip():
    hot = np.zeros((4, 4), bool)
    hot[1, 1] = True
    dark = np.full((4, 4), 0.01, np.float32)
    maps = PhotometricCalibration(dark, hot, 1000, 0.01, 0.05)
    counts = np.full((4, 4), 5, np.uint16)
    counts[1, 1] = 400
    counts[3, 3] = 0
    corrected = maps.correct_counts(counts, 200)
    light = (5 / 200 - 0.01) / (1 - 0.01) * 200  # dark spikes only show in frames the light left empty
    assert corrected[0, 0] == pytest.approx(light, rel=1e-5) and corrected[3, 3] == 0.0
    assert corrected[1, 1] == pytest.approx(light, rel=1e-5)  # filled from its 8 neighbours, not its 400 spikes
    rate = maps.correct_rate(np.full((2, 4, 4), 0.5, np.float32))
    np.testing.assert_allclose(rate, (0.5 - 0.01) / 0.99, rtol=1e-6)
    # simulated: light at rate p, dark spikes ORed in at rate d -> the correction returns p
    rng = np.random.default_rng(0)
    p, frames_n = 0.3, 200_000
    fired = (rng.random(frames_n) < p) | (rng.random(frames_n) < 0.01)
    assert maps.correct_rate(np.full((4, 4), fired.mean(), np.float32))[0, 0] == pytest.approx(p, abs=0.004)
    frames = np.zeros((3, 4, 4), np.float32)
    frames[:, 1, 1] = 1.0  # a hot pixel firing every frame
    assert maps.correct_spike_frames(frames)[:, 1, 1].max() == 0.0
