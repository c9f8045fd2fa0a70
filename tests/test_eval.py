"""Evaluation against ground truth: metrics, report schema, plots, re-blur, CLI and error paths."""

from __future__ import annotations

import argparse
import json
import shutil

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

from spikereveal.engines.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from spikereveal.engines.ldn import LDN  # noqa: E402
from spikereveal.errors import ConfigError, RecordingError  # noqa: E402
from spikereveal.recording import open_recording  # noqa: E402
from spikereveal.training import datasets as ds  # noqa: E402
from spikereveal.training import evaluate as ev  # noqa: E402
from spikereveal.training.bsn import BSN, BSNConfig  # noqa: E402
from spikereveal.training.sr import SR, SRConfig  # noqa: E402
from training_support import TINY_GT_PER_EXPOSURE, write_recording  # noqa: E402

EXPOSURES = 2


@pytest.fixture(scope="module")
def recording(tiny_recording):
    return tiny_recording(seed=11, exposures=EXPOSURES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    nets = {"ldn": LDN(), "bsn": BSN(BSNConfig(6, 8)), "sr": SR(SRConfig(residual_blocks=2, features=8))}
    paths = {}
    for kind, model in nets.items():
        paths[kind] = folder / f"{kind}.pt"
        save_checkpoint(paths[kind], kind, model, model.config)
    return paths


def _flat(values: dict) -> dict:
    """A method's scores with the per-channel colour errors as keys of their own (pytest.approx is flat)."""
    flat = {key: value for key, value in values.items() if not isinstance(value, dict)}
    flat.update({f"{key}.{c}": v for key, value in values.items() if isinstance(value, dict) for c, v in value.items()})
    return flat


def _blurry_student(blurry, spikes):
    """A stand-in student that returns the blurry frame at every timestamp."""
    return np.broadcast_to(blurry, (spikes.shape[0],) + blurry.shape).copy()


# -- metrics -----------------------------------------------------------------------------------------------
def test_psnr_and_ssim_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((3, 20, 26)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    assert ev.psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)
    expected = metrics.structural_similarity(a, b, channel_axis=0, data_range=1.0, gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False)
    assert ev.ssim(a, b) == pytest.approx(expected, abs=1e-9)
    assert ev.ssim_numpy(a, b) == pytest.approx(expected, abs=1e-6)
    assert ev.psnr(a, a) == ev.PSNR_CAP_DB


def test_colour_metrics_on_synthetic_frames():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.2, 0.8, (3, 16, 20))
    shifted = truth + np.array([0.02, 0.0, -0.05])[:, None, None]  # bluer, less red
    np.testing.assert_allclose(ev.channel_mean_error(truth, shifted), [0.02, 0.0, -0.05], atol=1e-12)
    grey = np.broadcast_to(truth.mean(axis=0), truth.shape)
    assert ev.mean_saturation(grey) == pytest.approx(0.0)
    assert ev.mean_saturation(np.zeros((3, 4, 4))) == 0.0  # black: saturation 0, not nan
    assert ev.mean_saturation(np.array([1.0, 0.5, 0.0])[:, None, None]) == pytest.approx(1.0)
    assert ev.mean_saturation(truth) > 0.2

    summary = ev._color_summary([ev.channel_mean_error(truth, shifted)] * 2,
                                [ev.mean_saturation(grey)] * 2, [ev.mean_saturation(truth)] * 2)
    assert summary["color_mean_error_pct"] == pytest.approx({"b": 2.0, "g": 0.0, "r": -5.0})
    assert summary["color_max_abs_error_pct"] == pytest.approx(5.0)
    assert summary["saturation_ratio"] == pytest.approx(0.0)
    half = truth.mean(axis=0) + (truth - truth.mean(axis=0)) / 2  # half as far from grey: less colourful
    ratio = ev._color_summary([np.zeros(3)], [ev.mean_saturation(half)], [ev.mean_saturation(truth)])
    assert 0.3 < ratio["saturation_ratio"] < 0.7
    assert ev._color_summary([np.zeros(3)], [0.1], [0.0])["saturation_ratio"] is None  # grey truth: no ratio


def _shifted_student(blurry, spikes):
    """A stand-in student: the blurry frame with its blue channel raised by 10 % of full scale."""
    frames = np.broadcast_to(blurry, (spikes.shape[0],) + blurry.shape).copy()
    frames[:, 0] += 0.1
    return frames


def _grey_student(blurry, spikes):
    """A stand-in student: the blurry frame's gray, in all three channels."""
    return np.broadcast_to(blurry.mean(axis=0), (spikes.shape[0],) + blurry.shape).copy()


# -- evaluate() --------------------------------------------------------------------------------------------
def test_report_covers_every_ground_truth_frame(recording, tmp_path):
    report = ev.evaluate([recording], student=_blurry_student, options=ev.EvalOptions(plot_dir=str(tmp_path)))
    assert set(report["methods"]) == {"blurry", "sdm", "student"}
    for values in report["methods"].values():
        assert set(values) == {"psnr", "ssim", "psnr_center", "ssim_center", "color_mean_error_pct",
                               "color_max_abs_error_pct", "saturation_ratio"}
        assert set(values["color_mean_error_pct"]) == {"b", "g", "r"}
    assert report["frames"] == EXPOSURES * TINY_GT_PER_EXPOSURE
    assert len(report["exposures"]) == EXPOSURES
    assert report["metrics"]["ssim"]["window"] == 11 and report["metrics"]["ssim"]["data_range"] == 1.0
    # the stand-in student returns the blurry input: the same scores, and a perfect re-blur
    assert _flat(report["methods"]["student"]) == pytest.approx(_flat(report["methods"]["blurry"]))
    assert report["reblur_psnr"] == ev.PSNR_CAP_DB
    json.dumps(report, allow_nan=False)

    with open_recording(recording) as rec:  # the blurry figures, recomputed independently
        scores = [ev.psnr(rec.read_ground_truth(f), rec.read_exposure(f.exposure_index)) for f in rec.ground_truth]
        centre_frames = []
        for exposure in rec.exposures:
            frames = rec.ground_truth_for(exposure.index)
            middle = exposure.start_ns + exposure.duration_ns / 2
            centre_frames.append(min(frames, key=lambda f: abs(f.t_ns - middle)))
        centre = [ev.psnr(rec.read_ground_truth(f), rec.read_exposure(f.exposure_index)) for f in centre_frames]
        truth_reblur = [ev.psnr(rec.read_exposure(e.index),
                                np.mean([rec.read_ground_truth(f) for f in rec.ground_truth_for(e.index)], axis=0))
                        for e in rec.exposures]
    assert report["methods"]["blurry"]["psnr"] == pytest.approx(np.mean(scores))
    assert report["methods"]["blurry"]["psnr_center"] == pytest.approx(np.mean(centre))
    assert report["reblur_psnr_ground_truth"] == pytest.approx(np.mean(truth_reblur))
    assert report["reblur_psnr_ground_truth"] < ev.PSNR_CAP_DB  # a moving scene's samples do not average to its blur

    plots = sorted(tmp_path.glob("*.png"))
    assert len(plots) == EXPOSURES and [e["plot"] for e in report["exposures"]] == [str(p) for p in plots]
    grid = cv2.imread(str(plots[0]))
    assert grid.shape[1] == 4 * 96  # blurry, sdm, student, gt columns at full tile width
    assert grid.shape[0] > TINY_GT_PER_EXPOSURE * 64


def test_sdm_scores_come_from_the_sdm_kernel(recording):
    report = ev.evaluate([recording])
    assert set(report["methods"]) == {"blurry", "sdm"} and report["reblur_psnr"] is None
    exposure = ds.load_exposures([recording])[0]
    with open_recording(recording) as rec:
        frames = rec.ground_truth_for(exposure.exposure_index)
        spike = rec.meta.spike
        from spikereveal.kernels import time_to_index

        centers = time_to_index([f.t_ns for f in frames], spike.t0_ns, spike.rate_hz)
        sdm = ds.sdm_teacher()(exposure, centers)
        expected = np.mean([ev.psnr(rec.read_ground_truth(f), s) for f, s in zip(frames, sdm)])
    assert report["exposures"][0]["methods"]["sdm"]["psnr"] == pytest.approx(expected)


def test_teacher_and_student_networks_run(recording, checkpoints):
    from spikereveal.engines.checkpoint import load_checkpoint

    bsn, _ = load_checkpoint(checkpoints["bsn"], expected_kind="bsn")
    sr, _ = load_checkpoint(checkpoints["sr"], expected_kind="sr")
    ldn, _ = load_checkpoint(checkpoints["ldn"], expected_kind="ldn")
    report = ev.evaluate([recording], student=ev.torch_student(ldn), teacher=ds.network_teacher(bsn, sr))
    assert set(report["methods"]) == {"blurry", "sdm", "teacher", "student"}
    for values in report["methods"].values():
        assert all(np.isfinite(v) for v in values.values() if not isinstance(v, dict))
        assert all(np.isfinite(v) for v in values["color_mean_error_pct"].values())
    assert 0 < report["reblur_psnr"] < ev.PSNR_CAP_DB


def test_colour_fidelity_in_the_report(recording):
    report = ev.evaluate([recording], student=_shifted_student)
    blurry, student = report["methods"]["blurry"], report["methods"]["student"]
    with open_recording(recording) as rec:  # the blurry figures, recomputed independently
        errors = [rec.read_exposure(f.exposure_index).astype(np.float64) - rec.read_ground_truth(f)
                  for f in rec.ground_truth]
        expected = np.mean([e.reshape(3, -1).mean(axis=1) for e in errors], axis=0) * 100
        truth_saturation = np.mean([ev.mean_saturation(rec.read_ground_truth(f)) for f in rec.ground_truth])
        blurry_saturation = np.mean([ev.mean_saturation(rec.read_exposure(f.exposure_index))
                                     for f in rec.ground_truth])
    assert [blurry["color_mean_error_pct"][c] for c in "bgr"] == pytest.approx(expected)
    assert blurry["saturation_ratio"] == pytest.approx(blurry_saturation / truth_saturation)
    # +10 % blue (a little less where clipping at 1 bites), the other channels untouched
    assert student["color_mean_error_pct"]["b"] - blurry["color_mean_error_pct"]["b"] == pytest.approx(10, abs=1.0)
    assert student["color_mean_error_pct"]["g"] == pytest.approx(blurry["color_mean_error_pct"]["g"])
    assert student["color_max_abs_error_pct"] == pytest.approx(abs(student["color_mean_error_pct"]["b"]))
    grey = ev.evaluate([recording], student=_grey_student)["methods"]["student"]
    assert grey["saturation_ratio"] < 1e-6 and blurry["saturation_ratio"] > 0.5  # grey frames: no colour left
    table = ev.format_table(report)
    assert "B err%" in table and "sat ratio" in table
    student_row = next(line for line in table.splitlines() if line.startswith("student"))
    assert f"{student['color_mean_error_pct']['b']:+.2f}" in student_row


def test_firing_gain_per_exposure_and_recording(recording):
    report = ev.evaluate([recording], student=_blurry_student)
    block = report["firing_gain"]
    assert block["trained_range"] is None and block["tolerance"] == 1.25
    (item,) = block["recordings"]
    gains = [e["firing_gain"] for e in report["exposures"]]
    assert all(0.85 < g < 1.15 for g in gains)  # the tiny preset's sensor: ~1 spike per frame at full intensity
    assert item["recording"] == str(recording) and item["exposures"] == EXPOSURES
    assert item["min"] == min(gains) and item["max"] == max(gains) and item["mean"] == pytest.approx(np.mean(gains))
    assert item["reblur_psnr"] == report["reblur_psnr"]
    assert not item["out_of_domain"] and item["warning"] is None  # no declared range: no alarm
    inside = ev.evaluate([recording], trained_gain_range=[0.6, 1.6])["firing_gain"]["recordings"][0]
    assert not inside["out_of_domain"] and inside["reblur_psnr"] is None  # no student
    outside = ev.evaluate([recording], trained_gain_range=(3.0, 5.0))["firing_gain"]
    assert outside["trained_range"] == [3.0, 5.0]
    warning = outside["recordings"][0]["warning"]
    assert outside["recordings"][0]["out_of_domain"] and outside["recordings"][0]["exposures_out_of_domain"] == 2
    assert warning.startswith(f"recording {recording}: firing gain ")
    assert "outside the model's trained range 3-5" in warning
    assert f"spikereveal adapt --data {recording} --out DIR" in warning
    json.dumps(report, allow_nan=False)


def test_a_runner_with_a_fixed_batch_can_stand_in_for_the_student(recording, checkpoints):
    from spikereveal.engines.checkpoint import load_checkpoint
    from spikereveal.engines.runners import InputShape, create_runner

    ldn, _ = load_checkpoint(checkpoints["ldn"], expected_kind="ldn")
    exposure = ds.load_exposures([recording])[0]
    centers = exposure.window.centers[:5]
    expected = ev.run_student(ev.torch_student(ldn), exposure, centers)
    shape = InputShape(2, *exposure.blurry.shape[1:])  # batch 2: groups of 2, 2 and a padded 1
    with create_runner("torch", shape, model=ldn) as runner:
        got = ev.run_student(ev.runner_student(runner), exposure, centers)
    # the runner gives the deployed graph's 8-bit frames: the float frames rounded (<= 1 LSB off, rarely)
    rounded = np.floor(expected * 255 + 0.5) / 255
    assert np.abs(got - rounded).max() <= 1 / 255 + 1e-6 and (np.abs(got - rounded) > 1e-6).mean() <= 1e-3


def test_psnr_by_position_averages_each_frame_position(recording):
    report = ev.evaluate([recording])
    by_position = report["psnr_by_position"]["blurry"]
    assert len(by_position) == TINY_GT_PER_EXPOSURE
    columns = np.array([e["methods"]["blurry"]["psnr_per_frame"] for e in report["exposures"]])
    np.testing.assert_allclose(by_position, columns.mean(axis=0))


def test_run_student_checks_the_output_shape(recording):
    exposure = ds.load_exposures([recording])[0]
    with pytest.raises(ConfigError, match="shape"):
        ev.run_student(lambda blurry, spikes: blurry[None], exposure, exposure.window.centers)


# -- errors ----------------------------------------------------------------------------------------------------
def test_recording_without_ground_truth_is_refused(recording, tmp_path):
    copy = tmp_path / "no_gt"
    shutil.copytree(recording, copy)
    (copy / "gt.csv").unlink()
    with pytest.raises(RecordingError, match="gt.csv"):
        ev.evaluate([copy])


@pytest.mark.parametrize("rgb_shape, message", [((66, 98), "divisible by 4"), ((68, 100), "exactly 4x")])
def test_images_not_on_the_network_grid_are_refused(tmp_path, rgb_shape, message):
    path = write_recording(tmp_path / "rec", rgb_shape=rgb_shape)
    with pytest.raises(ConfigError, match=message):
        ev.evaluate([path])


# -- CLI ---------------------------------------------------------------------------------------------------------
def _cli(argv):
    from spikereveal.commands import eval as eval_command

    parser = argparse.ArgumentParser(prog="spikereveal")
    eval_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_json_plots_and_a_table(recording, checkpoints, tmp_path, capsys):
    out = tmp_path / "report.json"
    plots = tmp_path / "plots"
    code = _cli(["eval", "--data", str(recording), "--model", str(checkpoints["ldn"]),
                 "--teacher-bsn", str(checkpoints["bsn"]), "--teacher-sr", str(checkpoints["sr"]),
                 "--json", str(out), "--plot", str(plots), "--k", "5"])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["methods"]) == set(ev.METHODS) and report["k"] == 5
    assert report["models"]["student"] == str(checkpoints["ldn"])
    assert len(list(plots.glob("*.png"))) == EXPOSURES
    printed = capsys.readouterr().out
    assert "student" in printed and "re-blur" in printed


def test_cli_warns_when_the_student_was_trained_for_another_firing_gain(recording, tmp_path, capsys):
    torch.manual_seed(0)
    model = LDN()
    for name, trained in (("far", [0.2, 0.4]), ("near", [0.8, 1.2])):
        path = save_checkpoint(tmp_path / f"{name}.pt", "ldn", model, model.config,
                               training={"firing_gain_range": trained})
        out = tmp_path / f"{name}.json"
        assert _cli(["eval", "--data", str(recording), "--model", str(path), "--no-teacher", "--k", "3",
                     "--json", str(out)]) == 0
        report = json.loads(out.read_text())
        printed = capsys.readouterr().out
        assert report["firing_gain"]["trained_range"] == trained
        assert "firing_gain_range" not in report["engine"]
        item = report["firing_gain"]["recordings"][0]
        assert item["reblur_psnr"] is not None
        if name == "far":
            assert item["out_of_domain"]
            assert f"warning: recording {recording}: firing gain " in printed
            assert "outside the model's trained range 0.2-0.4; quality may drop" in printed
        else:
            assert not item["out_of_domain"] and "warning:" not in printed
        assert "firing gain (spikes per frame at full intensity)" in printed


def test_cli_refuses_a_checkpoint_of_the_wrong_kind(recording, checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="'bsn'.*'ldn'"):
        _cli(["eval", "--data", str(recording), "--model", str(checkpoints["bsn"]), "--json", str(tmp_path / "r.json")])
    with pytest.raises(CheckpointError, match="'ldn'.*'sr'"):
        _cli(["eval", "--data", str(recording), "--no-student", "--teacher-bsn", str(checkpoints["bsn"]),
              "--teacher-sr", str(checkpoints["ldn"]), "--json", str(tmp_path / "r.json")])
    with pytest.raises(ConfigError, match="both --teacher-bsn and --teacher-sr"):
        _cli(["eval", "--data", str(recording), "--no-student", "--teacher-bsn", str(checkpoints["bsn"]),
              "--json", str(tmp_path / "r.json")])


# -- the student through an inference runner ------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_student(tmp_path_factory):
    from engines_support import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("student") / "ldn.pt", seed=3)


def _student_eval(recording, checkpoint, out_dir, *extra):
    out = out_dir / "report.json"
    assert _cli(["eval", "--data", str(recording), "--model", str(checkpoint), "--no-teacher", "--k", "3",
                 "--threads", "1", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def torch_report(recording, random_student, tmp_path_factory):
    return _student_eval(recording, random_student, tmp_path_factory.mktemp("torch"))


def test_default_engine_is_torch_and_is_reported(torch_report, random_student):
    assert torch_report["engine"] == {"engine": "torch", "precision": "fp32", "device": "cpu"}
    assert torch_report["methods"]["student"]["engine"] == "torch"
    assert torch_report["methods"]["student"]["precision"] == "fp32"
    assert torch_report["models"]["student"] == str(random_student)


def test_ort_fp32_student_agrees_with_torch(recording, random_student, torch_report, tmp_path):
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    report = _student_eval(recording, random_student, tmp_path, "--engine", "ort")
    student = report["methods"]["student"]
    assert (student["engine"], student["precision"]) == ("ort", "fp32")
    engine = report["engine"]
    assert (engine["engine"], engine["precision"], engine["batch"]) == ("ort", "fp32", 3)
    assert engine["exported_by_eval"] and engine["checkpoint"] == str(random_student)
    assert engine["runner"]["runner"] == "ort" and engine["calibration"] is None
    onnx_path = tmp_path / "onnx" / "ldn_fp32_3x64x96.onnx"
    assert engine["onnx"] == str(onnx_path) and report["models"]["student_onnx"] == str(onnx_path)
    assert read_onnx_metadata(onnx_path)["precision"] == "fp32"
    for metric in ("psnr", "psnr_center"):
        assert student[metric] == pytest.approx(torch_report["methods"]["student"][metric], abs=0.01)
    assert report["reblur_psnr"] == pytest.approx(torch_report["reblur_psnr"], abs=0.01)
    for ours, theirs in zip(report["exposures"], torch_report["exposures"]):
        np.testing.assert_allclose(ours["methods"]["student"]["psnr_per_frame"],
                                   theirs["methods"]["student"]["psnr_per_frame"], atol=0.01)
    # the other methods do not depend on the engine
    assert _flat(report["methods"]["sdm"]) == pytest.approx(_flat(torch_report["methods"]["sdm"]))

    # a second run reuses the cached export; --onnx runs a given file
    stamp = onnx_path.stat().st_mtime_ns
    again = _student_eval(recording, random_student, tmp_path, "--engine", "ort", "--onnx", str(onnx_path))
    assert onnx_path.stat().st_mtime_ns == stamp
    assert again["engine"]["exported_by_eval"] is False and again["engine"]["checkpoint"] is None
    assert again["methods"]["student"]["psnr"] == pytest.approx(student["psnr"], abs=1e-6)


def test_ort_fp16_student_runs_and_reports_its_precision(recording, random_student, torch_report, tmp_path):
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    report = _student_eval(recording, random_student, tmp_path, "--engine", "ort", "--precision", "fp16")
    assert report["methods"]["student"]["precision"] == "fp16" and report["engine"]["precision"] == "fp16"
    assert read_onnx_metadata(report["engine"]["onnx"])["precision"] == "fp16"
    # the quality target for fp16 exports
    assert report["methods"]["student"]["psnr"] == pytest.approx(torch_report["methods"]["student"]["psnr"], abs=0.3)


def test_ort_int8_student_states_its_calibration(recording, random_student, tmp_path):
    report = _student_eval(recording, random_student, tmp_path, "--engine", "ort", "--precision", "int8")
    engine = report["engine"]
    assert report["methods"]["student"]["precision"] == "int8"
    assert engine["calibration"]["recordings"] == [str(recording)]
    assert engine["calibration"]["windows"] == EXPOSURES  # one window of K per exposure
    assert "evaluated recordings" in engine["calibration"]["note"]
    assert "_calib" in engine["onnx"]
    assert np.isfinite(report["methods"]["student"]["psnr"])


def test_engine_options_are_checked(recording, random_student, tmp_path):
    with pytest.raises(ConfigError, match="--engine ort"):
        _student_eval(recording, random_student, tmp_path, "--precision", "fp16")
    with pytest.raises(ConfigError, match="--engine ort"):
        _student_eval(recording, random_student, tmp_path, "--onnx", str(tmp_path / "x.onnx"))
    other = write_recording(tmp_path / "other", spike_shape=(8, 12))
    with pytest.raises(ConfigError, match="one geometry"):
        ev.network_grid([recording, other])
    assert ev.network_grid([recording]) == (64, 96)


# -- rig calibration ---------------------------------------------------------------------------------------------
# A small misaligned rig (spikes 40x64): the RGB camera is shifted, rotated and in perspective against the
# canonical grid, its clock runs 2 ms (~4 frames) ahead of the spike clock, and the sensor has hot pixels.
CAL_SPIKE = (40, 64)
CAL_HOMOGRAPHY = np.array([[0.97, 0.03, 5.0], [-0.025, 0.96, 4.0], [6e-5, -4e-5, 1.0]])
CAL_SENSOR = {"hot_pixel_fraction": 0.01, "hot_pixel_rate": 0.5}


def _misaligned(path, rgb_shape):
    from spikereveal.sim.config import preset
    from spikereveal.sim.simulate import simulate_recording

    config = preset("tiny", spike_height=CAL_SPIKE[0], spike_width=CAL_SPIKE[1], rgb_height=rgb_shape[0],
                    rgb_width=rgb_shape[1], rgb_homography=tuple(CAL_HOMOGRAPHY.ravel()), clock_offset_ns=2_000_000,
                    k=3, sensor=CAL_SENSOR)
    return simulate_recording(config, path, seed=5, exposures=3)


def _write_true_calibration(recording_path, target):
    """calibration.json (+ dark maps) holding the simulator's truth, written through the calibration API.
    The estimators that find these values have their own tests; here only applying them is under test."""
    from spikereveal.calibration import (ClockCalibration, GeometryCalibration, PhotometricCalibration,
                                         RigCalibration, write_calibration)
    from spikereveal.sim import TRUTH_FILE

    truth = json.loads((recording_path / TRUTH_FILE).read_text())
    with open_recording(recording_path) as rec:
        spike, rgb = rec.meta.spike, rec.meta.rgb
        hot = np.zeros(CAL_SPIKE, bool)
        hot[tuple(np.asarray(truth["hot_pixels"]).T)] = True
        dark = truth["config"]["sensor"]["dark_spike_rate"]
        calibration = RigCalibration(
            (spike.height, spike.width), (rgb.height, rgb.width),
            geometry=GeometryCalibration(np.asarray(truth["rgb_homography"]), "features", 0.0, 3, 3),
            clock=ClockCalibration(truth["clock"]["offset_ns"], 0.0, 0.0, 3, spike.t0_ns),
            photometric=PhotometricCalibration(np.full(CAL_SPIKE, dark, np.float32), hot, 1000, dark, 0.05),
        )
    return write_calibration(calibration, target)


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory):
    """The rig with a 4x RGB frame (so it can also be scored without calibration), calibration.json inside."""
    path = _misaligned(tmp_path_factory.mktemp("cal") / "rig", (4 * CAL_SPIKE[0], 4 * CAL_SPIKE[1]))
    _write_true_calibration(path, path)
    return path


@pytest.fixture(scope="module")
def calibrated_reports(misaligned):
    return ev.evaluate([misaligned]), ev.evaluate([misaligned], use_calibration=False)


def test_the_recordings_calibration_is_applied_and_pays(misaligned, calibrated_reports):
    calibrated, raw = calibrated_reports
    assert calibrated["frames"] == raw["frames"] > 0
    assert calibrated["methods"]["sdm"]["psnr"] >= raw["methods"]["sdm"]["psnr"] + 2.0  # 2.7 dB measured
    assert calibrated["methods"]["blurry"]["psnr"] > raw["methods"]["blurry"]["psnr"]
    block = calibrated["calibration"]
    assert block["applied"] and block["path"] == str(misaligned / "calibration.json")
    assert block["recordings"][0]["applied"] == ["geometry", "time", "photometric"]
    assert block["recordings"][0]["summary"]["time"]["offset_ns"] == 2_000_000
    assert raw["calibration"]["path"] is None and not raw["calibration"]["applied"]
    assert raw["calibration"]["recordings"][0]["applied"] == []
    json.dumps(calibrated, allow_nan=False)


def test_calibration_moves_the_gt_times_onto_the_spike_clock(misaligned):
    """The student is asked for the spike frames at the ground-truth times shifted by the clock offset,
    with hot pixels filled."""
    from spikereveal.calibration import load_rig_calibration
    from spikereveal.stream.offline import calibrated_exposure_window
    from spikereveal.kernels import extract_ldn_input
    from spikereveal.kernels.timing import time_to_index

    seen = []

    def recording_student(blurry, spikes):
        seen.append(spikes.copy())
        return _blurry_student(blurry, spikes)

    ev.evaluate([misaligned], student=recording_student, options=ev.EvalOptions(k=2))
    with open_recording(misaligned) as rec:
        calibration = load_rig_calibration(rec)
        spike = rec.meta.spike
        exposure = rec.exposures[0]
        window = calibrated_exposure_window(rec, exposure.index, 2, calibration)
        shifted = [f.t_ns - 2_000_000 for f in rec.ground_truth_for(exposure.index)]
        centers = np.asarray(time_to_index(shifted, spike.t0_ns, spike.rate_hz), np.int64)
        raw = extract_ldn_input(rec.spikes.read(window.window_first, window.window_stop), spike.height,
                                spike.width, centers, first_index=window.window_first)
    hot = calibration.photometric.hot_mask
    np.testing.assert_array_equal(seen[0], calibration.correct_spike_frames(raw))
    assert not np.array_equal(seen[0][..., hot], raw[..., hot])


def test_cli_calibration_flags(misaligned, calibrated_reports, tmp_path, capsys):
    calibrated, raw = calibrated_reports
    elsewhere = tmp_path / "rig_calibration.json"
    _write_true_calibration(misaligned, elsewhere)
    copy = tmp_path / "rig"  # the same recording without its own calibration.json
    shutil.copytree(misaligned, copy, ignore=shutil.ignore_patterns("calibration*"))
    runs = {"auto": ["--data", str(misaligned)], "off": ["--data", str(misaligned), "--no-calibration"],
            "given": ["--data", str(copy), "--calibration", str(elsewhere)], "none": ["--data", str(copy)]}
    reports = {}
    for name, argv in runs.items():
        out = tmp_path / f"{name}.json"
        assert _cli(["eval", *argv, "--no-student", "--no-teacher", "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    assert "calibration " in capsys.readouterr().out
    for name, expected in (("auto", calibrated), ("given", calibrated), ("off", raw), ("none", raw)):
        assert _flat(reports[name]["methods"]["sdm"]) == pytest.approx(_flat(expected["methods"]["sdm"])), name
    assert reports["given"]["calibration"]["path"] == str(elsewhere)
    assert reports["given"]["calibration"]["requested"] == str(elsewhere)
    assert reports["none"]["calibration"]["path"] is None and reports["off"]["calibration"]["path"] is None
    with pytest.raises(SystemExit):  # both flags at once
        _cli(["eval", "--data", str(misaligned), "--calibration", str(elsewhere), "--no-calibration",
              "--json", str(tmp_path / "x.json")])


def test_an_rgb_frame_off_the_grid_needs_the_calibration(tmp_path):
    path = _misaligned(tmp_path / "rig", (152, 240))  # not 4x the 40x64 spikes
    with pytest.raises(ConfigError, match="exactly 4x"):
        ev.evaluate([path])
    _write_true_calibration(path, path)
    with pytest.raises(ConfigError, match="exactly 4x"):
        ev.evaluate([path], use_calibration=False)
    report = ev.evaluate([path], student=_blurry_student)
    assert report["frames"] > 0 and report["calibration"]["applied"]
    assert report["exposures"][0]["methods"]["sdm"]["psnr"] > 15.0
    assert ev.network_grid([path]) == (4 * CAL_SPIKE[0], 4 * CAL_SPIKE[1])
    with pytest.raises(ConfigError, match="exactly 4x"):
        ev.network_grid([path], use_calibration=False)
    from spikereveal.calibration import ClockCalibration, RigCalibration, write_calibration

    clock_only = write_calibration(RigCalibration(CAL_SPIKE, (152, 240), clock=ClockCalibration(2e6, 0, 0, 3, 0)),
                                   tmp_path / "clock_only.json")
    with pytest.raises(ConfigError, match="no geometry to warp them"):
        ev.evaluate([path], calibration_path=clock_only)
