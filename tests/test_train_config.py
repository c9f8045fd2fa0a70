"""Training arguments (``training.train_config``): validation and the nested re-blur timestamps. torch-free:
these run without the ``train`` extra."""

import pytest

from spikereveal.errors import ConfigError
from spikereveal.training.train_config import TrainConfig, distilled_positions


@pytest.mark.parametrize("changes, message", [
    ({"kind": "unet"}, "unknown network"),
    ({"kind": "ldn", "teacher": "nets"}, "--teacher-bsn"),
    ({"kind": "bsn", "teacher_bsn": "x.pt"}, "only apply to training the ldn"),
    ({"kind": "sr", "lr": -1.0}, "learning rate"),
    ({"kind": "sr", "epochs": 0}, "epochs"),
    ({"kind": "sr", "tfp_window": 4}, "odd"),
    ({"kind": "sr", "autocast": "fp16"}, "unknown autocast"),
    ({"kind": "ldn", "teacher": "sdm", "teacher_autocast": "int8"}, "unknown teacher_autocast"),
    ({"kind": "ldn", "teacher": "sdm", "lambda_ssim": -1.0}, "lambda_ssim"),
])
def test_invalid_training_arguments(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


@pytest.mark.parametrize("n, m, expected", [
    (5, 5, [0, 1, 2, 3, 4]), (1, 1, [0]), (9, 5, [0, 2, 4, 6, 8]), (13, 5, [0, 3, 6, 9, 12]), (7, 2, [0, 6]),
])
def test_distilled_positions_pick_every_step_th_timestamp(n, m, expected):
    assert distilled_positions(n, m) == expected


@pytest.mark.parametrize("n, m", [(12, 5), (4, 5), (5, 1), (0, 0)])
def test_distilled_positions_refuse_sets_that_do_not_nest(n, m):
    with pytest.raises(ConfigError, match="--reblur-timestamps"):
        distilled_positions(n, m)


@pytest.mark.parametrize("changes, message", [
    ({"kind": "ldn", "teacher": "sdm", "timestamps": 5, "reblur_timestamps": 12}, "--reblur-timestamps"),
    ({"kind": "ldn", "teacher": "sdm", "reblur_timestamps": 3}, "--reblur-timestamps"),
    ({"kind": "ldn", "teacher": "sdm", "reblur_rule": "simpson"}, "unknown reblur_rule"),
    ({"kind": "sr", "reblur_timestamps": 9}, "only apply to training the ldn"),
    ({"kind": "bsn", "reblur_rule": "trapezoid"}, "only apply to training the ldn"),
])
def test_invalid_reblur_arguments(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_reblur_count_defaults_to_the_distilled_timestamps():
    assert TrainConfig("ldn", teacher="sdm").with_defaults().reblur_count == 5
    assert TrainConfig("ldn", teacher="sdm", timestamps=3).with_defaults().reblur_count == 3
    assert TrainConfig("ldn", teacher="sdm", reblur_timestamps=9).with_defaults().reblur_count == 9


def test_spike_norm_is_a_student_option_only():
    with pytest.raises(ConfigError, match="spike_norm"):
        TrainConfig("sr", spike_norm="firing-gain")
    with pytest.raises(ConfigError, match="unknown spike_norm"):
        TrainConfig("ldn", teacher="sdm", spike_norm="rates")
