"""Evaluation against ground truth: metrics, report schema, plots, re-blur, CLI and error paths."""

from __future__ import annotations

import argparse
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from spikereveal.engines.checkpoint import CheckpointError, save_checkpoint
from spikereveal.engines.ldn import LDN
from spikereveal.errors import ConfigError, RecordingError
from spikereveal.recording import open_recording
from spikereveal.training import datasets as ds
from spikereveal.training import evaluate as ev
from spikereveal.training.bsn import BSN, BSNConfig
from spikereveal.training.sr import SR, SRConfig
from training_support import TINY_GT_PER_EXPOSURE, simulate_tiny, write_recording

EXPOSURES = 2


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return simulate_tiny(tmp_path_factory.mktemp("eval") / "rec", seed=11, exposures=EXPOSURES)


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


# -- evaluate() --------------------------------------------------------------------------------------------
def test_report_covers_every_ground_truth_frame(recording, tmp_path):
    report = ev.evaluate([recording], student=_blurry_student, options=ev.EvalOptions(plot_dir=str(tmp_path)))
    assert set(report["methods"]) == {"blurry", "sdm", "student"}
    for values in report["methods"].values():
        assert set(values) == {"psnr", "ssim", "psnr_center", "ssim_center"}
    assert report["frames"] == EXPOSURES * TINY_GT_PER_EXPOSURE
    assert len(report["exposures"]) == EXPOSURES
    assert report["metrics"]["ssim"]["window"] == 11 and report["metrics"]["ssim"]["data_range"] == 1.0
    # the stand-in student returns the blurry input: the same scores, and a perfect re-blur
    assert report["methods"]["student"] == pytest.approx(report["methods"]["blurry"])
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
    assert report["methods"]["blurry"]["psnr"] == pytest.approx(np.mean(scores))
    assert report["methods"]["blurry"]["psnr_center"] == pytest.approx(np.mean(centre))

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
        assert all(np.isfinite(v) for v in values.values())
    assert 0 < report["reblur_psnr"] < ev.PSNR_CAP_DB


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
    np.testing.assert_allclose(got, expected, atol=1e-5)


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
    from spikereveal.engines.export import read_onnx_metadata

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
    assert report["methods"]["sdm"] == pytest.approx(torch_report["methods"]["sdm"])

    # a second run reuses the cached export; --onnx runs a given file
    stamp = onnx_path.stat().st_mtime_ns
    again = _student_eval(recording, random_student, tmp_path, "--engine", "ort", "--onnx", str(onnx_path))
    assert onnx_path.stat().st_mtime_ns == stamp
    assert again["engine"]["exported_by_eval"] is False and again["engine"]["checkpoint"] is None
    assert again["methods"]["student"]["psnr"] == pytest.approx(student["psnr"], abs=1e-6)


def test_ort_fp16_student_runs_and_reports_its_precision(recording, random_student, torch_report, tmp_path):
    from spikereveal.engines.export import read_onnx_metadata

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
