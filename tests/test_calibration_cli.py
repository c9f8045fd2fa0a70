"""``spikereveal calibrate geometry|time|dark``: writes and updates calibration.json, prints residuals,
draws the overlay, and refuses untrustworthy fits with a typed error."""

import argparse
import json

import cv2
import pytest

from calibration_support import TRUE_HOMOGRAPHY, dark_recording, flat_recording, misaligned_recording
from spikereveal.calibration import CalibrationError, corner_error_px, read_calibration
from spikereveal.commands import calibrate
from spikereveal.errors import SpikeRevealError


def _run(*argv):
    parser = argparse.ArgumentParser(prog="spikereveal")
    calibrate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibrate", *argv])
    return args.func(args)


@pytest.mark.slow
def test_geometry_time_and_dark_fill_one_file(tmp_path, capsys):
    rig = misaligned_recording(tmp_path / "rig", exposures=4, clock_offset_ns=800_000)
    dark = dark_recording(tmp_path / "dark", exposures=2)
    overlay = tmp_path / "check" / "overlay.png"
    assert _run("geometry", "--recording", str(rig), "--overlay", str(overlay)) == 0
    out = capsys.readouterr().out
    assert "geometry (features): residual" in out and "px RMS" in out and "wrote" in out
    assert "time (estimated with the geometry)" in out
    image = cv2.imread(str(overlay))
    assert image.shape == (384, 512, 3)
    assert _run("time", "--recording", str(rig)) == 0
    assert "time: offset" in capsys.readouterr().out
    with pytest.raises(SpikeRevealError, match="another spike geometry"):
        _run("dark", "--recording", str(rig), "--dark", str(dark))
    calibration = read_calibration(rig)
    assert calibration.geometry is not None and calibration.clock is not None
    assert corner_error_px(calibration.geometry.homography, TRUE_HOMOGRAPHY, (384, 512)) <= 0.5
    assert abs(calibration.clock.offset_ns - 800_000) < 1e9 / 1920
    # dark maps of a rig with the tiny sensor, into their own file; --dark defaults to --recording
    out_file = tmp_path / "tiny_calibration.json"
    assert _run("dark", "--recording", str(dark), "--out", str(out_file)) == 0
    assert "hot pixels" in capsys.readouterr().out
    assert json.loads(out_file.read_text())["photometric"]["file"] == "tiny_calibration_dark.npz"
    assert read_calibration(out_file).photometric is not None


def test_refusals_are_typed_errors(tmp_path):
    flat = flat_recording(tmp_path / "flat", exposures=3)
    with pytest.raises(CalibrationError, match="too little texture") as caught:
        _run("geometry", "--recording", str(flat))
    assert isinstance(caught.value, SpikeRevealError)  # the CLI prints it without a traceback
    with pytest.raises(CalibrationError, match="checkerboard was found"):
        _run("geometry", "--recording", str(flat), "--method", "checkerboard", "--board", "8x5")
    with pytest.raises(CalibrationError, match="is not dark"):
        _run("dark", "--recording", str(flat))
    assert not (flat / "calibration.json").exists()
    with pytest.raises(SystemExit):
        _run("geometry", "--recording", str(flat), "--board", "8")
