"""``spikereveal adapt`` before any training: recording views, epoch planning, the shipped
starting points, and the refusals that need no torch. torch-free: these run without the ``train`` extra (the
stages themselves are in test_adapt.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cli_support import run_cli
from spikereveal.engines.export import shipped_teacher_path
from spikereveal.errors import ConfigError
from spikereveal.recording import open_recording
from spikereveal.training.adapt import AdaptConfig, plan_epochs, write_view
from spikereveal.training.train_config import MAX_TFP_SHORT_WINDOW, tfp_window_for_gain


@pytest.fixture(scope="module")
def recording(tiny_recording):
    return tiny_recording(seed=3, exposures=5)  # the same recording as test_adapt.py's


def _cli(*argv: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    """The console script (optionally where torch cannot be imported)."""
    return run_cli(*argv, block=("torch",) if block_torch else ())


@pytest.mark.parametrize("gain, window", [(1.6, 9), (1.0, 9), (0.9, 11), (0.67, 13), (0.45, 21), (0.34, 21),
                                          (0.05, 21), (0.0, 9), (float("nan"), 9), (-1.0, 9)])
def test_the_teachers_tfp_window_holds_the_reference_spike_count(gain, window):
    # 9 frames at the preset's gain 1; a sparser sensor gets a longer window, odd, at most the recorded margin
    assert tfp_window_for_gain(gain) == window
    assert window % 2 == 1 and 9 <= window <= MAX_TFP_SHORT_WINDOW == 21


def test_a_view_is_a_recording_with_only_its_exposures(recording, tmp_path):
    view = write_view(recording, tmp_path / "view", [1, 3], ground_truth=True)
    with open_recording(view) as opened, open_recording(recording) as source:
        assert [e.index for e in opened.exposures] == [1, 3]
        assert {f.exposure_index for f in opened.ground_truth} == {1, 3}
        assert opened.spikes.frame_count == source.spikes.frame_count
        assert (opened.read_exposure(3) == source.read_exposure(3)).all()
    without_truth = write_view(recording, tmp_path / "train", [0], ground_truth=False)
    with open_recording(without_truth) as opened:
        assert not opened.has_ground_truth and [e.index for e in opened.exposures] == [0]
    assert (Path(recording) / "exposures.csv").read_text().count("\n") == 6  # the source is untouched


def test_epochs_are_planned_from_the_first_one():
    assert plan_epochs(100.0, 20.0, 20.0, 30) == 5  # the first + 80 s / 20 s
    assert plan_epochs(100.0, 20.0, 1.0, 30) == 30  # capped at the recipe's epochs
    assert plan_epochs(100.0, 120.0, 20.0, 30) == 1  # over budget: the first only


def test_shipped_starting_points_are_found():
    assert shipped_teacher_path("bsn").name == "bsn_default.pt"
    assert shipped_teacher_path("sr").name == "sr_default.pt"


def test_budget_too_small_is_refused(recording, tmp_path):
    result = _cli("adapt", "--data", str(recording), "--out", str(tmp_path / "o"), "--time-budget-min", "0.2")
    assert result.returncode == 2 and "--time-budget-min 0.2 is too small" in result.stderr
    assert not (tmp_path / "o").exists()


def test_missing_torch_names_the_extra(recording, tmp_path):
    result = _cli("adapt", "--data", str(recording), "--out", str(tmp_path / "o"), block_torch=True)
    assert result.returncode == 2 and "pip install 'spikereveal[train]'" in result.stderr


@pytest.mark.parametrize("changes, message", [
    ({"holdout_every": 1}, "--holdout-every"),
    ({"teacher_bsn": "bsn.pt"}, "both --teacher-bsn and --teacher-sr"),
    ({"data": ()}, "no recording"),
    ({"autocast": "fp16"}, "unknown autocast"),
    ({"stage_epochs": (1, 0, 1)}, "three positive integers"),
    ({"distil_from": "student"}, "unknown --distil-from"),
    ({"teacher_nets": "freeze"}, "unknown --teacher-nets"),
    ({"synthetic": "yes"}, "unknown --synthetic"),
    ({"synthetic_exposures": 0}, "--synthetic-exposures must be a whole number >= 1"),
])
def test_invalid_configs(changes, message, recording):
    values = {"data": (str(recording),), "out": "x", **changes}
    with pytest.raises(ConfigError, match=message):
        AdaptConfig(**values)


def test_stages_that_do_not_run_give_their_share_to_the_student(recording):
    from spikereveal.training.adapt import STAGE_SHARES

    base = {"data": (str(recording),), "out": "x"}
    assert AdaptConfig(**base, teacher_nets="fine-tune", synthetic="matched").shares() == STAGE_SHARES
    kept = AdaptConfig(**base, teacher_nets="keep", synthetic="matched").shares()
    assert (kept["bsn"], kept["sr"], kept["synth"]) == (0.0, 0.0, STAGE_SHARES["synth"])
    assert kept["ldn"] == pytest.approx(STAGE_SHARES["ldn"] + STAGE_SHARES["bsn"] + STAGE_SHARES["sr"])
    alone = AdaptConfig(**base, teacher_nets="keep", synthetic="off").shares()
    assert alone["synth"] == 0.0 and alone["ldn"] == pytest.approx(sum(STAGE_SHARES.values()))


def test_duplicate_recordings_are_refused(recording):
    with pytest.raises(ConfigError, match="more than once"):
        AdaptConfig(data=(str(recording), str(recording) + "/"), out="x")


def test_help_needs_no_torch():
    result = _cli("adapt", "--help", block_torch=True)
    assert result.returncode == 0, result.stderr
    assert "--time-budget-min" in result.stdout and "--holdout-every" in result.stdout
