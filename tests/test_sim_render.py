"""Rendering pieces of the simulator: compositing kernel, spike-grid intensity, motion, gamma, scenes."""

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.sim.config import MotionConfig
from spikereveal.sim.motion import sample_camera
from spikereveal.sim.render import Grid, Shot, composite_premultiplied, render, spike_intensity
from spikereveal.sim.rgb import blurry_frame, quantise
from spikereveal.sim.scenes import linear_to_srgb, load_scene_images, srgb_to_linear
from twins import reference_composite


@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (16, 9), (0, 4)])
def test_composite_kernel_matches_numpy_twin(height, width):
    rng = np.random.default_rng(height * 10 + width)
    frame = rng.random((height, width, 3), dtype=np.float32)
    alpha = rng.random((height, width, 1), dtype=np.float32)
    alpha[::2] = 0.0  # fully transparent rows are skipped by the kernel
    layer = np.concatenate([rng.random((height, width, 3), dtype=np.float32) * alpha, alpha], axis=2)
    expected = reference_composite(frame, layer)
    got = composite_premultiplied(frame.copy(), layer)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_composite_into_a_view_and_bad_shapes():
    frame = np.zeros((6, 8, 3), np.float32)
    layer = np.ones((2, 3, 4), np.float32)
    composite_premultiplied(frame[1:3, 2:5], layer)
    assert frame.sum() == 2 * 3 * 3 and frame[1:3, 2:5].min() == 1.0
    with pytest.raises(ConfigError):
        composite_premultiplied(frame, layer)
    with pytest.raises(ConfigError):
        composite_premultiplied(frame.astype(np.float64), np.ones((6, 8, 4)))


def test_spike_intensity_is_the_gray_4x4_box_mean():
    rng = np.random.default_rng(0)
    light = rng.random((24, 40, 3), dtype=np.float32)
    gray = 0.11 * light[:, :, 0] + 0.59 * light[:, :, 1] + 0.3 * light[:, :, 2]  # BGR
    expected = gray.reshape(6, 4, 10, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(spike_intensity(light), expected, atol=1e-6)


def test_camera_motion_is_seeded_smooth_and_stays_in_the_scene():
    motion = MotionConfig()
    cams = [sample_camera(np.random.default_rng(s), motion, (500, 400), (256, 160), 1e6, 5e6, 1.0) for s in (1, 1, 2)]
    np.testing.assert_array_equal(cams[0].canonical_to_source(2e6), cams[1].canonical_to_source(2e6))
    assert not np.allclose(cams[0].canonical_to_source(2e6), cams[2].canonical_to_source(2e6))
    corners = np.array([[0, 0, 1], [255, 0, 1], [0, 159, 1], [255, 159, 1]], float).T
    previous = None
    for t in np.linspace(1e6 - 5e6, 1e6 + 5e6, 41):  # u from -1 to 1
        source = cams[0].canonical_to_source(t) @ corners
        assert source[0].min() >= -0.5 and source[0].max() <= 499.5
        assert source[1].min() >= -0.5 and source[1].max() <= 399.5
        if previous is not None:  # 1/20 of an exposure moves the view by a small fraction of it
            assert np.abs(source - previous).max() < 0.1 * 256 / cams[0].magnification
        previous = source
    # the blur vector is what the config asks for
    speed = np.hypot(*cams[0].velocity_xy)
    assert motion.blur_fraction[0] * 256 <= speed <= motion.blur_fraction[1] * 256


def test_static_camera_renders_the_same_frame_at_all_times():
    rng = np.random.default_rng(0)
    light = rng.random((100, 150, 3), dtype=np.float32)
    camera = sample_camera(rng, MotionConfig.static(), (150, 100), (64, 40), 0.0, 1e6, 1.0)
    shot = Shot("noise", light, camera)
    np.testing.assert_array_equal(render(shot, 0.0, Grid(64, 40)), render(shot, 7e5, Grid(64, 40)))
    assert render(Shot("dark", None, None), 0.0, Grid(64, 40)).max() == 0.0


def test_linear_light_blur_averages_decoded_light():
    values = np.array([0.0, 0.2, 0.5, 0.9, 1.0], np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-5)
    dark, bright = np.zeros((2, 2, 3), np.float32), np.ones((2, 2, 3), np.float32)
    rng = np.random.default_rng(0)
    plain = blurry_frame(dark + bright, 2, False, 0.0, rng)
    linear = blurry_frame(srgb_to_linear(dark) + srgb_to_linear(bright), 2, True, 0.0, rng)
    assert plain[0, 0, 0] == 128  # mean of display values
    assert linear[0, 0, 0] == quantise(linear_to_srgb(np.float32(0.5)))  # mean of light, re-encoded (~188)
    assert linear[0, 0, 0] > 180


def test_scene_images_from_a_folder(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "b.png"), np.full((40, 50), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((30, 30, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    scenes = load_scene_images(tmp_path)
    assert [name for name, _ in scenes] == ["a.jpg", "b.png"]
    assert scenes[1][1].shape == (40, 50, 3)
    assert load_scene_images(tmp_path / "b.png")[0][0] == "b.png"
    with pytest.raises(ConfigError):
        load_scene_images(tmp_path / "missing")
    with pytest.raises(ConfigError):
        load_scene_images(tmp_path / "notes.txt")
