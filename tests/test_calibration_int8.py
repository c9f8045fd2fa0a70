"""int8 calibration data: real LDN input windows cut from recordings, calibration applied, cached."""

import cv2
import numpy as np
import pytest

from calibration_support import TRUE_HOMOGRAPHY, misaligned_recording
from spikereveal.calibration import geometry as geo
from spikereveal.calibration.fit import long_tfp
from spikereveal.calibration import GeometryCalibration, RigCalibration, write_calibration
from spikereveal.calibration.int8_data import ldn_calibration_windows
from spikereveal.errors import ConfigError
from spikereveal.kernels import extract_ldn_input
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
            assert item["blur"].shape == (5, 3, 4 * spike.height, 4 * spike.width)
            assert item["spikes"].shape == (5, 21, spike.height, spike.width)
            assert item["blur"].dtype == item["spikes"].dtype == np.float32
            np.testing.assert_allclose(item["blur"][3], recording.read_exposure(index), atol=0.5 / 255)
            window = recording.exposure_window(index, 5)
            expected = extract_ldn_input(recording.window_spikes(index), spike.height, spike.width, window.centers,
                                         first_index=window.window_first)
            np.testing.assert_array_equal(item["spikes"], expected)
    blur, spikes = next(data.pairs())
    assert blur.shape[0] == spikes.shape[0] == 5


def test_cache_is_reused_and_invalidated(aligned, tmp_path, monkeypatch):
    cache = tmp_path / "windows.npz"
    first = list(ldn_calibration_windows([aligned], max_windows=2, cache_path=cache))
    assert cache.is_file()
    import spikereveal.calibration.int8_data as int8_data

    def no_recut(*args, **kwargs):
        raise AssertionError("windows were cut again despite a valid cache")

    monkeypatch.setattr(int8_data, "_choose", no_recut)
    again = list(ldn_calibration_windows([aligned], max_windows=2, cache_path=cache))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["blur"], b["blur"])
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
        item = next(iter(ldn_calibration_windows([path], k=3, max_windows=1)))
        assert item["blur"].shape == (3, 3, 4 * spike.height, 4 * spike.width)
        # the warped frame lines up with the spikes of its exposure, a plain resize does not
        spike_image = geo.spike_to_canonical(long_tfp(recording, 0)).ravel()
        resized = cv2.resize(recording.read_exposure(0).transpose(1, 2, 0), (4 * spike.width, 4 * spike.height))
        warped_fit = np.corrcoef(geo.gray(item["blur"][0]).ravel(), spike_image)[0, 1]
        resized_fit = np.corrcoef(geo.gray(resized.transpose(2, 0, 1)).ravel(), spike_image)[0, 1]
        assert warped_fit > 0.95 and warped_fit > resized_fit + 0.1, (warped_fit, resized_fit)
    with pytest.raises(ConfigError, match="at least one recording"):
        ldn_calibration_windows([])
