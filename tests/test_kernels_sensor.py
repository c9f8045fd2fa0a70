"""Firing gain (spikes per frame at full intensity) and the model-domain check, against numpy twins and the
simulator at two thresholds."""

import math

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels import pack_frames
from spikereveal.kernels.sensor import (
    MIN_GRAY_MEAN,
    domain_check,
    exposure_firing_gain,
    firing_gain,
    firing_gain_summary,
    gray_mean,
    mean_spike_rate,
    parse_gain_range,
    spike_count,
)
from spikereveal.kernels.timing import ExposureWindow
from twins import reference_gray, reference_rate

GEOMETRIES = [(250, 400), (3, 8), (8, 9), (5, 24), (16, 24), (1, 8), (13, 56)]


# -- numpy twins ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width", GEOMETRIES)
def test_spike_rate_matches_numpy_twin(height, width):
    rng = np.random.default_rng(height * 100 + width)
    bits = (rng.random((37, height, width)) < 0.3).astype(np.uint8)
    packed = pack_frames(bits)
    for first, stop, step in [(0, 37, 1), (3, 30, 4), (36, 37, 1), (0, 37, 5)]:
        assert mean_spike_rate(packed, height, width, first, stop, step) == pytest.approx(
            reference_rate(bits, first, stop, step), rel=1e-12)
        assert spike_count(packed, height, width, first, stop, step) == int(bits[first:stop:step].sum())
    assert spike_count(packed, height, width, 5, 5) == 0 and math.isnan(mean_spike_rate(packed, height, width, 5, 5))
    readonly = packed.copy()
    readonly.flags.writeable = False  # decoded messages are read-only views
    assert mean_spike_rate(readonly, height, width) == pytest.approx(bits.mean())


def test_spike_rate_checks_its_range():
    packed = pack_frames(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ConfigError, match="not inside"):
        mean_spike_rate(packed, 8, 8, 2, 5)
    with pytest.raises(ConfigError, match="positive integer"):
        mean_spike_rate(packed, 8, 8, step=0)


@pytest.mark.parametrize("step", [1, 3, 4])
def test_gray_mean_matches_numpy_twin(step):
    rng = np.random.default_rng(step)
    image8 = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    assert gray_mean(image8, step) == pytest.approx(reference_gray(image8, step), rel=1e-12)
    assert gray_mean(image8[None], step) == pytest.approx(reference_gray(image8, step), rel=1e-12)  # (1,H,W,3)
    planar = rng.random((3, 37, 53)).astype(np.float32)
    assert gray_mean(planar, step) == pytest.approx(reference_gray(planar, step), rel=1e-6)
    # the same frame in both layouts gives the same gray
    assert gray_mean(image8) == pytest.approx(gray_mean(image8.transpose(2, 0, 1) / 255.0), rel=1e-12)
    with pytest.raises(ConfigError):
        gray_mean(np.zeros((4, 4), np.uint8))


def test_firing_gain_is_rate_over_gray_and_nan_when_dark():
    image = np.full((8, 8, 3), 128, np.uint8)
    assert firing_gain(0.25, image) == pytest.approx(0.25 / (128 / 255.0))
    assert math.isnan(firing_gain(0.1, np.zeros((8, 8, 3), np.uint8)))  # lens cap: no gain to measure
    dim = np.full((3, 4, 4), MIN_GRAY_MEAN / 2, np.float32)
    assert math.isnan(firing_gain(0.1, dim))
    assert math.isnan(firing_gain(math.nan, image))


def test_exposure_firing_gain_counts_only_the_exposure_frames():
    height, width = 8, 16
    bits = np.zeros((30, height, width), np.uint8)
    bits[10:20] = 1  # the exposure fires every frame; the margins never do
    window = ExposureWindow(exposure_first=110, exposure_stop=120, window_first=100, window_stop=130,
                            centers=np.array([115]), timestamps_ns=np.array([0]))
    image = np.full((3, 4 * height, 4 * width), 0.5, np.float32)
    assert exposure_firing_gain(pack_frames(bits), height, width, window, image) == pytest.approx(2.0)


# -- the domain check -----------------------------------------------------------------------------------------
def test_parse_gain_range_accepts_lists_and_metadata_text():
    assert parse_gain_range(None) is None and parse_gain_range("") is None
    for value in ([0.6, 1.6], (0.6, 1.6), "[0.6, 1.6]", "0.6,1.6", "(0.6, 1.6)"):
        assert parse_gain_range(value) == (0.6, 1.6)
    for bad in ("fast", [1.0], [2.0, 1.0], [0.0, 1.0], "[nan, 1]"):
        with pytest.raises(ConfigError, match="firing_gain_range"):
            parse_gain_range(bad)


def test_domain_check():
    trained = (0.6, 1.6)
    assert domain_check(1.0, trained) is None
    assert domain_check(0.6 / 1.25, trained) is None and domain_check(1.6 * 1.25, trained) is None
    assert domain_check(0.24, trained) == "firing gain 0.24 outside the model's trained range 0.6-1.6"
    assert "outside" in domain_check(2.1, trained)
    assert domain_check(0.5, trained, tolerance=1.0) is not None
    assert "too dark" in domain_check(math.nan, trained)
    assert domain_check(0.01, None) is None and domain_check(math.nan, None) is None  # nothing declared
    with pytest.raises(ConfigError, match="tolerance"):
        domain_check(1.0, trained, tolerance=0.5)


def test_gain_summary_and_its_warning():
    summary = firing_gain_summary([0.2, math.nan, 0.3], [0.6, 1.6], "rec1")
    assert summary["min"] == 0.2 and summary["max"] == 0.3 and summary["mean"] == pytest.approx(0.25)
    assert summary["unmeasured_exposures"] == 1 and summary["exposures_out_of_domain"] == 3  # nan counts too
    assert summary["out_of_domain"] and summary["warning"] == (
        "recording rec1: firing gain 0.25 outside the model's trained range 0.6-1.6; quality may drop — adapt "
        "the model to this rig with `spikereveal adapt --data rec1 --out DIR`")
    calm = firing_gain_summary([1.0, 1.1], None, "rec1")
    assert not calm["out_of_domain"] and calm["warning"] is None and calm["trained_range"] is None
    empty = firing_gain_summary([], [0.6, 1.6], "rec1")
    assert empty["mean"] is None and not empty["out_of_domain"]


# -- on simulated recordings --------------------------------------------------------------------------------------
def _gains(path):
    from spikereveal.recording import open_recording

    with open_recording(path) as rec:
        spike = rec.meta.spike
        gains = []
        for exposure in rec.exposures:
            window = rec.exposure_window(exposure.index)
            packed = rec.spikes.read(window.window_first, window.window_stop)
            image = rec.read_exposure(exposure.index)
            gains.append(exposure_firing_gain(packed, spike.height, spike.width, window, image))
            # the uint8 frame (deblur/serve) gives the same gain as the float one (eval)
            image8 = rec.read_exposure_bgr8(exposure.index)
            assert exposure_firing_gain(packed, spike.height, spike.width, window, image8) == pytest.approx(
                gains[-1], rel=0.01)
    return np.asarray(gains)


def test_simulated_gain_follows_the_threshold(tmp_path):
    pytest.importorskip("skimage")
    from spikereveal.sim import preset, simulate_recording

    shape = dict(rgb_height=64, rgb_width=96, spike_height=16, spike_width=24)
    default = _gains(simulate_recording(preset("tiny", **shape), tmp_path / "t2", seed=3, exposures=2))
    doubled = _gains(simulate_recording(preset("tiny", sensor={"threshold": 4.0}, **shape), tmp_path / "t4",
                                        seed=3, exposures=2))
    assert np.all((default > 0.85) & (default < 1.15)), default  # gain 1.985 / threshold 2 (+ dark spikes)
    assert np.all((doubled > 0.42) & (doubled < 0.58)), doubled  # twice the threshold: half the spikes
    assert doubled.mean() / default.mean() == pytest.approx(0.5, abs=0.05)
    trained = (0.8, 1.2)  # a model trained on the default sensor flags the doubled threshold
    assert all(domain_check(g, trained) is None for g in default)
    assert all(domain_check(g, trained) is not None for g in doubled)
