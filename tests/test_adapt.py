"""``spikereveal adapt``: the stages, the report, resuming, errors (the split, views and refusals that need no torch
are in test_adapt_plan.py)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import numpy as np

import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

from spikereveal.engines.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from spikereveal.engines.ldn import LDN  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.training.adapt import STAGE_SHARES, STATE_FILE, AdaptConfig, adapt, split_recordings  # noqa: E402
from spikereveal.training.bsn import BSN, BSNConfig  # noqa: E402
from spikereveal.training.sr import SR, SRConfig  # noqa: E402
from cli_support import run_cli  # noqa: E402
from training_support import TINY_BSN, TINY_SR, simulate_tiny, write_recording  # noqa: E402


@pytest.fixture(scope="module")
def recording(tiny_recording):
    return tiny_recording(seed=3, exposures=5)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Tiny starting checkpoints (the shipped ones are full size: slower than these tests need)."""
    folder = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    bsn, sr, ldn = BSN(BSNConfig(**TINY_BSN)), SR(SRConfig(**TINY_SR)), LDN()
    paths = {"bsn": folder / "bsn.pt", "sr": folder / "sr.pt", "ldn": folder / "ldn.pt"}
    for kind, model in (("bsn", bsn), ("sr", sr), ("ldn", ldn)):
        save_checkpoint(paths[kind], kind, model, model.config)
    return paths


def _cli(*argv: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    """The console script (optionally where torch cannot be imported)."""
    return run_cli(*argv, block=("torch",) if block_torch else ())


def _args(recording, nets, out, *extra) -> list[str]:
    return ["adapt", "--data", str(recording), "--out", str(out), "--model", str(nets["ldn"]),
            "--teacher-bsn", str(nets["bsn"]), "--teacher-sr", str(nets["sr"]), "--time-budget-min", "30",
            "--threads", "1", "--epochs", "1,1,1", "--teacher-nets", "fine-tune", "--distil-from", "teacher+student",
            "--synthetic", "matched", "--synthetic-exposures", "10", *extra]


@pytest.fixture(scope="module")
def adapted(recording, nets, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "run"
    result = _cli(*_args(recording, nets, out))
    assert result.returncode == 0, result.stderr
    return out, result


# -- split (needs torch: it counts usable exposures with training.datasets) ---------------------------------------
def test_every_nth_usable_exposure_is_held_out_and_at_least_one(recording, tmp_path):
    split = split_recordings([str(recording)], 2)
    assert split.train == ((0, 2, 4),) and split.held_out == ((1, 3),)
    assert split_recordings([str(recording)], 4).held_out == ((3,),)
    assert split_recordings([str(recording)], 9).held_out == ((4,),)  # fewer than N: the last one
    other = simulate_tiny(tmp_path / "other", seed=4, exposures=3)
    both = split_recordings([str(recording), str(other)], 3)  # numbered across recordings in --data order
    assert both.held_out == ((2,), (0,)) and both.train == ((0, 1, 3, 4), (1, 2))
    assert both.to_dict(3)["held_out"] == [{"recording": str(recording), "exposures": [2]},
                                           {"recording": str(other), "exposures": [0]}]


# -- a whole run ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_adapt_writes_every_output_and_a_before_after_report(adapted, nets):
    out, result = adapted
    for name in ("bsn.pt", "sr.pt", "ldn.pt", "ldn.onnx", "report.json", "report.md", STATE_FILE):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    # sensor-matched simulated recordings: 10 exposures (8 + 2) on the rig's geometry at 1 / its firing gain
    synthetic = report["synthetic"]
    assert synthetic["mode"] == "matched" and synthetic["exposures"] == 10 and len(synthetic["recordings"]) == 2
    assert synthetic["threshold_scale"] == pytest.approx(1.0 / report["teacher"]["training_firing_gain"], rel=1e-3)
    assert (synthetic["geometry"]["spike_height"], synthetic["geometry"]["spike_width"]) == (16, 24)
    assert (synthetic["geometry"]["exposure_frames"], synthetic["geometry"]["k"]) == (13, 13)
    from spikereveal.recording import open_recording

    with open_recording(synthetic["recordings"][1], strict=False) as simulated:
        assert len(simulated.exposures) == 2 and simulated.has_ground_truth
        assert simulated.meta.spike.height == 16 and simulated.meta.spike.width == 24
    assert "10 exposure(s) in 2 recording(s) at threshold" in (out / "report.md").read_text()
    assert "10 exposure(s) simulated" in (out / "report.md").read_text()
    assert report["split"]["held_out"][0]["exposures"] == [3] and report["split"]["train_exposures"] == 4
    indicators = report["indicators"]
    for side in ("before", "after"):
        assert set(indicators[side]) == {"reblur_psnr", "teacher_agreement_psnr"}
        assert all(isinstance(v, float) for v in indicators[side].values())
        assert set(report["ground_truth"][side]) >= {"psnr", "ssim"}
    assert [e["exposure_index"] for e in indicators["exposures"]] == [3]
    assert indicators["firing_gain"]["held_out"]["mean"] > 0
    assert indicators["firing_gain"]["after"]["trained_range"] is not None  # the adapted student declares one
    assert report["models"]["student_before"] == str(nets["ldn"])
    # the student: the shipped recipe's loss, the fine-tuned teacher, trained on the 4 training exposures only
    _, meta = load_checkpoint(out / "ldn.pt", expected_kind="ldn")
    training = meta["training"]
    assert training["exposures"] == 4 + 10 and training["config"]["init"] == str(nets["ldn"])
    assert training["config"]["ground_truth"] == "where-recorded"  # the rig's own views carry no gt.csv
    assert training["config"]["teacher_bsn"] == str(out / "bsn.pt")
    # the targets: the mean of the fine-tuned teacher's and the starting student's frames
    assert (training["config"]["teacher"], training["config"]["teacher_ldn"]) == ("nets+ldn", str(nets["ldn"]))
    assert training["config"]["teacher_sr"] == str(out / "sr.pt")
    assert (report["teacher"]["distil_from"], report["teacher"]["nets"]) == ("teacher+student", "fine-tune")
    assert "the mean of the fine-tuned teacher's and the starting student's frames (--distil-from teacher+student)" \
        in (out / "report.md").read_text()
    assert (training["config"]["lambda_reblur"], training["config"]["lambda_ssim"]) == (1000.0, 2.0)
    assert (training["config"]["reblur_timestamps"], training["config"]["reblur_rule"]) == (13, "trapezoid")
    _, bsn_meta = load_checkpoint(out / "bsn.pt", expected_kind="bsn")
    assert bsn_meta["training"]["config"]["init"] == str(nets["bsn"]) and bsn_meta["training"]["exposures"] == 4
    # the teacher's short TFP window follows the training exposures' firing gain; BSN and student use the same
    from spikereveal.training.train_config import tfp_window_for_gain

    window = report["teacher"]["tfp_window"]
    assert window == tfp_window_for_gain(report["teacher"]["training_firing_gain"])
    assert bsn_meta["training"]["config"]["tfp_window"] == window == training["config"]["tfp_window"]
    assert f"short TFP window: {window} frames" in (out / "report.md").read_text()
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    assert read_onnx_metadata(out / "ldn.onnx")["batch"] == "dynamic"
    assert "student re-blur PSNR" in result.stdout and "| before | after |" in result.stdout
    assert "student re-blur PSNR" in (out / "report.md").read_text()


@pytest.mark.slow
def test_the_report_time_is_measured_and_taken_from_the_students_budget(adapted):
    out, result = adapted
    report = json.loads((out / "report.json").read_text())
    timed = report["budget"]["report"]
    # one held-out exposure: K = 7 indicator frames, and its 3 ground-truth frames (k 3)
    assert (timed["held_out_exposures"], timed["indicator_frames"], timed["ground_truth_frames"]) == (1, 7, 3)
    assert set(timed["per_frame_s"]) == {"student", "sdm", "scores"}
    assert all(v > 0 for v in timed["per_frame_s"].values()) and timed["teacher_per_exposure_s"] > 0
    seconds = timed["per_frame_s"]  # the teacher per held-out exposure, the rest per frame, x1.1
    assert timed["estimate_s"] == pytest.approx(1.1 * (timed["teacher_per_exposure_s"] + 7 * 2 * seconds["student"]
                                                       + 3 * 2 * (seconds["student"] + seconds["sdm"]
                                                                  + 3 * seconds["scores"])), abs=0.1)
    assert 0 < timed["estimate_s"] <= timed["reserve_s"] and timed["elapsed_s"] > 0
    state = json.loads((out / STATE_FILE).read_text())
    assert state["stages"]["ldn"]["report_time"]["reserve_s"] == timed["reserve_s"]
    assert timed["reserve_s"] == pytest.approx(timed["estimate_s"] + state["stages"]["split"]["elapsed_s"], abs=0.11)
    shares, stages = report["budget"]["shares"], report["budget"]["stages"]
    # what the stages before the student left unspent passes on to it (their budgets are their shares)
    unspent = sum(max(0.0, shares[kind] * 30 * 60 - stages[kind]["elapsed_s"]) for kind in ("synth", "bsn", "sr")
                  if stages[kind]["status"] == "done")
    assert unspent > 0 and stages["ldn"]["carried_s"] == pytest.approx(unspent, abs=0.1)
    for kind, stage in stages.items():  # the student's share pays for the split and the report
        expected = shares[kind] * 30 * 60 + (unspent - timed["reserve_s"] if kind == "ldn" else 0.0)
        assert stage["budget_s"] == pytest.approx(expected, abs=0.2)
    row = f"| ldn | {stages['ldn']['budget_s']:.0f} (+{stages['ldn']['carried_s']:.0f} unspent earlier) |"
    assert row in (out / "report.md").read_text()
    assert "kept for the split and the report" in result.stdout + result.stderr
    assert f"| split + report | {timed['reserve_s']:.0f} (from ldn's share) |" in (out / "report.md").read_text()


def test_a_report_that_needs_most_of_the_budget_is_refused_and_its_measurement_kept(recording, nets, tmp_path,
                                                                                    monkeypatch):
    import spikereveal.training.adapt as module

    measured = {"held_out_exposures": 1, "indicator_frames": 7, "ground_truth_frames": 3, "per_frame_s": {},
                "estimate_s": 2000.0, "probe_s": 0.1}
    monkeypatch.setattr(module, "report_estimate", lambda *args: dict(measured))
    config = AdaptConfig(data=(str(recording),), out=str(tmp_path / "run"), time_budget_min=30.0, threads=1,
                         model=str(nets["ldn"]), teacher_bsn=str(nets["bsn"]), teacher_sr=str(nets["sr"]),
                         synthetic="off")
    with pytest.raises(ConfigError, match=r"needs about 200\d s, more than 50% of --time-budget-min 30; re-run with "
                                          r"--time-budget-min 67 or more, or hold out fewer exposures"):
        adapt(config)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    assert state["stages"]["ldn"]["report_time"]["estimate_s"] == 2000.0
    _, meta = load_checkpoint(tmp_path / "run" / "ldn.pt")
    assert meta["training"]["epochs_completed"] == 1  # the measurement epoch is kept

    def measure_again(*args):
        raise AssertionError("the report time is measured once per output directory")

    monkeypatch.setattr(module, "report_estimate", measure_again)
    monkeypatch.setattr(module, "MAX_EPOCHS", {"bsn": 2, "sr": 2, "ldn": 2})  # keep the test short
    result = adapt(replace(config, time_budget_min=70.0))
    assert result.report["budget"]["report"]["estimate_s"] == 2000.0
    assert result.report["budget"]["stages"]["ldn"]["budget_s"] == pytest.approx(
        sum(STAGE_SHARES.values()) * 70 * 60 - result.report["budget"]["report"]["reserve_s"], abs=0.1)


@pytest.mark.slow
def test_falling_indicators_are_not_read_as_a_verdict(adapted):
    from spikereveal.training.adapt import format_report

    out, _ = adapted
    report = json.loads((out / "report.json").read_text())
    for key in ("reblur_psnr", "teacher_agreement_psnr"):
        report["indicators"]["after"][key] = report["indicators"]["before"][key] - 1.0
    text = format_report(report)
    assert "further from both the blur and the teacher" in text and "Neither is a quality score" in text
    assert "judge by the ground-truth rows" in text and "keep the previous model" not in text
    report["ground_truth"] = None
    assert "compare the two models on a few held-out frames by eye" in format_report(report)


@pytest.mark.slow
def test_rerunning_a_finished_run_skips_every_stage(adapted, recording, nets):
    out, _ = adapted
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("bsn.pt", "sr.pt", "ldn.pt", "ldn.onnx")}
    result = _cli(*_args(recording, nets, out))
    assert result.returncode == 0, result.stderr
    assert "skipped (done by an earlier run): synth, bsn, sr, ldn, export, report" in result.stdout
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps


@pytest.mark.slow
def test_an_interrupted_run_continues_where_it_stopped(recording, nets, tmp_path):
    config = AdaptConfig(data=(str(recording),), out=str(tmp_path / "run"), time_budget_min=30.0, threads=1,
                         model=str(nets["ldn"]), teacher_bsn=str(nets["bsn"]), teacher_sr=str(nets["sr"]),
                         stage_epochs=(1, 1, 2), teacher_nets="fine-tune", synthetic="off")

    def interrupt(event) -> None:  # Ctrl-C in the student's second epoch
        step = event.train
        if event.stage == "ldn" and step is not None and step.phase == "step" and step.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        adapt(config, progress=interrupt)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    assert [state["stages"][k]["status"] for k in ("bsn", "sr", "ldn")] == ["done", "done", "running"]
    _, meta = load_checkpoint(tmp_path / "run" / "ldn.pt")
    assert meta["training"]["epochs_completed"] == 1  # the finished epoch is kept

    result = adapt(config)
    assert result.skipped == ("bsn", "sr") and result.ran == ("ldn", "export", "report")
    _, meta = load_checkpoint(tmp_path / "run" / "ldn.pt")
    assert meta["training"]["epochs_completed"] == 2 and [h["epoch"] for h in meta["training"]["history"]] == [1, 2]
    assert result.report["budget"]["stages"]["ldn"]["epochs_completed"] == 2


@pytest.mark.slow
def test_epochs_are_sized_from_the_budget_and_a_budget_without_one_step_is_refused(recording, nets, tmp_path,
                                                                                   monkeypatch):
    import spikereveal.training.adapt as module

    monkeypatch.setattr(module, "MAX_EPOCHS", {"bsn": 2, "sr": 2, "ldn": 2})  # keep the test short
    monkeypatch.setitem(module.STAGE_SHARES, "sr", 1e-7)  # the sr stage cannot fit a single step
    config = AdaptConfig(data=(str(recording),), out=str(tmp_path / "run"), time_budget_min=30.0, threads=1,
                         model=str(nets["ldn"]), teacher_bsn=str(nets["bsn"]), teacher_sr=str(nets["sr"]),
                         teacher_nets="fine-tune", synthetic="off")
    with pytest.raises(ConfigError, match=r"the sr stage needed .* single training step.*--time-budget-min \d+"):
        adapt(config)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    bsn = state["stages"]["bsn"]
    assert bsn["status"] == "done" and bsn["planned_epochs"] == 2 and bsn["epochs_completed"] == 2
    assert bsn["first_epoch_s"] > 0 and state["stages"]["sr"]["status"] == "running"
    _, meta = load_checkpoint(tmp_path / "run" / "sr.pt")
    assert meta["training"]["step_in_epoch"] == 1  # the step done is kept

    monkeypatch.setitem(module.STAGE_SHARES, "sr", 0.10)
    result = adapt(config)
    assert result.skipped == ("bsn",)
    stages = result.report["budget"]["stages"]
    assert (stages["sr"]["planned_epochs"], stages["sr"]["epochs_completed"]) == (2, 2)
    assert (stages["ldn"]["planned_epochs"], stages["ldn"]["epochs_completed"]) == (2, 2)
    _, meta = load_checkpoint(tmp_path / "run" / "ldn.pt")
    assert [h["lr"] for h in meta["training"]["history"]] == pytest.approx([1e-3, 0.5e-3])  # cosine over 2 epochs


@pytest.mark.slow
def test_force_starts_over_with_other_data(adapted, recording, nets, tmp_path):
    out = tmp_path / "run"
    other = simulate_tiny(tmp_path / "other", seed=5, exposures=3)
    base = dict(out=str(out), time_budget_min=30.0, threads=1, model=str(nets["ldn"]),
                teacher_bsn=str(nets["bsn"]), teacher_sr=str(nets["sr"]), stage_epochs=(1, 1, 1), synthetic="off")
    adapt(AdaptConfig(data=(str(recording),), **base))
    with pytest.raises(ConfigError, match="--data was"):
        adapt(AdaptConfig(data=(str(other),), **base))
    result = adapt(AdaptConfig(data=(str(other),), force=True, **base))
    assert result.skipped == () and result.report["split"]["held_out"] == [{"recording": str(other),
                                                                              "exposures": [2]}]


@pytest.mark.slow
def test_keeping_the_teacher_nets_gives_their_budget_to_the_student(recording, nets, tmp_path):
    out = tmp_path / "run"
    result = adapt(AdaptConfig(data=(str(recording),), out=str(out), time_budget_min=30.0, threads=1,
                               model=str(nets["ldn"]), teacher_bsn=str(nets["bsn"]), teacher_sr=str(nets["sr"]),
                               stage_epochs=(1, 1, 1), teacher_nets="keep", synthetic="off"))
    assert result.ran == ("ldn", "export", "report") and result.skipped == ()
    assert not (out / "bsn.pt").exists() and not (out / "sr.pt").exists()
    assert (result.outputs["bsn"], result.outputs["sr"]) == (nets["bsn"], nets["sr"])
    _, meta = load_checkpoint(out / "ldn.pt", expected_kind="ldn")
    config = meta["training"]["config"]
    assert (config["teacher_bsn"], config["teacher_sr"]) == (str(nets["bsn"]), str(nets["sr"]))
    report = result.report
    assert report["models"]["teacher_bsn_after"] == str(nets["bsn"]) and report["teacher"]["nets"] == "keep"
    stages = report["budget"]["stages"]
    assert stages["bsn"]["status"] == stages["sr"]["status"] == "kept"
    reserve_s = report["budget"]["report"]["reserve_s"]  # the split's and the report's time, from the student's
    shares_sum = sum(STAGE_SHARES.values())  # the export's 1 % is not the student's
    assert stages["bsn"]["budget_s"] == 0.0
    assert stages["ldn"]["budget_s"] == pytest.approx(shares_sum * 30 * 60 - reserve_s, abs=0.1)
    text = (out / "report.md").read_text()
    assert "| bsn | 0 | 0 | kept as it was | - |" in text and "starting (kept, --teacher-nets keep)" in text


@pytest.mark.slow
def test_distilling_from_the_teacher_alone_and_state_files_from_before_the_choice(recording, nets, tmp_path):
    base = dict(data=(str(recording),), out=str(tmp_path / "run"), time_budget_min=30.0, threads=1,
                model=str(nets["ldn"]), teacher_bsn=str(nets["bsn"]), teacher_sr=str(nets["sr"]),
                stage_epochs=(1, 1, 1), teacher_nets="fine-tune", synthetic="off")
    result = adapt(AdaptConfig(distil_from="teacher", **base))
    _, meta = load_checkpoint(tmp_path / "run" / "ldn.pt", expected_kind="ldn")
    assert meta["training"]["config"]["teacher"] == "nets" and meta["training"]["config"]["teacher_ldn"] is None
    assert result.report["teacher"]["distil_from"] == "teacher"
    # a state written before --distil-from, --teacher-nets and --synthetic existed meant the fine-tuned teacher alone
    # and no simulated recordings: it continues with that, and only that
    path = tmp_path / "run" / STATE_FILE
    state = json.loads(path.read_text())
    for name in ("distil_from", "teacher_nets", "synthetic", "synthetic_exposures"):
        del state["identity"][name]
    path.write_text(json.dumps(state))
    assert adapt(AdaptConfig(distil_from="teacher", **base)).ran == ()
    with pytest.raises(ConfigError, match="--distil-from was 'teacher', now 'teacher\\+student'"):
        adapt(AdaptConfig(distil_from="teacher+student", **base))
    with pytest.raises(ConfigError, match="--teacher-nets was 'fine-tune', now 'keep'"):
        adapt(AdaptConfig(distil_from="teacher", **{**base, "teacher_nets": "keep"}))
    with pytest.raises(ConfigError, match="--synthetic was 'off', now 'matched'"):
        adapt(AdaptConfig(distil_from="teacher", **{**base, "synthetic": "matched"}))


@pytest.mark.slow
def test_simulated_recordings_resume_train_on_their_ground_truth_and_fit_the_budget(recording, nets, tmp_path,
                                                                                     monkeypatch):
    import spikereveal.training.adapt as module
    from spikereveal.training import datasets as ds

    base = dict(data=(str(recording),), time_budget_min=30.0, threads=1, model=str(nets["ldn"]),
                teacher_bsn=str(nets["bsn"]), teacher_sr=str(nets["sr"]), stage_epochs=(1, 1, 1),
                synthetic_exposures=24)
    config = AdaptConfig(out=str(tmp_path / "run"), **base)
    events = []

    def interrupt(event) -> None:  # Ctrl-C once the second simulated recording is written
        if event.stage == "synth" and event.status == "progress":
            events.append(event.message)
            if len(events) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        adapt(config, progress=interrupt)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    written = [tmp_path / "run" / "synthetic" / "train" / f"matched_0{i}" for i in range(2)]
    assert state["stages"]["synth"]["recordings"] == [str(p) for p in written]
    stamps = [(p / "spikes.dat").stat().st_mtime_ns for p in written]

    result = adapt(config)
    assert result.ran == ("synth", "ldn", "export", "report")  # the two written recordings are kept
    assert [(p / "spikes.dat").stat().st_mtime_ns for p in written] == stamps
    assert result.report["synthetic"]["exposures"] == 24 and len(result.report["synthetic"]["recordings"]) == 3
    # the student's targets on a simulated exposure are its sharp frames, on the rig's the teacher's mean
    exposure = ds.load_exposures([written[0]])[0]
    centers = ds.teacher_centers(exposure.window, 5, 13)
    expected = ds.ground_truth_teacher()(exposure, centers)
    cached = [np.load(p).astype(np.float32) for p in (tmp_path / "run" / "teacher_cache").glob("teacher-*.npy")]
    assert len(cached) == 4 + 24 and sum(np.allclose(c, expected, atol=1e-3) for c in cached) == 1

    # a budget that holds one recording writes one, and says the budget stopped it
    monkeypatch.setitem(module.STAGE_SHARES, "synth", 1e-7)
    result = adapt(AdaptConfig(out=str(tmp_path / "small"), **base))
    synth = result.report["budget"]["stages"]["synth"]
    assert (synth["exposures"], synth["stopped"]) == (8, "time budget")
    assert "| synth | 0 |" in (tmp_path / "small" / "report.md").read_text()


# -- bad input: exit code 2 and a message that says what to do -----------------------------------------------------
def test_recordings_without_enough_usable_exposures_are_refused(tmp_path, nets):
    short_margins = write_recording(tmp_path / "short", exposures=2, margin=5)  # windows need 10 frames each side
    result = _cli(*_args(short_margins, nets, tmp_path / "a"))
    assert result.returncode == 2 and "none of its 2 exposure(s) is usable" in result.stderr
    assert "Record longer margins" in result.stderr
    single = write_recording(tmp_path / "single", exposures=1)
    result = _cli(*_args(single, nets, tmp_path / "b"))
    assert result.returncode == 2 and "only 1 usable exposure" in result.stderr and "at least 2" in result.stderr


@pytest.mark.slow
def test_out_must_be_a_directory_of_this_run(adapted, recording, nets, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = _cli(*_args(recording, nets, a_file))
    assert result.returncode == 2 and "is a file" in result.stderr
    out, _ = adapted
    result = _cli(*_args(tmp_path / "elsewhere", nets, out))
    assert result.returncode == 2 and "holds an adaptation with other arguments" in result.stderr
    assert "--force" in result.stderr


