"""Rig calibration: geometry (homography), clock offset and drift, photometric maps, int8 data.

Pure maths over arrays (OpenCV and numpy; no torch, no zmq). The pipeline uses one entry point:

    from spikereveal.calibration import load_rig_calibration
    calibration = load_rig_calibration(recording)          # None when there is no calibration.json
    start, duration = calibration.exposure_on_spike_clock(exposure.start_ns, exposure.duration_ns)
    blur = calibration.warp_exposure(recording.read_exposure(i))   # (3, 4h, 4w) canonical grid
    spikes = calibration.correct_spike_frames(ldn_spikes)           # hot pixels filled
    counts = calibration.correct_counts(counts, frames)             # + dark rate subtracted
"""

from spikereveal.calibration.clock import ClockCalibration
from spikereveal.calibration.errors import CalibrationError
from spikereveal.calibration.geometry import GeometryCalibration, corner_error_px, warp_to_canonical
from spikereveal.calibration.photometric import PhotometricCalibration, dark_maps
from spikereveal.calibration.store import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    RigCalibration,
    load_rig_calibration,
    read_calibration,
    update_calibration,
    write_calibration,
)

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "CalibrationError",
    "ClockCalibration",
    "GeometryCalibration",
    "PhotometricCalibration",
    "RigCalibration",
    "corner_error_px",
    "dark_maps",
    "load_rig_calibration",
    "read_calibration",
    "update_calibration",
    "warp_to_canonical",
    "write_calibration",
]
