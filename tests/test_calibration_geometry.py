"""Geometry: the homography canonical -> RGB recovered from simulated rigs (checkerboard and target-free),
the refusals, and the pure helpers (grid mapping, warping, corner error)."""

import cv2
import numpy as np
import pytest

from calibration_support import TRUE_HOMOGRAPHY, checkerboard_recording, flat_recording, misaligned_recording
from spikereveal.calibration import CalibrationError, corner_error_px, warp_to_canonical
from spikereveal.calibration import geometry as geo
from spikereveal.calibration.fit import calibrate_geometry
from spikereveal.recording import open_recording
from spikereveal.sim.scenes import checkerboard_image

TARGET_PX = 0.5  # issue 7: <= 0.5 px RMS corner error on the canonical grid


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    return misaligned_recording(tmp_path_factory.mktemp("geo") / "footage", exposures=4)


@pytest.mark.slow
def test_target_free_recovers_the_homography(footage):
    with open_recording(footage) as recording:
        result = calibrate_geometry(recording, "features")
        error = corner_error_px(result.homography, TRUE_HOMOGRAPHY, recording.meta.spike.canonical_shape)
    assert error <= TARGET_PX, f"corner error {error:.3f} px"
    assert result.method == "features" and result.inliers >= 2 and result.residual_px <= 1.0


@pytest.mark.slow
def test_checkerboard_recovers_the_homography(tmp_path):
    path = checkerboard_recording(tmp_path / "board", exposures=3)
    with open_recording(path) as recording:
        result = calibrate_geometry(recording, "checkerboard")
        error = corner_error_px(result.homography, TRUE_HOMOGRAPHY, recording.meta.spike.canonical_shape)
        assert result.points == 40 * len(result.exposures) and result.residual_px < 1.0
        assert error <= TARGET_PX, f"corner error {error:.3f} px"
        with pytest.raises(CalibrationError, match=r"no 7x4-inner-corner checkerboard was found"):
            calibrate_geometry(recording, "checkerboard", board_inner_corners=(7, 4), max_exposures=1)


def test_no_checkerboard_in_ordinary_footage_is_refused(footage):
    with open_recording(footage) as recording:
        with pytest.raises(CalibrationError, match="checkerboard was found in both cameras in any of the 2"):
            calibrate_geometry(recording, "checkerboard", max_exposures=2)


def test_too_little_texture_is_refused(tmp_path):
    with open_recording(flat_recording(tmp_path / "flat", exposures=2)) as recording:
        with pytest.raises(CalibrationError, match="too little texture"):
            calibrate_geometry(recording, "features")


def test_disagreeing_alignments_are_refused():
    canonical = (40, 60)
    a = np.eye(3)
    b = np.array([[1.0, 0, 3.0], [0, 1.0, 0], [0, 0, 1.0]])
    with pytest.raises(CalibrationError, match="disagree by"):
        geo.fit_target_free([(0, a, 0.99, "prior"), (1, b, 0.99, "prior")], canonical, 2, [])
    with pytest.raises(CalibrationError, match="succeeded on 1 of 3"):
        geo.fit_target_free([(0, a, 0.99, "prior")], canonical, 3, ["too little texture"])


def test_checkerboard_corners_on_synthetic_images_match_in_order():
    """Both detections describe the same board corners in the same order, whatever the detector's
    orientation, and the fit recovers a known homography from sharp synthetic views."""
    board = checkerboard_image(9, 6, square_px=24, pad_ratio=1.3).astype(np.float32)[:, :, 0] / 255
    canonical = cv2.resize(board, (384, 256), interpolation=cv2.INTER_AREA)
    truth = np.array([[0.8, 0.03, 12.0], [-0.02, 0.82, 6.0], [5e-5, 2e-5, 1.0]])
    rgb = cv2.warpPerspective(canonical, truth, (340, 230), flags=cv2.INTER_LINEAR)
    pair, missed = geo.checkerboard_correspondences(canonical, rgb, (8, 5))
    assert missed is None
    result = geo.fit_checkerboard([pair], [0], (8, 5), 1, {})
    assert corner_error_px(result.homography, truth, canonical.shape) < 0.3
    # a detector returning the grid rotated by 180 degrees is put back in order
    flipped = geo._orient_like(pair[0], canonical.shape, pair[1][::-1].copy(), rgb.shape, (8, 5))
    np.testing.assert_array_equal(flipped, pair[1])
    assert geo.find_checkerboard(np.full((100, 100), 0.5, np.float32)) is None


def test_grids_and_warping_are_consistent():
    rng = np.random.default_rng(0)
    spike = rng.random((10, 14)).astype(np.float32)
    # area-down of a nearest-up image gives back the spike image: pixel (j, i) <-> canonical 4j..4j+3
    np.testing.assert_allclose(geo.canonical_to_spike(np.kron(spike, np.ones((4, 4), np.float32))), spike, atol=1e-6)
    # bilinear up keeps the centres: spike pixel centre j sits at canonical 4j + 1.5
    up = geo.spike_to_canonical(np.tile(np.arange(14, dtype=np.float32), (10, 1)))
    np.testing.assert_allclose(up[5, 4 * 3 + 1] * 0.5 + up[5, 4 * 3 + 2] * 0.5, 3.0, atol=1e-6)
    # the scale prior maps canonical pixel centres onto RGB pixel centres of a same-view camera
    prior = geo.scale_prior((40, 56), (20, 28))
    np.testing.assert_allclose(geo.project(prior, [[0.5, 0.5], [54.5, 38.5]]), [[0, 0], [27, 19]])
    # warping with a pure translation moves content by exactly that much
    image = rng.random((3, 30, 40)).astype(np.float32)
    shift = np.array([[1.0, 0, 2.0], [0, 1.0, 3.0], [0, 0, 1.0]])
    warped = warp_to_canonical(image, shift, (20, 30))
    np.testing.assert_allclose(warped[:, 0:20, 0:30], image[:, 3:23, 2:32], atol=1e-6)
    assert corner_error_px(shift, shift, (20, 30)) == pytest.approx(0.0, abs=1e-9)
    assert corner_error_px(shift, np.eye(3), (20, 30)) == pytest.approx(np.hypot(2, 3))
    with pytest.raises(Exception, match="singular"):
        warp_to_canonical(image, np.zeros((3, 3)), (20, 30))


def test_overlay_draws_edges_over_the_spike_image():
    board = checkerboard_image(5, 4, square_px=8, pad_ratio=1.2).astype(np.float32)[:, :, 0] / 255
    canonical = cv2.resize(board, (96, 80), interpolation=cv2.INTER_AREA)
    spike = geo.canonical_to_spike(canonical)
    overlay = geo.overlay_image(spike, np.repeat(canonical[None], 3, axis=0))
    assert overlay.shape == (80, 96, 3) and overlay.dtype == np.uint8
    red = (overlay[:, :, 2] == 255) & (overlay[:, :, 0] == 0)
    assert 0.01 < red.mean() < 0.4
