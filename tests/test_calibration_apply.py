"""Applying a calibration pays: on a misaligned rig with a clock offset and hot pixels, the SDM model fed
through load_rig_calibration beats the same model fed the raw inputs by >= 2 dB against ground truth."""

import cv2
import numpy as np
import pytest

from calibration_support import misaligned_recording
from spikereveal.calibration import RigCalibration, load_rig_calibration, write_calibration
from spikereveal.calibration.fit import calibrate_dark, calibrate_geometry_and_clock
from spikereveal.kernels import SDM_SHORT_WINDOW, exposure_window, sdm, tfp_range, tfp_stack
from spikereveal.recording import open_recording

SENSOR = {"hot_pixel_fraction": 0.003, "hot_pixel_rate": 0.5}


def _psnr(estimate, truth):
    return 10 * np.log10(1.0 / np.mean((np.clip(estimate, 0, 1) - truth) ** 2))


def _sdm_psnr(recording, calibration: RigCalibration | None) -> float:
    spike = recording.meta.spike
    height, width = spike.canonical_shape
    scores = []
    for exposure in recording.exposures[1:-1]:  # the outer ones' corrected windows may leave the data
        frames = recording.ground_truth_for(exposure.index)
        start, duration = exposure.start_ns, exposure.duration_ns
        image = recording.read_exposure(exposure.index)
        if calibration is None:  # what a pipeline without calibration can do: stretch the frame
            blur = cv2.resize(image.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_AREA)
            blur = blur.transpose(2, 0, 1)
        else:
            start, duration = calibration.exposure_on_spike_clock(start, duration)
            blur = calibration.warp_exposure(image)
        window = exposure_window(start, duration, spike.t0_ns, spike.rate_hz, len(frames))
        packed = recording.spikes.read(window.window_first, window.window_stop)
        args = (spike.height, spike.width)
        long = tfp_range(packed, *args, window.exposure_first, window.exposure_stop, first_index=window.window_first)
        short = tfp_stack(packed, *args, window.centers, SDM_SHORT_WINDOW, first_index=window.window_first)
        if calibration is not None:
            long, short = calibration.correct_rate(long), calibration.correct_rate(short)
        sharp = sdm(blur, short, long)
        scores += [_psnr(sharp[k], recording.read_ground_truth(frame)) for k, frame in enumerate(frames)]
    return float(np.mean(scores))


@pytest.mark.slow
def test_calibration_gains_at_least_2_db(tmp_path):
    rig = misaligned_recording(tmp_path / "rig", exposures=6, clock_offset_ns=800_000, sensor=SENSOR)
    # the same sensor (same seed: same fixed pattern) with the lens cap on
    dark = misaligned_recording(tmp_path / "dark", exposures=4, scene="dark", sensor=SENSOR)
    with open_recording(rig) as recording, open_recording(dark) as dark_recording:
        geometry, clock = calibrate_geometry_and_clock(recording, "features")
        photometric = calibrate_dark(dark_recording)
        spike, rgb = recording.meta.spike, recording.meta.rgb
        write_calibration(RigCalibration((spike.height, spike.width), (rgb.height, rgb.width), geometry, clock,
                                         photometric), rig)
        calibration = load_rig_calibration(recording)
        assert calibration.clock is not None and calibration.photometric.hot_mask.sum() > 0
        with_calibration = _sdm_psnr(recording, calibration)
        without = _sdm_psnr(recording, None)
    assert with_calibration >= without + 2.0, (with_calibration, without)
