"""The spikes of a simulated recording carry the motion: the plain SDM beats the blurry input."""

import numpy as np
import pytest

from spikereveal.kernels import sdm, tfp_range, tfp_stack
from spikereveal.recording import open_recording
from spikereveal.sim import preset, simulate_recording


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2))


@pytest.mark.slow
def test_plain_sdm_beats_the_blurry_input_by_2_db(tmp_path):
    # the gopro protocol (1920 Hz, 97-frame exposures, 1.985 vs 2.0, 0.71 % noise) at half the geometry
    config = preset("gopro", spike_height=96, spike_width=160, rgb_height=384, rgb_width=640)
    path = simulate_recording(config, tmp_path / "gopro_half", seed=0, exposures=8)
    blurry_psnr, sdm_psnr = [], []
    with open_recording(path) as recording:
        height, width = recording.meta.spike.height, recording.meta.spike.width
        for exposure in recording.exposures:
            window = recording.exposure_window(exposure.index, k=config.k)
            packed = recording.window_spikes(exposure.index)
            short = tfp_stack(packed, height, width, window.centers, 9, first_index=window.window_first)
            long = tfp_range(packed, height, width, window.exposure_first, window.exposure_stop,
                             first_index=window.window_first)
            blurry = recording.read_exposure(exposure.index)
            sharp_sequence = sdm(blurry, short, long)
            for k, frame in enumerate(recording.ground_truth_for(exposure.index)):
                truth = recording.read_ground_truth(frame)
                blurry_psnr.append(_psnr(blurry, truth))
                sdm_psnr.append(_psnr(sharp_sequence[k], truth))
    assert len(sdm_psnr) == 8 * config.k
    assert np.mean(sdm_psnr) >= np.mean(blurry_psnr) + 2.0, (np.mean(blurry_psnr), np.mean(sdm_psnr))
