"""Issue 15 item 1: a clock fit that cannot be trusted is refused with the reason and never written; the
offset carries an honest uncertainty; a drift a short recording cannot tell from none is not estimated;
calibrated output frames are stamped on the spike clock."""

import json

import numpy as np
import pytest

from calibration_support import clock_recording
from cli_support import assert_user_error, run_cli
from spikereveal.calibration import CalibrationError, ClockCalibration, RigCalibration, read_calibration
from spikereveal.calibration import clock as clock_math
from spikereveal.calibration.fit import check_clock
from spikereveal.kernels.timing import output_timestamps
from spikereveal.recording import open_recording
from spikereveal.sim import MotionConfig, preset, simulate_recording

PERIOD_NS = 1e9 / preset("tiny").rate_hz


def _static_recording(path, exposures=6):
    """Textured scenes, nothing moves: the clock is unobservable."""
    return simulate_recording(preset("tiny", motion=MotionConfig.static()), path, seed=1, exposures=exposures)


# -- refusals -----------------------------------------------------------------------------------------------
def test_a_static_textured_scene_is_refused_and_nothing_is_written(tmp_path):
    rec = _static_recording(tmp_path / "static")
    result = run_cli("calibrate", "time", "--recording", rec)
    assert_user_error(result, "too little motion", "calibrate time on footage with motion")
    assert not (rec / "calibration.json").exists()


def test_exposures_that_split_into_camps_are_not_trimmed_to_a_confident_pair():
    """Two of four exposures say 0.3 frames, two say 3: the old fit dropped one camp and stated a residual of
    a few microseconds. Now nothing is dropped and the uncertainty (and residual) refuse it."""
    times = np.array([0.1e9, 0.2e9, 0.3e9, 0.4e9])
    offsets = np.array([0.27, 3.0, 0.27, 3.0]) * PERIOD_NS
    fit = clock_math.fit_drift(times, offsets, 0, frame_period_ns=PERIOD_NS)
    assert fit.exposures == 4 and fit.offset_uncertainty_ns > 0.5 * PERIOD_NS
    with pytest.raises(CalibrationError, match="residual too large"):
        check_clock(fit, "rig")


def test_too_few_agreeing_exposures_and_unknown_uncertainty_are_refused():
    few = ClockCalibration(1e6, 0.0, 10.0, 2, 0, PERIOD_NS, offset_uncertainty_ns=5.0, exposures_tried=4)
    with pytest.raises(CalibrationError, match="only 2 of 4 exposures"):
        check_clock(few, "rig")
    unknown = ClockCalibration(1e6, 0.0, 10.0, 4, 0, PERIOD_NS)
    with pytest.raises(CalibrationError, match="uncertain by unknown"):
        check_clock(unknown, "rig")


def test_one_exposures_peak_uncertainty_tells_motion_from_none():
    """Counts that change with the shift (motion) pin the peak on both halves of the image; counts that do
    not (a static scene: only noise differs) put the two halves' peaks anywhere."""
    shifts = np.arange(-8, 9)
    mask = np.ones((48, 64), bool)
    moving_scores, static_scores = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        base = rng.random((48, 64))
        gradient = np.gradient(base, axis=1)
        noise = 0.002 * rng.standard_normal((2, 17, 48, 64))
        moving = np.stack([base - 0.05 * s * gradient for s in shifts]) + noise[0]
        static = base[None] + noise[1]
        moving_scores.append(clock_math.exposure_peak_uncertainty(shifts, moving, base, mask))
        static_scores.append(clock_math.exposure_peak_uncertainty(shifts, static, base, mask))
    assert max(moving_scores) < 0.2
    assert np.mean(np.array(static_scores) > clock_math.MAX_EXPOSURE_UNCERTAINTY_FRAMES) >= 0.6, static_scores


# -- uncertainty and drift ------------------------------------------------------------------------------------
def test_uncertainty_is_written_printed_and_covers_the_error(tmp_path):
    offset_ns = int(round(2.4 * PERIOD_NS))
    rec = clock_recording(tmp_path / "rec", offset_ns, 0.0, exposures=10)
    result = run_cli("calibrate", "time", "--recording", rec)
    assert result.returncode == 0, result.stderr
    assert " +- " in result.stdout and "spike frames" in result.stdout
    section = json.loads((rec / "calibration.json").read_text())["time"]
    uncertainty = section["offset_uncertainty_ns"]
    assert 0 < uncertainty <= PERIOD_NS
    assert abs(section["offset_ns"] - offset_ns) <= max(4 * uncertainty, 0.25 * PERIOD_NS)
    assert read_calibration(rec).clock.offset_uncertainty_ns == pytest.approx(uncertainty)


def test_a_drift_the_recording_cannot_resolve_is_not_estimated_and_says_so(tmp_path):
    """100 ppm over a ~0.2 s tiny recording moves the offset by ~0.4 frames: not separable from none."""
    rec = clock_recording(tmp_path / "rec", 0, 100.0, exposures=8)
    result = run_cli("calibrate", "time", "--recording", rec)
    assert result.returncode == 0, result.stderr
    assert "drift not estimated" in result.stdout and "0.000 ppm" not in result.stdout
    clock = read_calibration(rec).clock
    assert clock.drift_estimated is False and clock.drift_ppm == 0.0 and "cannot be told from none" in clock.drift_note


def test_drift_estimation_rules_on_pure_data():
    times = np.linspace(0, 2e9, 12)
    rng = np.random.default_rng(0)
    noise = 0.03 * PERIOD_NS * rng.standard_normal(12)
    long = clock_math.fit_drift(times, 5e5 + 200e-6 * times + noise, 0, frame_period_ns=PERIOD_NS)
    assert long.drift_estimated and long.drift_ppm == pytest.approx(200, abs=5 * long.drift_uncertainty_ppm)
    short_times = np.linspace(0, 0.2e9, 6)
    short = clock_math.fit_drift(short_times, 5e5 + 100e-6 * short_times + 2 * noise[:6], 0,
                                 frame_period_ns=PERIOD_NS)
    assert not short.drift_estimated and short.drift_ppm == 0.0 and "cannot be told from none" in short.drift_note
    asked = clock_math.fit_drift(times, 5e5 + noise, 0, fit_drift=False, frame_period_ns=PERIOD_NS)
    assert not asked.drift_estimated and "--no-drift" in asked.drift_note
    # the stated uncertainty is the spread of the estimate: 200 noisy offset-only fits
    errors, stated = [], []
    for seed in range(200):
        scatter = 0.1 * PERIOD_NS * np.random.default_rng(seed).standard_normal(6)
        fit = clock_math.fit_drift(short_times, 5e5 + scatter, 0, fit_drift=False, frame_period_ns=PERIOD_NS)
        errors.append(fit.offset_ns - 5e5)
        stated.append(fit.offset_uncertainty_ns)
    assert 0.7 < np.median(stated) / np.std(errors) < 1.5


def test_a_file_written_before_the_uncertainty_existed_still_reads(tmp_path):
    data = {"format": "spikereveal-calibration", "version": 1, "spike": {"height": 40, "width": 64},
            "rgb": {"height": 160, "width": 256}, "time": {"offset_ns": 1000, "drift_ppm": 3.0, "reference_ns": 0}}
    (tmp_path / "calibration.json").write_text(json.dumps(data))
    clock = read_calibration(tmp_path).clock
    assert clock.offset_uncertainty_ns is None and clock.drift_estimated and clock.drift_ppm == 3.0


# -- output frames on the spike clock ---------------------------------------------------------------------------
def test_calibrated_output_frames_are_stamped_on_the_spike_clock(tmp_path):
    from spikereveal.stream.offline import calibrated_exposure_window

    offset_ns = int(round(3 * PERIOD_NS))
    rec = clock_recording(tmp_path / "rec", offset_ns, 0.0, exposures=3)
    clock = ClockCalibration(offset_ns, 0.0, 0.0, 3, 0, PERIOD_NS, offset_uncertainty_ns=1.0)
    with open_recording(rec) as recording:
        spike, rgb = recording.meta.spike, recording.meta.rgb
        calibration = RigCalibration((spike.height, spike.width), (rgb.height, rgb.width), clock=clock)
        truth = json.loads((rec / "sim_truth.json").read_text())["exposures"]
        for plan in truth:
            exposure = recording.exposure(plan["index"])
            window = calibrated_exposure_window(recording, exposure.index, 7, calibration)
            spike_start, duration = calibration.exposure_on_spike_clock(exposure.start_ns, exposure.duration_ns)
            assert abs(spike_start - plan["start_ns"]) <= 1  # the truth, on the spike clock
            np.testing.assert_array_equal(window.timestamps_ns, output_timestamps(spike_start, duration, 7))
            assert window.timestamps_ns[0] == exposure.start_ns - offset_ns
