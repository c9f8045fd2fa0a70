"""Clock: offset and drift of exposure timestamps against the spike clock, from simulated truth."""

import numpy as np
import pytest

from calibration_support import clock_recording, flat_recording
from spikereveal.calibration import CalibrationError, ClockCalibration
from spikereveal.calibration import clock as clock_math
from spikereveal.calibration.fit import calibrate_clock, exposure_frames
from spikereveal.recording import open_recording
from spikereveal.sim import preset
from spikereveal.sim.simulate import rgb_clock

PERIOD_NS = 1e9 / preset("tiny").rate_hz


@pytest.mark.slow
@pytest.mark.parametrize("offset_frames, drift_ppm", [(3.3, 0.0), (-1.7, 20000.0)])
def test_offset_and_drift_are_recovered(tmp_path, offset_frames, drift_ppm):
    offset_ns = int(round(offset_frames * PERIOD_NS))
    path = clock_recording(tmp_path / "rec", offset_ns, drift_ppm, exposures=16)
    with open_recording(path) as recording:
        result = calibrate_clock(recording)
        assert abs(result.offset_ns - offset_ns) <= PERIOD_NS, "offset off by more than one spike frame"
        if drift_ppm:
            assert abs(result.drift_ppm - drift_ppm) <= 0.05 * abs(drift_ppm)
        else:
            assert abs(result.drift_ppm) < 1000  # 1000 ppm over this 0.4 s recording is < 1 frame
        assert result.exposures >= 8 and result.residual_ns < 0.5 * PERIOD_NS
        # applied, the corrected exposures cover the frames they truly covered
        truth = [plan for plan in __import__("json").loads((path / "sim_truth.json").read_text())["exposures"]]
        hits = [exposure_frames(recording, p["index"], result)[0] == p["first_frame"] for p in truth]
        assert np.mean(hits) >= 0.9


def test_a_static_scene_does_not_constrain_the_clock(tmp_path):
    with open_recording(flat_recording(tmp_path / "flat", exposures=3)) as recording:
        with pytest.raises(CalibrationError, match="calibrate time on footage with motion"):
            calibrate_clock(recording, search_frames=6)


def test_the_model_inverts_the_simulator_clock():
    config = preset("tiny", clock_offset_ns=1_234_567, clock_drift_ppm=-350.0, t0_ns=5_000)
    clock = ClockCalibration(1_234_567, -350.0, 0.0, 1, 5_000)
    for t in (5_000, 1_000_000, 987_654_321):
        assert abs(int(clock.to_spike_clock(rgb_clock(config, t))) - t) <= 1
    times = np.array([5_000, 2_000_000_000], dtype=np.int64)
    np.testing.assert_array_equal(clock.to_spike_clock([rgb_clock(config, int(t)) for t in times]), times)


def test_peak_interpolation_and_edges():
    shifts = np.arange(-6, 7)
    for true in (-2.3, 0.0, 1.45):
        scores = 0.9 - 0.01 * (shifts - true) ** 2
        position, contrast = clock_math.peak_shift(shifts, scores)
        assert position == pytest.approx(true, abs=1e-9) and contrast > 0
    with pytest.raises(CalibrationError, match="edge of the search"):
        clock_math.peak_shift(shifts, -0.01 * (shifts - 8.0) ** 2)


def test_drift_fit_rejects_an_outlier():
    times = np.linspace(0, 1e9, 12)
    offsets = 5e5 + 200e-6 * times
    offsets[4] += 3e6  # one exposure matched the wrong instant
    fit = clock_math.fit_drift(times, offsets, 0, frame_period_ns=5e4)
    assert fit.offset_ns == pytest.approx(5e5, abs=1.0)
    assert fit.drift_ppm == pytest.approx(200.0, rel=1e-6)
    assert fit.exposures == 11 and fit.residual_ns < 1.0
    offset_only = clock_math.fit_drift(times, offsets, 0, fit_drift=False)
    assert offset_only.drift_ppm == 0.0


def test_shift_scores_match_a_numpy_reference():
    rng = np.random.default_rng(5)
    height, width, frames = 6, 8, 60
    spikes = (rng.random((frames, height, width)) < rng.random((1, height, width))).astype(np.uint8)
    from spikereveal.kernels import pack_frames

    target = spikes[20:40].mean(axis=0) + 0.01 * rng.standard_normal((height, width))
    shifts = np.arange(-5, 6)
    scores = clock_math.shift_scores(pack_frames(spikes), height, width, 0, 20, 20, shifts, target)
    reference = [np.corrcoef(spikes[20 + s:40 + s].sum(axis=0).ravel(), target.ravel())[0, 1] for s in shifts]
    np.testing.assert_allclose(scores, reference, atol=1e-9)
    assert shifts[np.argmax(scores)] == 0
