"""Simulated recordings: valid, reproducible and physically consistent (tiny preset)."""

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels import index_to_time, output_timestamps, unpack_frames
from spikereveal.recording import open_recording
from spikereveal.sim import TRUTH_FILE, MotionConfig, plan_layout, plan_shots, preset, simulate_recording
from spikereveal.sim.render import Grid, render
from spikereveal.sim.rgb import quantise
from spikereveal.sim.scenes import checkerboard_image

QUIET = {"rgb_noise_std": 0.0}


def _textured_scenes():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.random((300, 420, 3)).astype(np.float32), (0, 0), 6)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return [("noise", smooth), ("board", checkerboard_image(7, 5, 20))]


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_recording(tmp_path_factory):
    config = preset("tiny", sprites=1, **QUIET)
    path = simulate_recording(config, tmp_path_factory.mktemp("sim") / "tiny", seed=7, exposures=3)
    return config, path


def test_simulated_recording_passes_the_strict_validator(tiny_recording):
    config, path = tiny_recording
    with open_recording(path, strict=True) as recording:
        assert len(recording.exposures) == 3
        assert recording.meta.preset == "tiny"
        assert (recording.meta.spike.height, recording.meta.spike.width) == (40, 64)
        assert recording.incomplete_exposures(margin_frames=config.margin_frames) == []
        for exposure in recording.exposures:
            window = recording.exposure_window(exposure.index, k=config.k)
            assert window.exposure_frames == config.exposure_frames
            frames = recording.ground_truth_for(exposure.index)
            assert [f.t_ns for f in frames] == output_timestamps(exposure.start_ns, exposure.duration_ns, 7).tolist()
            assert recording.read_ground_truth(frames[0]).shape == (3, 160, 256)
    truth = json.loads((path / TRUTH_FILE).read_text())
    assert truth["frame_count"] == recording.spikes.frame_count
    assert truth["lead_frames"] >= config.margin_frames and truth["trail_frames"] >= config.margin_frames


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    config = preset("tiny", sprites=1)
    scenes = _textured_scenes()
    one = simulate_recording(config, tmp_path / "one", seed=3, exposures=2, scenes=scenes)
    two = simulate_recording(config, tmp_path / "two", seed=3, exposures=2, scenes=scenes)
    other = simulate_recording(config, tmp_path / "other", seed=4, exposures=2, scenes=scenes)
    assert _files(one) == _files(two)
    assert (one / "spikes.dat").read_bytes() != (other / "spikes.dat").read_bytes()
    assert (one / "exposures" / "000000.png").read_bytes() != (other / "exposures" / "000000.png").read_bytes()


def test_blurry_frame_is_the_mean_of_the_renders_and_gt_the_sharp_render(tmp_path):
    config = preset("tiny", sprites=1, **QUIET)
    scenes = _textured_scenes()
    path = simulate_recording(config, tmp_path / "rec", seed=11, exposures=2, scenes=scenes)
    layout, shots = plan_shots(config, 11, 2, scenes)
    grid = Grid(config.canonical_width, config.canonical_height)
    with open_recording(path) as recording:
        for plan, shot in zip(layout.exposures, shots):
            renders = [render(shot, float(index_to_time(n, config.t0_ns, config.rate_hz)), grid)
                       for n in range(plan.first_frame, plan.stop_frame)]
            assert len(renders) == config.exposure_frames
            mean = np.mean(np.stack(renders), axis=0, dtype=np.float64)
            blurry = recording.read_exposure(plan.index).transpose(1, 2, 0)
            # 8-bit quantisation of the mean (float32 summation may move a value across a rounding edge)
            assert np.abs(blurry - mean).max() <= 0.5 / 255 + 1e-3
            assert np.mean(quantise(mean) == np.rint(blurry * 255)) > 0.99
            # a moving scene: the mean differs clearly from the first render
            assert np.abs(renders[0] - mean).mean() > 0.01
            for frame, t_ns in zip(recording.ground_truth_for(plan.index),
                                   output_timestamps(plan.start_ns, plan.duration_ns, config.k)):
                expected = quantise(render(shot, float(t_ns), grid))
                got = np.rint(recording.read_ground_truth(frame).transpose(1, 2, 0) * 255)
                np.testing.assert_array_equal(got, expected)


def test_long_window_spike_count_follows_the_gray_blurry_frame(tiny_recording):
    config, path = tiny_recording
    with open_recording(path) as recording:
        for exposure in recording.exposures:
            window = recording.exposure_window(exposure.index)
            packed = recording.spikes.read(window.exposure_first, window.exposure_stop)
            counts = unpack_frames(packed, 40, 64).sum(axis=0).astype(np.float64)
            blurry = recording.read_exposure(exposure.index).transpose(1, 2, 0)
            gray = cv2.transform(blurry, np.array([[0.11, 0.59, 0.3]], np.float32))
            gray = cv2.resize(gray, (64, 40), interpolation=cv2.INTER_AREA)
            assert np.corrcoef(counts.ravel(), gray.ravel())[0, 1] >= 0.98


def test_uniform_static_scene_fires_at_the_predicted_rate(tmp_path):
    color_bgr = np.array([40, 200, 120], np.uint8)  # gray = 0.11 B + 0.59 G + 0.3 R
    scene = np.broadcast_to(color_bgr, (200, 300, 3)).copy()
    config = preset("tiny", motion=MotionConfig.static(), sensor={"dark_spike_rate": 0.0}, exposure_frames=201,
                    **QUIET)
    path = simulate_recording(config, tmp_path / "flat", seed=0, exposures=2, scenes=[scene])
    gray = (0.11 * 40 + 0.59 * 200 + 0.3 * 120) / 255
    with open_recording(path) as recording:
        rate = unpack_frames(recording.spikes.read(0, recording.spikes.frame_count), 40, 64).mean()
        np.testing.assert_array_equal(np.rint(recording.read_exposure(0) * 255)[:, 5, 5], color_bgr)
    assert rate == pytest.approx(config.sensor.gain * gray / config.sensor.threshold, rel=0.01)


def test_dark_recording_holds_only_noise_and_hot_pixels(tmp_path):
    config = preset("tiny", scene="dark", sensor={"dark_spike_rate": 0.01, "hot_pixel_fraction": 0.005,
                                                   "hot_pixel_rate": 0.7}, rgb_noise_std=0.004)
    path = simulate_recording(config, tmp_path / "dark", seed=2, exposures=4)
    truth = json.loads((path / TRUTH_FILE).read_text())
    with open_recording(path) as recording:
        rates = unpack_frames(recording.spikes.read(0, recording.spikes.frame_count), 40, 64).mean(axis=0)
        assert recording.read_exposure(0).mean() < 2 / 255
    hot = np.zeros((40, 64), bool)
    hot[tuple(np.array(truth["hot_pixels"]).T)] = True
    assert hot.sum() == round(0.005 * 40 * 64)
    assert rates[~hot].mean() == pytest.approx(0.01, rel=0.1)
    np.testing.assert_array_equal(np.argwhere(rates > 0.3), np.array(truth["hot_pixels"]))


@pytest.mark.parametrize("offset_ns, drift_ppm", [(3_000_000, 50.0), (-4_000_000, -200.0)])
def test_clock_offset_and_drift_shift_the_written_timestamps(tmp_path, offset_ns, drift_ppm):
    config = preset("tiny", clock_offset_ns=offset_ns, clock_drift_ppm=drift_ppm)
    path = simulate_recording(config, tmp_path / "clock", seed=1, exposures=3, scenes=_textured_scenes())
    truth = json.loads((path / TRUTH_FILE).read_text())
    with open_recording(path, strict=True, margin_frames=config.margin_frames) as recording:
        for exposure, plan in zip(recording.exposures, truth["exposures"]):
            expected = plan["start_ns"] + offset_ns + round(drift_ppm * 1e-6 * (plan["start_ns"] - config.t0_ns))
            assert exposure.start_ns == expected == plan["written_start_ns"]
            assert abs(exposure.duration_ns - plan["duration_ns"] * (1 + drift_ppm * 1e-6)) <= 1
            # the true exposure still covers exactly exposure_frames spike frames
            assert plan["stop_frame"] - plan["first_frame"] == config.exposure_frames
    assert truth["clock"] == {"offset_ns": offset_ns, "drift_ppm": drift_ppm, "model": truth["clock"]["model"]}


def test_rgb_homography_renders_the_rgb_frame_through_it(tmp_path):
    # canonical (256x160) -> a 200x130 RGB camera, slightly rotated and shifted
    angle = np.radians(2.0)
    homography = np.array([[0.75 * np.cos(angle), -0.75 * np.sin(angle), 6.0],
                           [0.75 * np.sin(angle), 0.75 * np.cos(angle), 4.0],
                           [1e-5, 0.0, 1.0]])
    config = preset("tiny", rgb_homography=tuple(homography.ravel()), rgb_width=200, rgb_height=130,
                    motion=MotionConfig.static(), **QUIET)
    scenes = _textured_scenes()
    path = simulate_recording(config, tmp_path / "h", seed=5, exposures=1, scenes=scenes)
    layout, shots = plan_shots(config, 5, 1, scenes)
    t_ns = float(layout.exposures[0].start_ns)
    canonical = render(shots[0], t_ns, Grid(256, 160))
    with open_recording(path) as recording:
        assert recording.meta.rgb.width == 200 and recording.meta.rgb.height == 130
        blurry = recording.read_exposure(0).transpose(1, 2, 0)
        assert recording.read_ground_truth(0).shape == (3, 160, 256)  # ground truth lives on the canonical grid
    expected = cv2.warpPerspective(canonical, homography, (200, 130))
    interior = (slice(10, 110), slice(15, 180))
    assert np.abs(blurry[interior] - expected[interior]).mean() < 0.01
    truth = json.loads((path / TRUTH_FILE).read_text())
    np.testing.assert_allclose(truth["rgb_homography"], homography)


def test_checkerboard_scene_shows_the_whole_board(tmp_path):
    config = preset("tiny", scene="checkerboard", checkerboard_squares=(7, 5),
                    motion=MotionConfig(blur_fraction=(0.0, 0.01), base_rotation_deg=3.0), **QUIET)
    path = simulate_recording(config, tmp_path / "board", seed=0, exposures=2)
    with open_recording(path) as recording:
        for frame in (0, 7):
            image = np.rint(recording.read_ground_truth(frame).transpose(1, 2, 0) * 255).astype(np.uint8)
            found, corners = cv2.findChessboardCorners(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (6, 4))
            assert found and len(corners) == 24


def test_sprites_move_independently_of_a_static_camera(tmp_path):
    config = preset("tiny", sprites=1, motion=MotionConfig.static(), **QUIET)
    scenes = _textured_scenes()
    path = simulate_recording(config, tmp_path / "sprite", seed=9, exposures=1, scenes=scenes)
    with open_recording(path) as recording:
        first, last = recording.read_ground_truth(0), recording.read_ground_truth(6)
    changed = np.abs(first - last).max(axis=0) > 2 / 255
    assert 0.005 < changed.mean() < 0.5  # local motion: part of the frame changes, not all of it


def test_default_scenes_load_without_download(tmp_path):
    path = simulate_recording(preset("tiny"), tmp_path / "default", seed=0, exposures=1)
    truth = json.loads((path / TRUTH_FILE).read_text())
    assert truth["exposures"][0]["scene"] in {"astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                                               "camera", "brick", "gravel", "grass", "coins"}


def test_layout_leaves_margins_and_gaps():
    config = preset("tiny", gap_frames=5)
    layout = plan_layout(config, 4)
    firsts = [p.first_frame for p in layout.exposures]
    assert firsts[0] == config.margin_frames
    assert np.diff(firsts).tolist() == [config.exposure_frames + 5] * 3
    assert layout.frame_count == layout.exposures[-1].stop_frame + config.margin_frames
    assert layout.exposures[0].shot_first == 0 and layout.exposures[-1].shot_stop == layout.frame_count
    for before, after in zip(layout.exposures, layout.exposures[1:]):
        assert before.shot_stop == after.shot_first


@pytest.mark.parametrize("changes", [
    {"rgb_width": 250},  # not 4x the spikes, no homography
    {"margin_frames": 5},
    {"exposure_frames": 1},
    {"scene": "video"},
    {"spike_width": 63},
    {"rgb_homography": (1, 0, 0, 0, 1, 0, 0, 0)},
    {"motion": {"blur_fraction": (0.2, 0.1)}},
    {"sensor": {"hot_pixel_rate": 2.0}},
])
def test_invalid_configs_are_config_errors(changes):
    with pytest.raises(ConfigError):
        preset("tiny", **changes)


def test_unknown_preset_and_bad_seed():
    with pytest.raises(ConfigError, match="gopro"):
        preset("nope")
    with pytest.raises(ConfigError):
        plan_shots(preset("tiny"), -1, 1)
    with pytest.raises(ConfigError):
        plan_layout(preset("tiny"), 0)


def _cli(argv):
    from spikereveal.commands import simulate

    parser = argparse.ArgumentParser()
    simulate.register(parser.add_subparsers())
    args = parser.parse_args(["simulate", *argv])
    return args.func(args)


def test_cli_writes_a_valid_recording(tmp_path, capsys):
    out = tmp_path / "cli"
    assert _cli(["--preset", "tiny", "--exposures", "2", "--seed", "4", "--out", str(out), "--k", "5",
                 "--sprites", "1"]) == 0
    with open_recording(out) as recording:
        assert len(recording.exposures) == 2 and len(recording.ground_truth_for(0)) == 5
    with pytest.raises(ConfigError, match="not empty"):
        _cli(["--preset", "tiny", "--exposures", "1", "--out", str(out)])
    assert _cli(["--preset", "tiny", "--exposures", "1", "--out", str(out), "--overwrite", "--dark",
                 "--homography", "1,0,0,0,1,0,0,0,1", "--rgb-size", "128x80", "--clock-offset-ns", "1000"]) == 0
    truth = json.loads((out / TRUTH_FILE).read_text())
    with open_recording(out) as recording:
        assert (recording.meta.rgb.width, recording.meta.rgb.height) == (128, 80)
        assert recording.exposures[0].start_ns == truth["exposures"][0]["start_ns"] + 1000
    assert _cli(["--preset", "tiny", "--exposures", "1", "--out", str(tmp_path / "still"), "--motion-scale", "0",
                 "--checkerboard"]) == 0
    with open_recording(tmp_path / "still") as recording:  # static camera: blurry == sharp (up to RGB noise)
        assert np.abs(recording.read_exposure(0) - recording.read_ground_truth(3)).mean() < 0.01
    with pytest.raises(ConfigError, match="homography"):
        _cli(["--preset", "tiny", "--exposures", "1", "--out", str(tmp_path / "x"), "--rgb-size", "100x100"])
