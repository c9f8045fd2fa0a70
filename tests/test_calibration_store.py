"""calibration.json: round trip, versioning, validation errors naming file and line, and the pipeline's
entry point load_rig_calibration."""

import json

import numpy as np
import pytest

from spikereveal.calibration import (
    CALIBRATION_VERSION,
    ClockCalibration,
    GeometryCalibration,
    PhotometricCalibration,
    RigCalibration,
    load_rig_calibration,
    read_calibration,
    update_calibration,
    write_calibration,
)
from spikereveal.errors import ConfigError, FormatError
from spikereveal.kernels import pack_frames
from spikereveal.recording import RecordingWriter, RgbMeta, SpikeMeta

SPIKE, RGB = (8, 16), (30, 60)
H = np.array([[0.9, 0.01, 2.0], [-0.02, 0.95, -1.5], [1e-4, 2e-5, 1.0]])


def _photometric(seed=0):
    rng = np.random.default_rng(seed)
    hot = np.zeros(SPIKE, bool)
    hot[2, 3] = hot[7, 15] = True
    rate = rng.uniform(0.001, 0.01, SPIKE).astype(np.float32)
    return PhotometricCalibration(rate, hot, 5000, 0.005, 0.02, {"neighbour_correlation": 0.01})


def _full():
    geometry = GeometryCalibration(H, "features", 0.12, 5, 6, (0, 2, 3), {"correlations": [0.99]})
    clock = ClockCalibration(1.25e6, 37.5, 2100.0, 10, 1000, 52083.3)
    return RigCalibration(SPIKE, RGB, geometry, clock, _photometric())


def test_round_trip_keeps_every_section(tmp_path):
    path = write_calibration(_full(), tmp_path / "calibration.json")
    assert (tmp_path / "calibration_dark.npz").is_file()
    back = read_calibration(tmp_path)
    original = _full()
    np.testing.assert_allclose(back.geometry.homography, original.geometry.homography, rtol=0, atol=1e-15)
    assert (back.geometry.method, back.geometry.residual_px, back.geometry.exposures) == ("features", 0.12, (0, 2, 3))
    assert back.clock == original.clock
    np.testing.assert_array_equal(back.photometric.dark_rate, original.photometric.dark_rate)
    np.testing.assert_array_equal(back.photometric.hot_mask, original.photometric.hot_mask)
    assert back.path == path
    assert back.summary()["photometric"]["hot_pixels"] == 2


def test_sections_are_optional_and_update_keeps_the_others(tmp_path):
    path = tmp_path / "calibration.json"
    update_calibration(path, SPIKE, RGB, clock=_full().clock)
    data = json.loads(path.read_text())
    assert "time" in data and "geometry" not in data and "photometric" not in data
    update_calibration(path, SPIKE, RGB, geometry=_full().geometry)
    both = read_calibration(path)
    assert both.clock == _full().clock and both.geometry is not None and both.photometric is None
    with pytest.raises(FormatError, match="made for spikes"):
        update_calibration(path, (16, 16), RGB, clock=_full().clock)


def _rewrite(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def test_version_and_format_are_checked(tmp_path):
    path = write_calibration(_full(), tmp_path / "calibration.json")
    _rewrite(path, lambda d: d.update(version=CALIBRATION_VERSION + 1))
    with pytest.raises(FormatError, match=r"calibration.json, line 3: calibration format version 2 is not supported"):
        read_calibration(path)
    _rewrite(path, lambda d: d.update(version=CALIBRATION_VERSION, format="something-else"))
    with pytest.raises(FormatError, match="not a spikereveal calibration"):
        read_calibration(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["geometry"].update(homography=[[1, 0], [0, 1]]), "3x3 array"),
        (lambda d: d["geometry"].update(homography=[[0, 0, 0]] * 3), "singular"),
        (lambda d: d["geometry"].update(method="magic"), "geometry method"),
        (lambda d: d["geometry"].update(direction="rgb_to_canonical"), "only 'canonical_to_rgb'"),
        (lambda d: d["time"].pop("offset_ns"), "'time.offset_ns' is missing"),
        (lambda d: d["time"].update(drift_ppm="fast"), "'time.drift_ppm' must be a number"),
        (lambda d: d["spike"].pop("width"), "'spike.width' is missing"),
        (lambda d: d["photometric"].update(file="../x.npz"), "file name beside"),
        (lambda d: d["photometric"].update(sha256="0" * 64), "does not match its sha256"),
    ],
)
def test_invalid_content_is_a_format_error_naming_file_and_line(tmp_path, edit, message):
    path = write_calibration(_full(), tmp_path / "calibration.json")
    _rewrite(path, edit)
    with pytest.raises(FormatError, match=message) as caught:
        read_calibration(path)
    assert caught.value.path == str(path) and caught.value.line is not None and caught.value.line > 1


def test_broken_json_and_missing_dark_maps(tmp_path):
    path = write_calibration(_full(), tmp_path / "calibration.json")
    (tmp_path / "calibration_dark.npz").unlink()
    with pytest.raises(FormatError, match="which is missing"):
        read_calibration(path)
    path.write_text('{"format": "spikereveal-calibration",\n "version": 1,,}')
    with pytest.raises(FormatError, match="line 2: is not valid JSON"):
        read_calibration(path)
    with pytest.raises(FormatError, match="is missing; run 'spikereveal calibrate'"):
        read_calibration(tmp_path / "nothing.json")


def test_applying_a_calibration():
    calibration = _full()
    rows, cols = np.mgrid[0:RGB[0], 0:RGB[1]].astype(np.float32)
    image = np.stack([cols / 100, rows / 50, (cols + rows) / 100])  # linear: bilinear sampling is exact
    warped = calibration.warp_exposure(image)
    assert warped.shape == (3, 32, 64) and warped.dtype == np.float32
    for x, y in ((20, 10), (3, 25), (50, 5)):  # canonical pixel (x, y) shows RGB position H(x, y)
        u, v, w = H @ [x, y, 1.0]
        np.testing.assert_allclose(warped[:, y, x], [u / w / 100, v / w / 50, (u + v) / w / 100], atol=1e-3)
    start, duration = calibration.exposure_on_spike_clock(10_000_000, 1_000_000)
    rgb_clock = lambda t: t + 1.25e6 + 37.5e-6 * (t - 1000)  # noqa: E731 (the model written in the file)
    assert abs(rgb_clock(start) - 10_000_000) <= 1 and abs(rgb_clock(start + duration) - 11_000_000) <= 2
    counts = np.full(SPIKE, 3, np.uint16)
    corrected = calibration.correct_counts(counts, 100)
    dark = calibration.photometric.dark_rate
    neighbours = [(0.03 - dark[r, c]) / (1 - dark[r, c]) * 100 for r in (1, 2, 3) for c in (2, 3, 4) if (r, c) != (2, 3)]
    assert corrected[2, 3] == pytest.approx(np.mean(neighbours), rel=1e-5)
    with pytest.raises(ConfigError, match="RGB camera"):
        calibration.warp_exposure(np.zeros((3, 32, 64), np.float32))
    empty = RigCalibration(SPIKE, (32, 64))
    assert empty.warp_exposure(np.zeros((3, 32, 64), np.float32)).shape == (3, 32, 64)
    assert empty.exposure_on_spike_clock(5, 7) == (5, 7)
    with pytest.raises(ConfigError, match="run 'spikereveal calibrate geometry'"):
        RigCalibration(SPIKE, RGB).warp_exposure(image)


def _recording(path, rgb=RGB):
    spike = SpikeMeta(SPIKE[0], SPIKE[1], 1000.0, 0, False, "little")
    with RecordingWriter(path, spike, RgbMeta(*rgb)) as writer:
        writer.append_spikes(pack_frames(np.zeros((80, *SPIKE), np.uint8)))
        writer.add_exposure(20_000_000, 30_000_000, np.zeros(rgb + (3,), np.uint8))
    return path


def test_load_rig_calibration_finds_checks_and_can_be_switched_off(tmp_path):
    recording = _recording(tmp_path / "rec")
    assert load_rig_calibration(recording) is None
    write_calibration(_full(), recording)
    loaded = load_rig_calibration(recording)
    assert isinstance(loaded, RigCalibration) and loaded.geometry is not None
    assert load_rig_calibration(recording, use_calibration=False) is None
    other = write_calibration(RigCalibration(SPIKE, RGB, clock=_full().clock), tmp_path / "other.json")
    assert load_rig_calibration(recording, calibration_path=other).geometry is None
    wrong = write_calibration(RigCalibration((16, 16), RGB), tmp_path / "wrong.json")
    with pytest.raises(ConfigError, match="calibrate this rig"):
        load_rig_calibration(recording, calibration_path=wrong)
