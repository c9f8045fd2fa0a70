"""Scene families, motion families, sensor spread, the generalisation suite and their CLI (tiny preset)."""

import json
import socket

import cv2
import numpy as np
import pytest

from spikereveal.cli import main
from spikereveal.errors import ConfigError
from spikereveal.recording import open_recording
from spikereveal.sim import (
    TRUTH_FILE,
    motion_family,
    plan_shots,
    preset,
    scaled_motion,
    scaled_sensor,
    simulate_recording,
)
from spikereveal.sim.procedural import dead_leaves, sample_leaf_radii, synthetic
from spikereveal.sim.render import Grid, Shot, render
from spikereveal.sim.scenes import DEFAULT_SCENE_NAMES, SKIMAGE_SPLITS, family_scene_images
from spikereveal.sim.suites import GENERALISATION, SPLITS, suite

QUIET = {"rgb_noise_std": 0.0}


def _files(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _spike_rate(path) -> float:
    with open_recording(path) as recording:
        packed = recording.spikes.read(0, recording.spikes.frame_count)
    return float(np.unpackbits(packed).mean())


# --- scene families -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("generate", [dead_leaves, synthetic])
def test_generators_are_seeded(generate):
    one = generate(np.random.default_rng(5), (200, 120))
    two = generate(np.random.default_rng(5), (200, 120))
    other = generate(np.random.default_rng(6), (200, 120))
    assert one.shape == (120, 200, 3) and one.dtype == np.uint8
    assert one.tobytes() == two.tobytes() and one.tobytes() != other.tobytes()
    assert one.std() > 10  # not a flat field
    with pytest.raises(ConfigError, match="16x16"):
        generate(np.random.default_rng(0), (8, 100))


def test_leaf_radii_follow_the_dead_leaves_power_law():
    radii = sample_leaf_radii(np.random.default_rng(0), 200_000, 2.0, 200.0)
    assert radii.min() >= 2.0 and radii.max() <= 200.0
    edges = np.geomspace(2.0, 100.0, 12)
    counts, _ = np.histogram(radii, edges)
    density = counts / np.diff(edges)
    slope = np.polyfit(np.log(np.sqrt(edges[1:] * edges[:-1])), np.log(density), 1)[0]
    assert -3.2 < slope < -2.8


def test_dead_leaves_are_occluding_coloured_textured_shapes():
    image, labels, radii = dead_leaves(np.random.default_rng(1), (384, 256), return_labels=True)
    visible, area = np.unique(labels[labels >= 0], return_counts=True)
    assert (labels < 0).mean() < 0.2  # the leaves cover nearly everything
    assert 50 < len(visible) < 0.9 * len(radii)  # many leaves, and many fully hidden by later ones
    # occlusion: large leaves are mostly hidden behind later ones (visible area << their full area)
    big = visible[radii[visible] > 30]
    full = np.pi * radii[big] ** 2
    assert len(big) and np.median(area[np.searchsorted(visible, big)] / full) < 0.6
    colours = {tuple(c // 16) for c in image.reshape(-1, 3)[:: 7]}
    assert len(colours) > 100
    # textured leaves: inside some big visible leaves the colour varies (beyond the edge blur)
    interior = [cv2.erode((labels == i).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for i in visible[area > 1500]]
    spread = [image[inside].std(axis=0).max() for inside in interior if inside.sum() > 200]
    assert max(spread) > 15 and min(spread) < 3  # textured ones and flat ones


def test_skimage_splits_are_disjoint_varied_and_load_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    names = [set(v) for v in SKIMAGE_SPLITS.values()]
    assert sum(len(n) for n in names) == len(set().union(*names))  # disjoint
    train, val, test = (len(SKIMAGE_SPLITS[f"skimage-{s}"]) for s in SPLITS)
    assert train >= val + test - 1 and min(val, test) >= 4
    for trio in (("astronaut", "coffee", "chelsea"),):  # colour photos are spread over the splits
        assert len({next(k for k, v in SKIMAGE_SPLITS.items() if name in v) for name in trio}) == 3
    for family in SKIMAGE_SPLITS:
        for name, image in family_scene_images(family):
            assert image.dtype == np.uint8 and image.ndim == 3 and min(image.shape[:2]) >= 128, name
            assert image.mean() > 40, f"{name} is mostly black"
    assert [n for n, _ in family_scene_images("default")] == list(DEFAULT_SCENE_NAMES)
    with pytest.raises(ConfigError, match="deadleaves"):
        family_scene_images("skimage-all")


def test_generated_scenes_are_new_per_exposure_and_larger_than_the_frame():
    config = preset("tiny")
    _, shots = plan_shots(config, 3, 3, scenes="deadleaves")
    assert all(s.light.shape == (240, 384, 3) for s in shots)  # 1.5 x the 256x160 canonical frame
    assert len({s.light.tobytes() for s in shots}) == 3
    _, mixed = plan_shots(config, 0, 12, scenes="mixed-train")
    assert {s.family for s in mixed} == {"deadleaves", "synthetic", "skimage-train"}
    assert {s.name for s in mixed if s.family == "skimage-train"} <= set(SKIMAGE_SPLITS["skimage-train"])


def test_family_recordings_are_reproducible(tmp_path):
    config = preset("tiny", sprites=1, motion=motion_family("objects"))
    one = simulate_recording(config, tmp_path / "one", seed=2, exposures=2, scenes="mixed-train")
    two = simulate_recording(config, tmp_path / "two", seed=2, exposures=2, scenes="mixed-train")
    other = simulate_recording(config, tmp_path / "other", seed=3, exposures=2, scenes="mixed-train")
    assert _files(one) == _files(two)
    assert (one / "spikes.dat").read_bytes() != (other / "spikes.dat").read_bytes()
    truth = json.loads((one / TRUTH_FILE).read_text())
    assert truth["scene_family"] == "mixed-train" and truth["motion_family"] == "objects"
    assert truth["sensor"]["threshold"] == 2.0
    assert all(e["sprites"] == 1 and 2 <= e["objects"] <= 5 for e in truth["exposures"])
    with open_recording(one, strict=True) as recording:
        assert len(recording.exposures) == 2


# --- motion families ------------------------------------------------------------------------------------------


def test_objects_move_fast_over_a_nearly_static_background():
    config = preset("tiny", motion=motion_family("objects"), **QUIET)
    width = config.canonical_width
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, 159, 1], [width - 1, 159, 1]], float).T
    layout, shots = plan_shots(config, 4, 4, scenes="skimage-val")
    for plan, shot in zip(layout.exposures, shots):
        assert 2 <= shot.objects == len(shot.sprites) <= 5
        start, end = float(plan.start_ns), float(plan.start_ns + plan.duration_ns)
        # the background moves at most ~2 % of the width over the exposure (frame corners, canonical px)
        camera = shot.camera
        moved = np.linalg.inv(camera.canonical_to_source(end)) @ camera.canonical_to_source(start) @ corners
        assert np.abs(moved[:2] - corners[:2]).max() < 0.03 * width
        # each object's centre travels 5-15 % of the width
        for sprite in shot.sprites:
            centre = np.array([(sprite.patch.shape[1] - 1) / 2, (sprite.patch.shape[0] - 1) / 2, 1.0])
            a, b = (np.linalg.inv(sprite.canonical_to_patch(t)) @ centre for t in (start, end))
            assert 0.05 * width - 1e-6 <= np.hypot(*(b - a)[:2]) <= 0.15 * width + 1e-6


def test_objects_occlude_a_static_background():
    config = preset("tiny", motion=scaled_motion(motion_family("objects"), 0.0), **QUIET)
    grid = Grid(config.canonical_width, config.canonical_height)
    layout, shots = plan_shots(config, 2, 2, scenes="skimage-test")
    for plan, shot in zip(layout.exposures, shots):
        start, end = float(plan.start_ns), float(plan.start_ns + plan.duration_ns)
        background = Shot(shot.name, shot.light, shot.camera)
        assert np.array_equal(render(background, start, grid), render(background, end, grid))
        full = {t: render(shot, t, grid) for t in (start, end)}
        covered = np.abs(full[start] - render(background, start, grid)).max(axis=2) > 0.02
        assert 0.02 < covered.mean() < 0.9  # objects hide part of the background
        assert np.abs(full[start] - full[end]).max(axis=2)[covered].mean() > 0.02  # and move


def test_objects_are_cut_from_another_image_than_the_background():
    black, white = np.zeros((200, 300, 3), np.uint8), np.full((200, 300, 3), 255, np.uint8)
    config = preset("tiny", motion=motion_family("objects"), **QUIET)
    _, shots = plan_shots(config, 1, 4, scenes=[("black", black), ("white", white)])
    for shot in shots:
        source = 1.0 if shot.name == "black" else 0.0
        for sprite in shot.sprites:
            alpha = sprite.patch[:, :, 3]
            assert 0.15 < (alpha > 0.5).mean() < 0.95  # a shape, not the whole square
            assert np.any((alpha > 0.05) & (alpha < 0.95))  # with an anti-aliased edge
            colour = sprite.patch[:, :, :3][alpha > 0.5] / alpha[alpha > 0.5][:, None]
            assert np.allclose(colour, source, atol=1e-4)


# --- sensor spread --------------------------------------------------------------------------------------------


def test_threshold_scale_two_halves_the_firing_rate(tmp_path):
    base = preset("tiny", **QUIET)
    rates = {}
    for scale in (1.0, 2.0):
        config = base.with_changes(sensor=scaled_sensor(base.sensor, scale))
        rates[scale] = _spike_rate(simulate_recording(config, tmp_path / f"x{scale}", seed=5, exposures=2))
    assert rates[2.0] / rates[1.0] == pytest.approx(0.5, rel=0.1)
    with pytest.raises(ConfigError, match="threshold_scale"):
        scaled_sensor(base.sensor, 0.0)
    with pytest.raises(ConfigError, match="threshold_scale"):
        scaled_sensor(base.sensor, float("nan"))


# --- suite ----------------------------------------------------------------------------------------------------


def test_generalisation_suite_table():
    entries = suite("generalisation")
    assert entries is GENERALISATION
    assert len({e.name for e in entries}) == len(entries) and len({e.seed for e in entries}) == len(entries)
    train = [e for e in entries if e.split == "train"]
    assert len(train) == 8 and all(e.exposures == 8 and e.scenes == "mixed-train" for e in train)
    assert all(e.motion == "camera" and e.preset == "gopro" for e in train)
    assert {e.motion_scale for e in train} == {0.3, 0.6, 1.0, 1.4}
    assert {e.threshold_scale for e in train} == {0.9, 1.0, 1.25, 1.5}
    assert {e.noise_rate for e in train} == {0.003, 0.0071, 0.015}
    assert {e.hot_pixel_fraction for e in train} == {0.0, 0.0005}
    assert {e.threshold_mismatch for e in train} == {0.0, 0.02} and {e.sprites for e in train} == {0, 1, 2}
    val = {e.name: e for e in entries if e.split == "val"}
    assert set(val) == {"val_camera", "val_objects", "val_th3"}
    assert all(e.scenes == "skimage-val" and e.exposures == 4 for e in val.values())
    assert val["val_objects"].motion == "objects" and val["val_th3"].config().sensor.threshold == 6.0
    test = {e.name: e for e in entries if e.split == "test"}
    assert set(test) == {f"test_{k}_{ab}" for k in ("camera", "objects", "th2", "th4") for ab in "ab"}
    assert all(e.scenes == "skimage-test" and e.exposures == 4 for e in test.values())
    assert test["test_th2_a"].config().sensor.threshold == 4.0 and test["test_th4_b"].threshold_scale == 4.0
    with pytest.raises(ConfigError, match="generalisation"):
        suite("nope")


def test_adaptation_suite_is_an_unseen_rig():
    from spikereveal.sim.suites import ADAPTATION

    entries = suite("adaptation")
    assert entries is ADAPTATION and len(entries) == 6
    rigs = {(e.split, e.scenes, e.threshold_scale) for e in entries}
    # settings are chosen on a val rig (val scenes, x3); the reported rig has test scenes at x4, and its in-domain
    # reference the same scenes and motion (same seeds) on the preset's sensor
    assert rigs == {("val", "skimage-val", 3.0), ("test", "skimage-test", 4.0), ("test", "skimage-test", 1.0)}
    by_name = {e.name: e for e in entries}
    for tag in "ab":
        twin, rig = by_name[f"adapt_th1_{tag}"], by_name[f"adapt_th4_{tag}"]
        assert (twin.seed, twin.exposures, twin.motion) == (rig.seed, rig.exposures, rig.motion)
    assert all(e.exposures == 8 for e in entries)
    # no seed and no path shared with the generalisation suite: adapting never trains on a reported recording
    assert not {e.seed for e in entries} & {e.seed for e in GENERALISATION}
    assert not {e.path("r") for e in entries} & {e.path("r") for e in GENERALISATION}


def test_sensor_matched_recordings_sit_around_the_rigs_threshold(tmp_path):
    from spikereveal.sim.suites import ADAPTATION, sensor_matched, write_entry

    entries = sensor_matched(3.5, 20)
    assert [e.exposures for e in entries] == [8, 8, 4] and [e.name for e in entries] == [
        "matched_00", "matched_01", "matched_02"]
    assert all(e.split == "train" and e.scenes == "mixed-train" and e.motion == "camera" for e in entries)
    assert all(3.5 * 0.9 - 1e-9 <= e.threshold_scale <= 3.5 * 1.1 + 1e-9 for e in entries)
    assert not {e.seed for e in entries} & {e.seed for e in GENERALISATION + ADAPTATION}
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="at least 1 exposure"):
            sensor_matched(3.0, bad)
    with pytest.raises(ConfigError, match="threshold_scale"):
        sensor_matched(0.0, 8)
    # written on another geometry (a rig's) with ground truth at every one of k timestamps
    changes = {"spike_height": 16, "spike_width": 24, "rgb_height": 64, "rgb_width": 96, "exposure_frames": 13, "k": 13}
    path = write_entry(sensor_matched(2.0, 2)[0], tmp_path, changes=changes, preset_name="tiny")
    with open_recording(path, strict=True) as recording:
        assert (recording.meta.spike.height, recording.meta.spike.width) == (16, 24)
        assert len(recording.exposures) == 2 and len(recording.ground_truth_for(0)) == 13
    truth = json.loads((path / TRUTH_FILE).read_text())
    assert truth["labels"]["exposure_frames"] == 13 and truth["sensor"]["threshold"] == pytest.approx(
        2.0 * preset("tiny").sensor.threshold)


def test_suite_cli_writes_skips_and_records_labels(tmp_path, capsys):
    argv = ["simulate", "--suite", "generalisation", "--preset", "tiny", "--exposures-scale", "0.01",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("wrote ") == len(GENERALISATION)
    for entry in GENERALISATION:
        path = tmp_path / entry.split / entry.name
        with open_recording(path, strict=True) as recording:
            assert len(recording.exposures) == 1
        labels = json.loads((path / TRUTH_FILE).read_text())["labels"]
        assert labels["suite"] == "generalisation" and labels["name"] == entry.name and labels["preset"] == "tiny"
    th4 = json.loads((tmp_path / "test" / "test_th4_a" / TRUTH_FILE).read_text())
    assert th4["sensor"]["threshold"] == 8.0 and th4["scene_family"] == "skimage-test"
    (tmp_path / "val" / "val_th3" / TRUTH_FILE).unlink()  # as if interrupted: rewritten
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == len(GENERALISATION) - 1 and out.count("wrote ") == 1 and "val_th3" in out


# --- CLI ------------------------------------------------------------------------------------------------------


def test_cli_lists_match_the_library():
    from spikereveal.commands import simulate as command
    from spikereveal.sim import MOTION_FAMILIES, PRESETS, SCENE_FAMILIES
    from spikereveal.sim.suites import SUITES

    assert command.SCENE_FAMILIES == SCENE_FAMILIES and command.MOTION_FAMILIES == MOTION_FAMILIES
    assert set(command.SUITE_NAMES) == set(SUITES) and set(command.PRESET_NAMES) == set(PRESETS)


def test_cli_families_and_sensor_flags(tmp_path):
    out = tmp_path / "rec"
    assert main(["simulate", "--preset", "tiny", "--exposures", "1", "--out", str(out), "--scenes", "synthetic",
                 "--motion", "objects", "--threshold-scale", "1.5", "--noise-rate", "0.003",
                 "--hot-pixel-fraction", "0.001", "--threshold-mismatch", "0.02"]) == 0
    truth = json.loads((out / TRUTH_FILE).read_text())
    assert truth["scene_family"] == "synthetic" and truth["motion_family"] == "objects"
    assert truth["sensor"]["threshold"] == 3.0 and truth["sensor"]["dark_spike_rate"] == 0.003
    assert truth["sensor"]["hot_pixel_fraction"] == 0.001 and truth["sensor"]["threshold_mismatch"] == 0.02
    assert len(truth["hot_pixels"]) == round(0.001 * 40 * 64) and truth["labels"]["threshold_scale"] == 1.5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold-scale", "0"], "threshold-scale"),
        (["--threshold-scale", "nan"], "threshold-scale"),
        (["--threshold-scale", "-2"], "threshold-scale"),
        (["--noise-rate", "1.5"], "noise-rate"),
        (["--hot-pixel-fraction", "inf"], "hot-pixel-fraction"),
        (["--threshold-mismatch", "-0.1"], "threshold-mismatch"),
        (["--motion-scale", "nan"], "motion-scale"),
        (["--scenes", "deadleaves", "--images", "x"], "not allowed with"),
        (["--scenes", "nope"], "invalid choice"),
        (["--motion", "wobble"], "invalid choice"),
        (["--exposures-scale", "0.5"], "only applies to --suite"),
        (["--suite", "generalisation", "--seed", "3", "--threshold-scale", "2"], "drop --seed, --threshold-scale"),
        (["--suite", "generalisation", "--exposures-scale", "0"], "exposures-scale"),
    ],
)
def test_cli_refuses_bad_values_with_exit_code_2(tmp_path, capsys, extra, message):
    argv = ["simulate", "--preset", "tiny", "--out", str(tmp_path / "bad"), *extra]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
