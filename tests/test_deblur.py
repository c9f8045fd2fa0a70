"""Offline deblur on tiny recordings: outputs, correctness of the cut windows, skips, errors, ort == torch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs torch: the [train] extra")
pytest.importorskip("onnx")
cv2 = pytest.importorskip("cv2")

import torch  # noqa: E402

from engines_support import (  # noqa: E402
    IMAGE_H,
    IMAGE_W,
    frames_needed,
    make_recording,
    psnr,
    reference_spike_windows,
    save_random_checkpoint,
)
from spikereveal.engines.choice import EngineChoice  # noqa: E402
from spikereveal.kernels.convert import planar_to_bgr8  # noqa: E402
from spikereveal.stream.offline import DeblurConfig, deblur  # noqa: E402
from spikereveal.stream.sinks import FRAMES_HEADER  # noqa: E402
from spikereveal.errors import ConfigError, RecordingError  # noqa: E402
from spikereveal.recording import open_recording  # noqa: E402

K = 3
EXPOSURES = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "ldn.pt", seed=9)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return make_recording(tmp_path_factory.mktemp("rec") / "rec", exposures=EXPOSURES, seed=4)


@pytest.fixture(scope="module")
def torch_result(recording, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "torch"
    summary = deblur(recording, out, EngineChoice(engine="torch", model=str(checkpoint)), DeblurConfig(k=K))
    return out, summary


def read_frames(out: Path):
    with open(out / "frames.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def load_png(out: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(out / name), cv2.IMREAD_COLOR)
    assert image is not None, name
    return image


def test_outputs_and_summary(torch_result, recording):
    out, summary = torch_result
    header, rows = read_frames(out)
    assert tuple(header) == FRAMES_HEADER
    assert len(rows) == EXPOSURES * K
    with open_recording(recording) as rec:
        for exposure in rec.exposures:
            window = rec.exposure_window(exposure.index, K)
            mine = [r for r in rows if int(r[0]) == exposure.index]
            assert [int(r[1]) for r in mine] == window.timestamps_ns.tolist()
    for _, _, name in rows:
        assert load_png(out, name).shape == (IMAGE_H, IMAGE_W, 3)
    assert rows[K + 1][2] == "frames/000001_01.png"
    written = json.loads((out / "summary.json").read_text())
    assert written["engine"] == "torch" and written["precision"] == "fp32" and written["k"] == K
    assert written["exposures_processed"] == EXPOSURES and written["skipped_exposures"] == []
    assert set(written["stages"]) >= {"read_image", "kernels", "inference", "write"}
    assert written["stages"]["inference"]["ms_p50"] > 0
    video = cv2.VideoCapture(str(out / "deblur.mp4"))
    assert video.isOpened()
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == EXPOSURES * K
    assert (int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (2 * IMAGE_W, IMAGE_H)
    video.release()


def test_summary_reports_the_firing_gain(torch_result):
    out, summary = torch_result
    gain = json.loads((out / "summary.json").read_text())["firing_gain"]
    assert gain == summary["firing_gain"]
    # 25 % random spikes against random frames (mean gray ~0.5): about 0.5 spikes per frame at full intensity
    assert 0.4 < gain["min"] <= gain["mean"] <= gain["max"] < 0.6
    assert gain["exposures"] == EXPOSURES and gain["unmeasured_exposures"] == 0
    assert gain["trained_range"] is None and not gain["out_of_domain"] and gain["warning"] is None


def _checkpoint_trained_for(path: Path, trained):
    from engines_support import random_ldn
    from spikereveal.engines.checkpoint import save_checkpoint

    model = random_ldn(9)
    return save_checkpoint(path, "ldn", model, model.config, training={"firing_gain_range": trained})


def test_a_gain_outside_the_checkpoints_range_warns(recording, tmp_path, caplog, monkeypatch, capsys):
    from spikereveal import cli

    far = _checkpoint_trained_for(tmp_path / "far.pt", [0.9, 1.1])  # 0.5 < 0.9 / 1.25
    with caplog.at_level("WARNING", logger="spikereveal.stream.offline"):
        summary = deblur(recording, tmp_path / "far", EngineChoice(engine="torch", model=str(far)),
                         DeblurConfig(k=K, write_video=False))
    gain = summary["firing_gain"]
    assert gain["trained_range"] == [0.9, 1.1] and gain["out_of_domain"]
    assert gain["exposures_out_of_domain"] == EXPOSURES
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert messages == [gain["warning"]]
    assert gain["warning"].startswith(f"recording {recording}: firing gain 0.")
    assert "outside the model's trained range 0.9-1.1; quality may drop" in gain["warning"]
    assert f"spikereveal adapt --data {recording} --out DIR" in gain["warning"]

    near = _checkpoint_trained_for(tmp_path / "near.pt", [0.4, 0.7])
    caplog.clear()
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("deblur",))
    assert cli.main(["deblur", "--recording", str(recording), "--out", str(tmp_path / "near"), "--engine", "torch",
                     "--model", str(near), "--k", str(K), "--no-video"]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    printed = capsys.readouterr().out
    assert "firing gain 0." in printed and "the model's trained range 0.4-0.7" in printed
    assert "OUT OF DOMAIN" not in printed


def test_an_exports_declared_range_is_read_from_its_metadata(recording, tmp_path, caplog):
    from engines_support import random_ldn
    from spikereveal.engines.export import ExportConfig, export_ldn
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    onnx_path = export_ldn(random_ldn(9), tmp_path / "ldn.onnx", ExportConfig(k=K, height=IMAGE_H, width=IMAGE_W),
                           extra_metadata={"firing_gain_range": [2.0, 3.0]})
    assert read_onnx_metadata(onnx_path)["firing_gain_range"] == "[2.0, 3.0]"
    with caplog.at_level("WARNING", logger="spikereveal.stream.offline"):
        summary = deblur(recording, tmp_path / "out", EngineChoice(engine="ort", onnx_path=str(onnx_path)),
                         DeblurConfig(k=K, write_video=False))
    assert summary["firing_gain"]["trained_range"] == [2.0, 3.0] and summary["firing_gain"]["out_of_domain"]
    assert any("outside the model's trained range 2-3" in r.getMessage() for r in caplog.records)


def test_frames_are_the_network_on_the_right_spike_windows(torch_result, recording, checkpoint):
    """Recompute one exposure with a slow numpy cut of the spike windows and the network itself."""
    from spikereveal.engines.checkpoint import load_checkpoint

    out, _ = torch_result
    model, _ = load_checkpoint(checkpoint, expected_kind="ldn")
    with open_recording(recording) as rec:
        index = rec.exposures[1].index
        window = rec.exposure_window(index, K)
        packed = rec.spikes.read(window.window_first, window.window_stop)
        spikes = reference_spike_windows(packed, window.centers, window.window_first)
        blur = np.repeat(rec.read_exposure(index)[None], K, axis=0)
    with torch.no_grad():
        expected = planar_to_bgr8(model(torch.from_numpy(blur), torch.from_numpy(spikes)).numpy())
    for k in range(K):
        got = load_png(out, f"frames/{index:06d}_{k:02d}.png")
        assert np.abs(got.astype(int) - expected[k].astype(int)).max() <= 1  # float rounding at .5 only


def test_ort_agrees_with_torch(torch_result, recording, checkpoint, tmp_path):
    torch_out, _ = torch_result
    out = tmp_path / "ort"
    summary = deblur(recording, out, EngineChoice(engine="ort", model=str(checkpoint)), DeblurConfig(k=K))
    assert summary["engine"] == "ort" and (out / "onnx").is_dir()
    _, rows = read_frames(out)
    ort_frames = np.stack([load_png(out, r[2]) for r in rows]).astype(np.float64) / 255
    torch_frames = np.stack([load_png(torch_out, r[2]) for r in rows]).astype(np.float64) / 255
    assert psnr(ort_frames, torch_frames) >= 50.0


def test_cached_export_is_reused_and_onnx_option(recording, checkpoint, tmp_path):
    out = tmp_path / "ort"
    choice = EngineChoice(engine="ort", model=str(checkpoint))
    deblur(recording, out, choice, DeblurConfig(k=K, write_video=False))
    exported = next((out / "onnx").glob("*.onnx"))
    stamp = exported.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="--overwrite"):
        deblur(recording, out, choice, DeblurConfig(k=K))
    deblur(recording, out, choice, DeblurConfig(k=K, write_video=False, overwrite=True))
    assert exported.stat().st_mtime_ns == stamp  # same checkpoint + precision: not exported again
    other = tmp_path / "given"
    summary = deblur(recording, other, EngineChoice(engine="ort", onnx_path=str(exported)),
                     DeblurConfig(k=K, write_video=False))
    assert summary["runner"]["onnx"] == str(exported) and not (other / "onnx").exists()
    assert summary["video"] is None and not (other / "deblur.mp4").exists()


def test_truncated_spike_file_skips_and_exits_zero(checkpoint, tmp_path, monkeypatch, capsys):
    from spikereveal import cli

    recording = make_recording(tmp_path / "rec", exposures=EXPOSURES, frames=frames_needed(EXPOSURES) - 5,
                               trailing_bytes=7, seed=4)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("deblur",))
    out = tmp_path / "out"
    rc = cli.main(["deblur", "--recording", str(recording), "--out", str(out), "--engine", "torch",
                   "--model", str(checkpoint), "--k", str(K), "--no-video"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skipped 1 exposure" in printed and ": 2" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [item["index"] for item in summary["skipped_exposures"]] == [EXPOSURES - 1]
    assert "spike window" in summary["skipped_exposures"][0]["reason"]
    _, rows = read_frames(out)
    assert sorted({int(r[0]) for r in rows}) == list(range(EXPOSURES - 1))


def test_missing_image_is_a_clear_error(checkpoint, tmp_path, monkeypatch, capsys):
    from spikereveal import cli

    recording = make_recording(tmp_path / "rec", exposures=2)
    (recording / "exposures" / "000001.png").unlink()
    with pytest.raises(RecordingError, match="000001.png"):
        deblur(recording, tmp_path / "lib", EngineChoice(engine="torch", model=str(checkpoint)), DeblurConfig(k=K))
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("deblur",))
    rc = cli.main(["deblur", "--recording", str(recording), "--out", str(tmp_path / "out"), "--engine", "torch",
                   "--model", str(checkpoint)])
    err = capsys.readouterr().err
    assert rc == 2 and "000001.png" in err and "Traceback" not in err


def test_no_default_model_says_pass_model(recording, tmp_path, monkeypatch):
    import spikereveal.engines.export as export

    monkeypatch.setattr(export, "default_model_path", lambda: None)

    monkeypatch.setattr(export, "default_onnx_path", lambda: None)
    with pytest.raises(ConfigError, match="--model"):
        deblur(recording, tmp_path / "out", EngineChoice(engine="torch"), DeblurConfig(k=K))


def test_to_bgr8_clips_and_rounds():
    values = np.array([-0.5, 0.0, 0.5 / 255, 0.6 / 255, 1.0, 7.0], np.float32).reshape(1, 1, 1, 6)
    image = planar_to_bgr8(np.repeat(values, 3, axis=1))
    assert image.shape == (1, 1, 6, 3) and image.dtype == np.uint8
    assert image[0, 0, :, 0].tolist() == [0, 0, 1, 1, 255, 255]


def test_rig_calibration_warps_rgb_onto_the_grid(checkpoint, tmp_path):
    """An RGB camera at 2x the network grid: refused without a calibration, warped with one."""
    from spikereveal.calibration.geometry import GeometryCalibration, warp_bgr8_to_canonical
    from spikereveal.calibration.store import RigCalibration, write_calibration
    from spikereveal.engines.checkpoint import load_checkpoint

    recording = make_recording(tmp_path / "rec", exposures=1, rgb_scale=2)
    choice = EngineChoice(engine="torch", model=str(checkpoint))
    with pytest.raises(ConfigError, match="calibrate"):
        deblur(recording, tmp_path / "refused", choice, DeblurConfig(k=K))
    homography = np.diag([2.0, 2.0, 1.0])  # canonical pixel -> RGB pixel
    geometry = GeometryCalibration(homography=homography, method="identity", residual_px=None, inliers=0, points=0)
    write_calibration(RigCalibration((IMAGE_H // 4, IMAGE_W // 4), (2 * IMAGE_H, 2 * IMAGE_W), geometry=geometry),
                      recording / "calibration.json")
    out = tmp_path / "out"
    summary = deblur(recording, out, choice, DeblurConfig(k=K, write_video=False))
    assert summary["calibration"] is not None and summary["frames_written"] == K
    with open_recording(recording) as rec:
        window = rec.exposure_window(0, K)
        packed = rec.spikes.read(window.window_first, window.window_stop)
        spikes = reference_spike_windows(packed, window.centers, window.window_first)
        # the uint8 frame is warped (what the deployed graph is given), then read as the network's floats
        image8 = warp_bgr8_to_canonical(rec.read_exposure_bgr8(0), homography, (IMAGE_H, IMAGE_W))
        image = image8.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    model, _ = load_checkpoint(checkpoint, expected_kind="ldn")
    with torch.no_grad():
        expected = planar_to_bgr8(model(torch.from_numpy(np.repeat(image[None], K, 0)), torch.from_numpy(spikes)).numpy())
    assert np.abs(load_png(out, "frames/000000_01.png").astype(int) - expected[1].astype(int)).max() <= 1
    with pytest.raises(ConfigError, match="calibrate"):  # --no-calibration: back to refusing the 2x RGB
        deblur(recording, tmp_path / "off", choice, DeblurConfig(k=K), use_calibration=False)
