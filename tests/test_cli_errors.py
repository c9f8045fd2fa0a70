"""A user's first hour (issue 15): the console script turns bad input into exit code 2 and one message.

Ground truth only for eval, missing extras (torch, onnx), corrupt ONNX files, output paths that cannot be
created, -v after the verb, and the help texts of serve and calibrate.
"""

from __future__ import annotations

import json

import pytest

from cli_support import assert_user_error, run_cli

TRAIN_EXTRA = "pip install 'spikereveal[train]'"


@pytest.fixture(scope="module")
def recording(tiny_recording):
    return tiny_recording(seed=2, exposures=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A plain file to put paths under, and two corrupt ONNX files."""
    folder = tmp_path_factory.mktemp("files")
    (folder / "afile").write_text("not a folder\n")
    (folder / "garbage.onnx").write_bytes(bytes(range(251, 0, -1)) * 8)  # no protobuf
    (folder / "empty.onnx").write_bytes(b"")
    return folder


# -- 5. only eval reads gt.csv -----------------------------------------------------------------------------------
@pytest.mark.requires_torch  # eval needs torch to get as far as gt.csv
def test_deblur_ignores_a_gt_csv_on_another_clock_and_eval_names_it(recording, tmp_path):
    import shutil

    shifted = tmp_path / "shifted"
    shutil.copytree(recording, shifted)
    gt = shifted / "gt.csv"
    header, *rows = gt.read_text().splitlines()  # ground truth on the spike clock, the RGB clock 40 ms later
    gt.write_text("\n".join([header] + [f"{i},{int(t) - 40_000_000},{image}"
                                        for i, t, image in (row.split(",") for row in rows)]) + "\n")
    result = run_cli("deblur", "--recording", shifted, "--out", tmp_path / "out", "--no-calibration", "--no-video",
                     "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "frames.csv").is_file() and "gt.csv" not in result.stderr
    assert_user_error(run_cli("eval", "--data", shifted, "--json", tmp_path / "e.json", "--no-student",
                              "--no-teacher"), f"{gt}, line 2:", "is outside exposure 0")


# -- 6. verbs that need torch, without torch ---------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["eval", "--data", "{rec}", "--json", "{tmp}/e.json"],
    ["eval", "--data", "{rec}", "--json", "{tmp}/e.json", "--engine", "ort", "--no-teacher"],
    ["train", "bsn", "--data", "{rec}", "--out", "{tmp}/bsn.pt"],
    ["train", "ldn", "--data", "{rec}", "--out", "{tmp}/ldn.pt", "--teacher", "sdm"],
    ["adapt", "--data", "{rec}", "--out", "{tmp}/adapted"],
    ["import-weights", "{tmp}/DeblurNet_100.pth", "--out", "{tmp}/ldn.pt"],
    ["interpolate-weights", "{tmp}/official.ckpt", "default", "--alpha", "0.75", "--out", "{tmp}/ldn.pt"],
    ["export", "--out", "{tmp}/ldn.onnx", "--height", "64", "--width", "96"],
], ids=lambda argv: "-".join(argv[:2]))
def test_verbs_needing_torch_say_which_extra_to_install(recording, tmp_path, argv):
    args = [a.format(rec=recording, tmp=tmp_path) for a in argv]
    stderr = assert_user_error(run_cli(*args, block=("torch",)), TRAIN_EXTRA, "'torch'")
    assert f"spikereveal {argv[0]}: error:" in stderr


@pytest.mark.requires_torch  # without torch these stop at the missing extra (see above), before the recording
@pytest.mark.parametrize("argv", [
    ["eval", "--data", "{missing}", "--json", "{tmp}/e.json"],
    ["train", "bsn", "--data", "{missing}", "--out", "{tmp}/bsn.pt"],
    ["adapt", "--data", "{missing}", "--out", "{tmp}/adapted"],
], ids=lambda argv: argv[0])
def test_verbs_needing_torch_name_a_missing_recording(tmp_path, argv):
    missing = tmp_path / "missing"
    assert_user_error(run_cli(*[a.format(missing=missing, tmp=tmp_path) for a in argv]), str(missing))


# -- 7. corrupt ONNX files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [(), ("onnx",)], ids=["with-onnx", "onnxruntime-only"])
@pytest.mark.parametrize("name", ["garbage.onnx", "empty.onnx"])
def test_deblur_with_a_corrupt_onnx_names_the_file_and_leaves_no_output(recording, files, tmp_path, block, name):
    out = tmp_path / "out"
    stderr = assert_user_error(run_cli("deblur", "--recording", recording, "--out", out, "--onnx", files / name,
                                       block=block), f"{files / name}", "--onnx needs an ONNX export")
    # unparsable: the metadata read says so; an empty file parses as an empty model, which ONNX Runtime refuses
    assert f"{files / name}: is not a readable ONNX model" in stderr or f"cannot load {files / name}" in stderr
    assert not out.exists()  # no empty OUT/frames/ left behind


def test_a_failed_deblur_keeps_an_existing_out_but_leaves_no_empty_frames(recording, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_user_error(run_cli("deblur", "--recording", recording, "--out", out, "--onnx", files / "garbage.onnx"),
                      "garbage.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_serve_with_a_corrupt_onnx_names_the_file(files, tmp_path):
    endpoints = [f"ipc://{tmp_path}/{name}" for name in "sro"]
    assert_user_error(run_cli("serve", "--spike-endpoint", endpoints[0], "--rgb-endpoint", endpoints[1],
                              "--output-endpoint", endpoints[2], "--onnx", files / "garbage.onnx",
                              "--spike-geometry", "16x24", block=("onnx",)),
                      f"{files / 'garbage.onnx'}: is not a readable ONNX model")


# -- 8. output paths that cannot be created ----------------------------------------------------------------------
@pytest.mark.parametrize("argv, option", [
    (["deblur", "--recording", "{rec}", "--out", "{file}/sub"], "--out"),
    (["deblur", "--recording", "{rec}", "--out", "{file}"], "--out"),
    (["simulate", "--preset", "tiny", "--exposures", "1", "--out", "{file}/sub"], "--out"),
    (["eval", "--data", "{rec}", "--json", "{file}/report.json"], "--json"),
    (["export", "--out", "{file}/ldn.onnx", "--height", "64", "--width", "96"], "--out"),
    (["serve", "--spike-endpoint", "ipc://{tmp}/s", "--rgb-endpoint", "ipc://{tmp}/r", "--output-endpoint",
      "ipc://{tmp}/o", "--save", "{file}/run1"], "--save"),
    (["serve", "--spike-endpoint", "ipc://{tmp}/s", "--rgb-endpoint", "ipc://{tmp}/r", "--output-endpoint",
      "ipc://{tmp}/o", "--stats-json", "{file}/counters.json"], "--stats-json"),
    (["replay", "{rec}", "--spike-endpoint", "ipc://{tmp}/s", "--rgb-endpoint", "ipc://{tmp}/r", "--stats-json",
      "{file}/r.json"], "--stats-json"),
    (["bench", "kernels", "--json", "{file}/k.json"], "--json"),
], ids=lambda value: value if isinstance(value, str) else "-".join(value[:2]))
def test_an_output_under_a_file_is_refused_before_any_work(recording, files, tmp_path, argv, option):
    args = [a.format(rec=recording, file=files / "afile", tmp=tmp_path) for a in argv]
    assert_user_error(run_cli(*args), f"argument {option}:", f"{files / 'afile'} is a file")
    assert (files / "afile").read_text() == "not a folder\n"


def test_serve_refuses_a_config_file_save_folder_under_a_file(files, tmp_path):
    rig = tmp_path / "rig.json"
    rig.write_text(json.dumps({"endpoints": {"spike": f"ipc://{tmp_path}/s", "rgb": f"ipc://{tmp_path}/r",
                                             "output": f"ipc://{tmp_path}/o"},
                               "worker": {"save_dir": str(files / "afile" / "run")}}))
    assert_user_error(run_cli("serve", "--config", rig), "the save folder", "afile is a file")


def test_os_errors_on_outputs_become_messages():
    from spikereveal import cli

    assert "choose another output path" in cli._output_problem(NotADirectoryError(20, "Not a directory", "a/b"))
    assert "permissions" in cli._output_problem(PermissionError(13, "Permission denied", "/root/x"))
    assert cli._output_problem(OSError(5, "I/O error", "x")) is None  # not a path problem: surfaces as is
    assert "free disk space" in cli._output_problem(OSError(28, "No space left on device", "out/a.png"))
    assert "cannot be created" in cli._output_problem(FileNotFoundError(2, "No such file or directory", "/proc/x"))


# -- 12. rough edges ---------------------------------------------------------------------------------------------
def test_verbose_works_after_the_verb_too(tmp_path):
    serve = ["serve", "--spike-endpoint", f"ipc://{tmp_path}/s", "--rgb-endpoint", f"ipc://{tmp_path}/r",
             "--output-endpoint", f"ipc://{tmp_path}/o", "--idle-timeout", "0.2"]  # no rig: stops at once
    before, after, quiet = run_cli("-v", *serve), run_cli(*serve, "-v"), run_cli(*serve)
    assert before.returncode == after.returncode == quiet.returncode == 0, (before.stderr, after.stderr)
    assert "INFO spikereveal.stream.serve: serving" in before.stderr
    assert "INFO spikereveal.stream.serve: serving" in after.stderr
    assert "INFO" not in quiet.stderr


def test_serve_usage_shows_the_endpoints_as_required():
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    usage = result.stdout.split("\n\n")[0]
    assert "(--spike-endpoint E1 --rgb-endpoint E2 --output-endpoint E3 | --config RIG_JSON)" in usage
    assert "[--output-endpoint" not in usage
    assert_user_error(run_cli("serve", "--spike-endpoint", "ipc:///tmp/x"), "no rgb_endpoint, output_endpoint")


def test_each_calibrate_target_has_its_own_help():
    texts = {target: run_cli("calibrate", target, "--help").stdout for target in ("geometry", "time", "dark")}
    parent = run_cli("calibrate", "--help").stdout
    assert len({parent, *texts.values()}) == 4
    assert "--board" in texts["geometry"] and "--board" not in texts["dark"]
    assert "--no-drift" in texts["time"] and "--dark" in texts["dark"] and "--dark DARK_REC" not in texts["time"]
    assert "lens-cap" in texts["dark"] and "homography" in texts["geometry"] and "drift" in texts["time"]


def test_the_truncation_warning_points_to_the_commands_not_a_python_function(recording, tmp_path):
    import os
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(recording, truncated)
    spikes = truncated / "spikes.dat"
    os.truncate(spikes, spikes.stat().st_size - 48 * 10 - 7)  # 10 frames and a partial one less
    result = run_cli("deblur", "--recording", truncated, "--out", tmp_path / "out", "--no-video", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "incomplete_exposures()" not in result.stderr and "strict=False" not in result.stderr
    assert "skipped and listed (spikereveal deblur" in result.stderr
    assert "skipped 1 exposure(s)" in result.stdout


@pytest.mark.parametrize("verb", ["simulate", "demo"])
def test_preset_help_says_tiny_is_a_plumbing_check_not_a_quality_check(verb):
    """Issue 15.14: a user trying tiny must not conclude from its PSNR that the model does not work."""
    done = run_cli(verb, "--help")
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "tiny: 64x40 spikes, a plumbing check" in text and "not a quality check" in text
