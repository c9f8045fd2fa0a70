"""Rig calibration: geometry (homography), clock offset and drift, photometric maps."""
