"""int8 calibration data: real windows of the deployed graph's uint8 inputs cut from recordings, calibration
applied, cached."""

import shutil

import cv2
import numpy as np
import pytest

from calibration_support import TRUE_HOMOGRAPHY, misaligned_recording
from spikereveal.calibration import geometry as geo
from spikereveal.calibration.fit import long_tfp
from spikereveal.calibration import GeometryCalibration, RigCalibration, write_calibration
from spikereveal.engines.int8_data import ldn_calibration_windows
from spikereveal.calibration.photometric import PhotometricCalibration
from spikereveal.engines.export import WindowCalibrationReader
from spikereveal.engines.runners import InputShape
from spikereveal.errors import ConfigError
from spikereveal.kernels import extract_ldn_input
from spikereveal.kernels.extract import SPIKE_LEVEL
from spikereveal.recording import open_recording
from spikereveal.sim import preset, simulate_recording


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    return simulate_recording(preset("tiny"), tmp_path_factory.mktemp("int8") / "aligned", seed=0, exposures=3)


def test_windows_are_the_pipeline_inputs(aligned):
    data = ldn_calibration_windows([aligned], k=5, max_windows=2)
    items = list(data)
    assert len(items) == len(data) == 2
    with open_recording(aligned) as recording:
        spike = recording.meta.spike
        for item, (_, index) in zip(items, data.sources):
            assert set(item) == {"image", "spikes"}
            assert item["image"].shape == (1, 4 * spike.height, 4 * spike.width, 3)
            assert item["spikes"].shape == (5, 21, spike.height, spike.width)
            assert item["image"].dtype == item["spikes"].dtype == np.uint8
            # the camera's 8-bit frame as decoded: no float round trip
            np.testing.assert_array_equal(item["image"][0], recording.read_exposure_bgr8(index))
            window = recording.exposure_window(index, 5)
            expected = extract_ldn_input(recording.window_spikes(index), spike.height, spike.width, window.centers,
                                         first_index=window.window_first)  # float32 0/1
            assert 0 < expected.mean() < 1
            np.testing.assert_array_equal(item["spikes"], (expected * SPIKE_LEVEL).astype(np.uint8))
    image, spikes = next(data.pairs())
    np.testing.assert_array_equal(image, items[0]["image"])
    np.testing.assert_array_equal(spikes, items[0]["spikes"])
    # what the int8 export's calibration reader takes, for the export's geometry
    shape = InputShape(5, 4 * spike.height, 4 * spike.width)
    reader = WindowCalibrationReader(data.pairs(), shape=shape)
    assert len(list(reader)) == reader.count == 2


def test_cache_is_reused_and_invalidated(aligned, tmp_path, monkeypatch):
    cache = tmp_path / "windows.npz"
    first = list(ldn_calibration_windows([aligned], max_windows=2, cache_path=cache))
    assert cache.is_file()
    import spikereveal.engines.int8_data as int8_data

    def no_recut(*args, **kwargs):
        raise AssertionError("windows were cut again despite a valid cache")

    monkeypatch.setattr(int8_data, "_choose", no_recut)
    again = list(ldn_calibration_windows([aligned], max_windows=2, cache_path=cache))
    assert len(first) == len(again) == 2
    for a, b in zip(first, again):
        assert a["image"].dtype == b["image"].dtype == np.uint8
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["spikes"], b["spikes"])
    with pytest.raises(AssertionError, match="cut again"):  # other settings: a different cut
        ldn_calibration_windows([aligned], max_windows=3, cache_path=cache)
    cache.write_bytes(b"not an npz")
    monkeypatch.undo()
    assert len(ldn_calibration_windows([aligned], max_windows=2, cache_path=cache)) == 2


def test_misaligned_rig_needs_and_uses_its_geometry(tmp_path):
    path = misaligned_recording(tmp_path / "rig", exposures=2)
    with pytest.raises(ConfigError, match="not on the canonical grid"):
        list(ldn_calibration_windows([path], max_windows=1))
    with open_recording(path) as recording:
        spike, rgb = recording.meta.spike, recording.meta.rgb
        geometry = GeometryCalibration(TRUE_HOMOGRAPHY, "checkerboard", 0.1, 40, 40)
        write_calibration(RigCalibration((spike.height, spike.width), (rgb.height, rgb.width), geometry), path)
        data = ldn_calibration_windows([path], k=3, max_windows=1)
        assert data.sources[0][1] == 0
        item = next(iter(data))
        assert item["image"].shape == (1, 4 * spike.height, 4 * spike.width, 3) and item["image"].dtype == np.uint8
        assert item["spikes"].shape == (3, 21, spike.height, spike.width)
        # the uint8 frame is warped as uint8, with the rig's homography
        rig = RigCalibration((spike.height, spike.width), (rgb.height, rgb.width), geometry)
        np.testing.assert_array_equal(item["image"][0], rig.warp_image_bgr8(recording.read_exposure_bgr8(0)))
        # the warped frame lines up with the spikes of its exposure, a plain resize does not
        spike_image = geo.spike_to_canonical(long_tfp(recording, 0)).ravel()
        resized = cv2.resize(recording.read_exposure(0).transpose(1, 2, 0), (4 * spike.width, 4 * spike.height))
        warped = item["image"][0].transpose(2, 0, 1).astype(np.float32) / 255
        warped_fit = np.corrcoef(geo.gray(warped).ravel(), spike_image)[0, 1]
        resized_fit = np.corrcoef(geo.gray(resized.transpose(2, 0, 1)).ravel(), spike_image)[0, 1]
        assert warped_fit > 0.95 and warped_fit > resized_fit + 0.1, (warped_fit, resized_fit)
    with pytest.raises(ConfigError, match="at least one recording"):
        ldn_calibration_windows([])


def test_hot_pixels_are_filled_in_the_spike_levels(aligned, tmp_path):
    """With a photometric calibration, every hot pixel of every window holds the rounded mean level of its
    non-hot neighbours; all other pixels are the raw spikes."""
    path = tmp_path / "hot"
    shutil.copytree(aligned, path)
    with open_recording(path) as recording:
        spike, rgb = recording.meta.spike, recording.meta.rgb
        shape = (spike.height, spike.width)
    hot = np.zeros(shape, bool)
    hot[[3, 10, 10, 11], [4, 7, 8, 20]] = True  # a lone pixel, a pair, and one more
    photometric = PhotometricCalibration(np.zeros(shape, np.float32), hot, frames=1000, median_rate=0.0,
                                         hot_threshold_rate=0.1)
    write_calibration(RigCalibration(shape, (rgb.height, rgb.width), photometric=photometric), path)
    raw = list(ldn_calibration_windows([path], k=3, max_windows=2, use_calibration=False))
    filled = list(ldn_calibration_windows([path], k=3, max_windows=2))
    assert len(raw) == len(filled) == 2
    for before, after in zip(raw, filled):
        np.testing.assert_array_equal(after["image"], before["image"])
        np.testing.assert_array_equal(after["spikes"][..., ~hot], before["spikes"][..., ~hot])
        frames = before["spikes"].astype(np.float32) / SPIKE_LEVEL
        expected = np.rint(photometric.fill_hot_pixels(frames) * SPIKE_LEVEL)
        np.testing.assert_allclose(after["spikes"][..., hot], expected[..., hot], atol=1)
        # the lone hot pixel (3, 4): the plain mean of its 8 neighbours, all cool
        neighbours = before["spikes"][:, :, 2:5, 3:6].astype(np.float64).sum(axis=(2, 3)) - before["spikes"][:, :, 3, 4]
        np.testing.assert_array_equal(after["spikes"][:, :, 3, 4], np.rint(neighbours / 8).astype(np.uint8))
    assert any(np.any(a["spikes"][..., hot] != b["spikes"][..., hot]) for a, b in zip(raw, filled))
