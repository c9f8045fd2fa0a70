"""The student's re-blur term over a finer set of timestamps than the distilled ones, and its trapezoid rule."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

from spikereveal.engines.checkpoint import load_checkpoint  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.training import datasets as ds  # noqa: E402
from spikereveal.training import losses  # noqa: E402
from spikereveal.training.train import TrainConfig, train  # noqa: E402
from spikereveal.training.train_config import distilled_positions  # noqa: E402
from training_support import TINY_EXPOSURE_FRAMES  # noqa: E402


@pytest.fixture(scope="module")
def recording(tiny_recording):
    return tiny_recording(seed=4, exposures=2)


@pytest.fixture(scope="module")
def exposures(recording):
    return ds.load_exposures([recording])


def test_nested_centers_are_the_distilled_centers_when_the_exposure_divides(exposures):
    window = exposures[0].window
    assert (window.exposure_stop - window.exposure_first - 1) % 12 == 0  # 13 frames: both sets are exact
    fine = ds.evenly_spread_centers(window, 13)
    np.testing.assert_array_equal(fine[distilled_positions(13, 5)], ds.evenly_spread_centers(window, 5))


def test_reblur_weights():
    np.testing.assert_allclose(losses.reblur_weights(4, "mean").numpy(), [0.25] * 4)
    np.testing.assert_allclose(losses.reblur_weights(5, "trapezoid").numpy(), [1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8])
    np.testing.assert_allclose(losses.reblur_weights(1, "trapezoid").numpy(), [1.0])
    with pytest.raises(ConfigError, match="re-blur rule"):
        losses.reblur_weights(3, "simpson")
    with pytest.raises(ConfigError, match="re-blur rule"):
        losses.LdnLossWeights(reblur_rule="median")


def test_trapezoid_rule_follows_a_linear_ramp_exactly_where_the_mean_does_not():
    # A pixel brightening linearly, then holding (an edge that stops mid-exposure): 5 evenly spread samples
    # averaged with the trapezoid rule land much closer to the mean over all 97 frames than their plain mean.
    t = np.linspace(0.0, 1.0, 97)
    signal = np.minimum(t, 0.5)
    exact = signal.mean()
    samples = torch.from_numpy(signal[np.rint(np.linspace(0, 96, 5)).astype(int)])
    trapezoid = float(losses.reblur_weights(5, "trapezoid") @ samples)
    plain = float(losses.reblur_weights(5, "mean") @ samples)
    assert abs(trapezoid - exact) < 0.2 * abs(plain - exact)


def test_ldn_loss_distils_at_the_nested_positions_and_reblurs_over_all_frames():
    rng = torch.Generator().manual_seed(2)
    frames = torch.rand(2, 9, 3, 16, 16, generator=rng)
    teacher = torch.rand(2, 5, 3, 16, 16, generator=rng)
    blurry = torch.rand(2, 3, 16, 16, generator=rng)
    weights = losses.LdnLossWeights(1.0, 50.0, ssim=2.0, reblur_rule="trapezoid")
    total, parts = losses.ldn_loss(frames, teacher, blurry, weights)
    expected_teacher = float(losses.distillation_distance(frames[:, ::2], teacher, ssim_weight=2.0))
    mix = torch.tensor([0.5, 1, 1, 1, 1, 1, 1, 1, 0.5]) / 8
    expected_reblur = float(((frames * mix[None, :, None, None, None]).sum(1) - blurry).pow(2).mean())
    assert parts["teacher"] == pytest.approx(expected_teacher, rel=1e-6)
    assert parts["reblur"] == pytest.approx(expected_reblur, rel=1e-5)
    assert float(total) == pytest.approx(expected_teacher + 50.0 * expected_reblur, rel=1e-5)
    # frames that average (trapezoid) to the blurry crop leave no re-blur error
    exact = blurry[:, None].expand(-1, 9, -1, -1, -1).clone()
    exact[:, 0] += 0.1
    exact[:, -1] -= 0.1
    assert losses.ldn_loss(exact, teacher, blurry, weights)[1]["reblur"] == pytest.approx(0.0, abs=1e-12)
    assert losses.ldn_loss(exact, teacher, blurry)[1]["reblur"] > 0  # the plain mean counts the ends fully
    with pytest.raises(ConfigError, match="--reblur-timestamps"):
        losses.ldn_loss(frames[:, :8], teacher, blurry, weights)
    with pytest.raises(ConfigError, match="shapes"):
        losses.ldn_loss(frames, teacher[..., :8], blurry, weights)


def test_dataset_runs_the_student_at_every_reblur_timestamp_and_the_teacher_at_the_distilled_ones(exposures):
    calls = []

    def teacher(exposure, centers):
        calls.append(np.asarray(centers).copy())
        return np.broadcast_to(exposure.blurry, (len(centers),) + exposure.blurry.shape).copy()

    fine = ds.LDNDataset(exposures, teacher, crop=4, samples_per_epoch=3, seed=1, timestamps=5, reblur_timestamps=13)
    plain = ds.LDNDataset(exposures, teacher, crop=4, samples_per_epoch=3, seed=1, timestamps=5)
    for exposure, call in zip(exposures, calls):
        np.testing.assert_array_equal(call, ds.evenly_spread_centers(exposure.window, 13)[::3])
    assert fine.distilled == [0, 3, 6, 9, 12]
    for i in range(3):
        blurry, spikes, targets, gain = fine[i]
        plain_blurry, plain_spikes, plain_targets, plain_gain = plain[i]
        assert spikes.shape[0] == 13 and targets.shape[0] == 5
        assert torch.equal(blurry, plain_blurry) and torch.equal(targets, plain_targets) and gain == plain_gain
        assert torch.equal(spikes[fine.distilled], plain_spikes)  # same crop, same windows at the distilled times


def test_cli_trains_with_finer_reblur_timestamps_and_records_them(recording, tmp_path):
    from spikereveal.commands import train as train_command

    parser = argparse.ArgumentParser(prog="spikereveal")
    train_command.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "ldn.pt"
    args = parser.parse_args(["train", "ldn", "--data", str(recording), "--out", str(out), "--teacher", "sdm",
                              "--crop", "4", "--batch-size", "2", "--samples-per-epoch", "2", "--epochs", "1",
                              "--threads", "1", "--reblur-timestamps", "9", "--reblur-rule", "trapezoid"])
    assert args.func(args) == 0
    _, meta = load_checkpoint(out, expected_kind="ldn")
    config = meta["training"]["config"]
    assert config["reblur_timestamps"] == 9 and config["reblur_rule"] == "trapezoid" and config["timestamps"] == 5
    assert meta["training"]["finished"] and meta["training"]["history"][0]["reblur"] > 0


def test_resume_keeps_the_saved_reblur_settings(recording, tmp_path):
    out = tmp_path / "ldn.pt"
    config = TrainConfig("ldn", epochs=1, crop=4, batch_size=2, samples_per_epoch=2, teacher="sdm",
                         reblur_timestamps=TINY_EXPOSURE_FRAMES, reblur_rule="trapezoid")
    train([recording], out, config)
    train([recording], out, TrainConfig("ldn", epochs=2), resume=out)
    _, meta = load_checkpoint(out, expected_kind="ldn")
    saved = meta["training"]["config"]
    assert meta["training"]["epochs_completed"] == 2
    assert saved["reblur_timestamps"] == TINY_EXPOSURE_FRAMES and saved["reblur_rule"] == "trapezoid"


def test_reblur_gradient_through_the_distilled_frames_only(exposures):
    from spikereveal.engines.ldn import LDN
    from spikereveal.training.train import batch_loss

    dataset = ds.LDNDataset(exposures, ds.sdm_teacher(), crop=4, samples_per_epoch=2, timestamps=3, reblur_timestamps=7)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    torch.manual_seed(0)
    model = LDN()
    weights, cpu = losses.LdnLossWeights(1.0, 100.0, reblur_rule="trapezoid"), torch.device("cpu")

    def loss_and_grads(loss):
        model.zero_grad()
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters()]

    full, full_grads = loss_and_grads(batch_loss("ldn", model, batch, cpu, weights)[0])
    cheap, cheap_grads = loss_and_grads(batch_loss("ldn", model, batch, cpu, weights, reblur_gradient="distilled")[0])
    # reference: every frame computed with a gradient, the re-blur-only ones detached afterwards
    blurry, spikes, targets, _ = batch
    frames = model(blurry.repeat_interleave(7, 0), spikes.reshape(14, *spikes.shape[2:]).float()).reshape(2, 7, 3, 16, 16)
    keep = torch.zeros(7, dtype=torch.bool)
    keep[[0, 3, 6]] = True
    mixed = torch.where(keep[None, :, None, None, None], frames, frames.detach())
    reference, reference_grads = loss_and_grads(losses.ldn_loss(mixed, targets, blurry, weights)[0])
    assert cheap == pytest.approx(full, rel=1e-5) and cheap == pytest.approx(reference, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(cheap_grads, reference_grads))
    assert not all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(cheap_grads, full_grads))
    with pytest.raises(ConfigError, match="unknown reblur_gradient"):
        TrainConfig("ldn", teacher="sdm", reblur_gradient="some")
    with pytest.raises(ConfigError, match="only apply to training the ldn"):
        TrainConfig("sr", reblur_gradient="distilled")
