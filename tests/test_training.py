"""Training: losses, datasets (aligned, seeded crops), loops (decrease, checkpoint, exact resume), CLI."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

from spikereveal.engines.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from spikereveal.engines.ldn import LDN  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.kernels import extract_ldn_input, tfp, tfp_range  # noqa: E402
from spikereveal.training import datasets as ds  # noqa: E402
from spikereveal.training import losses  # noqa: E402
from spikereveal.training.bsn import BSN, BSNConfig  # noqa: E402
from spikereveal.training.evaluate import ssim_numpy  # noqa: E402
from spikereveal.training.sr import SR, SRConfig  # noqa: E402
from spikereveal.training.train import (  # noqa: E402
    RunOptions,
    TrainConfig,
    batch_loss,
    cosine_lr,
    optimizer_state_path,
    resolve_device,
    train,
)
from training_support import TINY_BSN, TINY_EXPOSURE_FRAMES, TINY_SPIKE, TINY_SR, write_recording  # noqa: E402


@pytest.fixture(scope="module")
def recording(tiny_recording):
    return tiny_recording(seed=3, exposures=2)


@pytest.fixture(scope="module")
def exposures(recording):
    return ds.load_exposures([recording])


# -- losses ------------------------------------------------------------------------------------------------
def test_gray_uses_bgr_weights():
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0] = 1.0  # blue only
    assert torch.allclose(losses.gray(image), torch.full((1, 1, 2, 2), 0.11))
    image[0, 2] = 1.0  # + red
    assert torch.allclose(losses.gray(image), torch.full((1, 1, 2, 2), 0.41))


def test_torch_ssim_matches_the_numpy_and_skimage_metric():
    rng = np.random.default_rng(0)
    a = rng.random((3, 24, 30))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    expected = ssim_numpy(a, b)
    got = float(losses.ssim(torch.from_numpy(b)[None], torch.from_numpy(a)[None]))
    assert got == pytest.approx(expected, abs=1e-9)
    skimage_metrics = pytest.importorskip("skimage.metrics")
    reference = skimage_metrics.structural_similarity(
        a, b, channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert got == pytest.approx(reference, abs=1e-9)
    assert float(losses.ssim(torch.from_numpy(a)[None], torch.from_numpy(a)[None])) == pytest.approx(1.0)


def test_distillation_distance_is_zero_only_for_equal_images():
    rng = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 3, 16, 16, generator=rng)
    same = float(losses.distillation_distance(a, a))
    assert same == pytest.approx(losses.CHARBONNIER_EPS, abs=1e-6)  # Charbonnier's floor, SSIM = 1
    assert float(losses.distillation_distance(a.flip(-1), a)) > same + 0.1


def test_charbonnier_only_distance_leaves_out_the_structural_term():
    rng = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 3, 16, 16, generator=rng), torch.rand(2, 3, 3, 16, 16, generator=rng)
    full = float(losses.distillation_distance(a, b))
    plain = float(losses.distillation_distance(a, b, ssim_weight=0.0))
    double = float(losses.distillation_distance(a, b, ssim_weight=2.0))
    assert plain == pytest.approx(float(losses.charbonnier(a, b)))
    structural = 1 - float(losses.ssim(a.reshape(-1, 3, 16, 16), b.reshape(-1, 3, 16, 16)))
    assert full == pytest.approx(plain + structural) and double == pytest.approx(plain + 2 * structural)
    frames, teacher, blurry = a[:1], b[:1], a[0].mean(dim=0, keepdim=True)
    weights = losses.LdnLossWeights(1.0, 0.0, ssim=0.0)
    assert float(losses.ldn_loss(frames, teacher, blurry, weights)[0]) == pytest.approx(
        float(losses.charbonnier(frames, teacher)), rel=1e-6)


def test_ldn_loss_reblur_term_vanishes_when_the_frames_average_to_the_blurry_input():
    rng = torch.Generator().manual_seed(1)
    blurry = torch.rand(2, 3, 16, 16, generator=rng)
    offset = torch.rand(2, 1, 3, 16, 16, generator=rng) * 0.1
    frames = torch.cat([blurry[:, None] + offset, blurry[:, None] - offset], dim=1)
    teacher = torch.rand_like(frames)
    total, parts = losses.ldn_loss(frames, teacher, blurry)
    assert parts["reblur"] == pytest.approx(0.0, abs=1e-12)
    assert float(total) == pytest.approx(parts["teacher"], rel=1e-6)
    _, moved = losses.ldn_loss(frames + 0.1, teacher, blurry, losses.LdnLossWeights(1.0, 100.0))
    assert moved["reblur"] == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(ConfigError):
        losses.ldn_loss(frames, teacher[:, :1], blurry)
    with pytest.raises(ConfigError):
        losses.ldn_loss(frames, teacher, blurry[:, :, :8])


# -- datasets -----------------------------------------------------------------------------------------------
def test_exposures_load_their_whole_window(recording, exposures):
    assert len(exposures) == 2
    for exposure in exposures:
        window = exposure.window
        assert exposure.packed.shape[0] == window.window_stop - window.window_first
        assert window.exposure_stop - window.exposure_first == TINY_EXPOSURE_FRAMES
        assert exposure.blurry.shape == (3, 4 * TINY_SPIKE[0], 4 * TINY_SPIKE[1])


def test_evenly_spread_centers_cover_first_and_last_frame(exposures):
    window = exposures[0].window
    centers = ds.evenly_spread_centers(window, 5)
    assert centers[0] == window.exposure_first and centers[-1] == window.exposure_stop - 1
    assert np.all(np.diff(centers) > 0) and len(centers) == 5


def test_crops_are_a_function_of_seed_epoch_and_index(exposures):
    dataset = ds.BSNDataset(exposures, crop=8, samples_per_epoch=6, seed=5)
    again = ds.BSNDataset(exposures, crop=8, samples_per_epoch=6, seed=5)
    assert all(torch.equal(dataset[i], again[i]) for i in range(6))
    first_epoch = [dataset[i] for i in range(6)]
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i]) for i, a in enumerate(first_epoch))
    other_seed = ds.BSNDataset(exposures, crop=8, samples_per_epoch=6, seed=6)
    assert not all(torch.equal(a, other_seed[i]) for i, a in enumerate(first_epoch))
    with pytest.raises(IndexError):
        dataset[6]


def _locate(image: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    c = crop.shape[-1]
    return [(y, x) for y in range(image.shape[-2] - c + 1) for x in range(image.shape[-1] - c + 1)
            if np.array_equal(image[..., y : y + c, x : x + c], crop)]


def test_bsn_items_are_short_tfp_crops_inside_the_exposure(exposures):
    dataset = ds.BSNDataset(exposures, crop=6, samples_per_epoch=4, seed=2, augment=False)
    exposure = exposures[0]
    h, w = TINY_SPIKE
    window = exposure.window
    candidates = [tfp(exposure.packed, h, w, c, 9, window.window_first)
                  for c in range(window.exposure_first, window.exposure_stop)]
    for other in exposures[1:]:
        ow = other.window
        candidates += [tfp(other.packed, h, w, c, 9, ow.window_first) for c in range(ow.exposure_first, ow.exposure_stop)]
    for i in range(len(dataset)):
        item = dataset[i].numpy()
        assert item.shape == (1, 6, 6)
        assert any(_locate(candidate, item[0]) for candidate in candidates)


def test_sr_items_are_aligned_long_tfp_and_gray_crops(exposures):
    dataset = ds.SRDataset(exposures, crop=5, samples_per_epoch=4, seed=3, augment=False)
    h, w = TINY_SPIKE
    for i in range(len(dataset)):
        spikes, target = (t.numpy()[0] for t in dataset[i])
        assert spikes.shape == (5, 5) and target.shape == (20, 20)
        hits = []
        for exposure in exposures:
            window = exposure.window
            long_tfp = tfp_range(exposure.packed, h, w, window.exposure_first, window.exposure_stop,
                                 window.window_first)
            gray = 0.11 * exposure.blurry[0] + 0.59 * exposure.blurry[1] + 0.3 * exposure.blurry[2]
            for y, x in _locate(long_tfp, spikes):
                hits.append(np.allclose(gray[4 * y : 4 * y + 20, 4 * x : 4 * x + 20], target, atol=1e-6))
        assert any(hits)


def test_ldn_items_align_blur_spikes_and_teacher(exposures):
    calls = []

    def teacher(exposure, centers):
        calls.append(np.array(centers))
        return np.broadcast_to(exposure.blurry * 0.5, (len(centers),) + exposure.blurry.shape).copy()

    dataset = ds.LDNDataset(exposures, teacher, crop=4, samples_per_epoch=5, seed=4, augment=False)
    assert len(calls) == len(exposures)  # teacher targets are computed once per exposure, up front
    h, w = TINY_SPIKE
    for i in range(len(dataset)):
        blurry, spikes, targets, gain = (t.numpy() for t in dataset[i])
        assert blurry.shape == (3, 16, 16) and spikes.shape == (5, 21, 4, 4) and targets.shape == (5, 3, 16, 16)
        assert spikes.dtype == np.uint8
        np.testing.assert_allclose(targets, np.broadcast_to(blurry * 0.5, targets.shape), atol=2e-3)  # float16 cache
        found = False
        for exposure, centers in zip(exposures, calls):
            full = extract_ldn_input(exposure.packed, h, w, centers, first_index=exposure.window.window_first)
            for y, x in _locate(full, spikes.astype(np.float32)):
                found |= np.allclose(exposure.blurry[:, 4 * y : 4 * y + 16, 4 * x : 4 * x + 16], blurry, atol=1e-3)
        assert found


def test_flips_apply_to_every_array_of_a_sample(exposures):
    teacher = lambda e, c: np.broadcast_to(e.blurry, (len(c),) + e.blurry.shape).copy()  # noqa: E731
    dataset = ds.LDNDataset(exposures, teacher, crop=4, samples_per_epoch=16, seed=0, augment=True)
    for i in range(len(dataset)):
        blurry, _, targets, _ = dataset[i]
        assert torch.allclose(targets[0], blurry, atol=2e-3)


def test_teacher_targets_are_cached_on_disk(exposures, tmp_path):
    calls = []

    def teacher(exposure, centers):
        calls.append(exposure.exposure_index)
        return np.full((len(centers),) + exposure.blurry.shape, 0.25, np.float32)

    cached = ds.cached_teacher(teacher, tmp_path, "test-teacher")
    centers = ds.evenly_spread_centers(exposures[0].window, 5)
    first = cached(exposures[0], centers)
    again = cached(exposures[0], centers)
    assert calls == [exposures[0].exposure_index] and np.array_equal(first, again)
    cached(exposures[0], centers[:3])  # other timestamps: computed anew
    ds.cached_teacher(teacher, tmp_path, "another-teacher")(exposures[0], centers)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.npy"))) == 3


def test_crop_larger_than_the_sensor_is_refused(exposures):
    with pytest.raises(ConfigError, match="--crop"):
        ds.BSNDataset(exposures, crop=TINY_SPIKE[0] + 1)


# -- the loops ---------------------------------------------------------------------------------------------
def _fixed_batch_losses(kind, model, batch, steps=12, lr=1e-3):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss, _ = batch_loss(kind, model, batch, torch.device("cpu"), losses.LdnLossWeights())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


def _tiny_model_and_batch(kind, exposures, samples):
    """A seeded tiny network of ``kind`` and one batch of its dataset (``samples`` crops for bsn/sr, 2 for ldn)."""
    torch.manual_seed(0)
    if kind == "bsn":
        dataset, model = ds.BSNDataset(exposures, crop=12, samples_per_epoch=samples), BSN(BSNConfig(**TINY_BSN))
    elif kind == "sr":
        dataset, model = ds.SRDataset(exposures, crop=6, samples_per_epoch=samples), SR(SRConfig(**TINY_SR))
    else:
        dataset, model = ds.LDNDataset(exposures, ds.sdm_teacher(), crop=4, samples_per_epoch=2), LDN()
    return model, next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))


@pytest.mark.parametrize("kind", ["bsn", "sr", "ldn"])
def test_loss_decreases_over_a_few_steps(kind, exposures):
    model, batch = _tiny_model_and_batch(kind, exposures, samples=4)
    history = _fixed_batch_losses(kind, model, batch, lr=3e-3 if kind == "bsn" else 1e-3)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.8 * history[0], history


@pytest.mark.parametrize("kind", ["bsn", "sr", "ldn"])
def test_bf16_autocast_gives_the_float32_loss_closely_and_float32_gradients(kind, exposures):
    model, batch = _tiny_model_and_batch(kind, exposures, samples=2)
    weights, cpu = losses.LdnLossWeights(), torch.device("cpu")
    exact, _ = batch_loss(kind, model, batch, cpu, weights, autocast="off")
    mixed, _ = batch_loss(kind, model, batch, cpu, weights, autocast="bf16")
    exact_value, mixed_value = float(exact.detach()), float(mixed.detach())
    assert mixed.dtype == torch.float32 and mixed_value != exact_value  # it really ran in bf16
    assert mixed_value == pytest.approx(exact_value, rel=0.05)
    mixed.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_bf16_teacher_targets_are_close_and_cached_apart(recording, exposures, tmp_path):
    from spikereveal.training.train import _teacher_fn

    bsn_path, sr_path = tmp_path / "bsn.pt", tmp_path / "sr.pt"
    torch.manual_seed(3)
    bsn, sr = BSN(BSNConfig(**TINY_BSN)), SR(SRConfig(**TINY_SR))
    save_checkpoint(bsn_path, "bsn", bsn, bsn.config)
    save_checkpoint(sr_path, "sr", sr, sr.config)
    centers = ds.evenly_spread_centers(exposures[0].window, 3)
    targets = {}
    for precision in ("off", "bf16"):
        config = TrainConfig("ldn", teacher_bsn=str(bsn_path), teacher_sr=str(sr_path),
                             teacher_autocast=precision).with_defaults()
        targets[precision] = _teacher_fn(config, torch.device("cpu"), str(tmp_path / "cache"))(exposures[0], centers)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # one cache entry per precision
    assert targets["off"].dtype == targets["bf16"].dtype == np.float32
    assert not np.array_equal(targets["off"], targets["bf16"])
    assert np.abs(targets["off"] - targets["bf16"]).mean() < 0.02


def test_cosine_schedule_per_epoch():
    assert cosine_lr(1e-3, 0, 4) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 2, 4) == pytest.approx(0.5e-3)
    assert [cosine_lr(1.0, e, 10) for e in range(10)] == sorted((cosine_lr(1.0, e, 10) for e in range(10)), reverse=True)


def _sr_config(**changes):
    values = dict(epochs=3, crop=4, batch_size=2, samples_per_epoch=4, seed=7)
    values.update(changes)
    return TrainConfig("sr", **values)


def test_training_writes_a_checkpoint_with_config_arguments_and_versions(recording, tmp_path):
    out = tmp_path / "sr.pt"
    events = []
    result = train([recording], out, _sr_config(epochs=2), network_config=TINY_SR, progress=events.append)
    assert result.finished and result.epochs_completed == 2 and len(result.history) == 2
    model, meta = load_checkpoint(out, expected_kind="sr")
    assert isinstance(model, SR) and meta["config"] == {**SRConfig(**TINY_SR).to_dict()}
    training = meta["training"]
    assert training["config"]["lr"] == pytest.approx(2e-4) and training["config"]["crop"] == 4
    assert training["epochs_completed"] == 2 and training["finished"]
    assert [entry["lr"] for entry in training["history"]] == pytest.approx([2e-4, 1e-4])
    assert set(meta["software"]) >= {"torch", "spikereveal", "python"}
    assert optimizer_state_path(out).is_file()
    steps = [e for e in events if e.phase == "step"]
    assert len(steps) == 4 and all("loss" in e.losses for e in steps)
    assert {e.phase for e in events} == {"prepare", "step", "epoch"}


def test_resume_continues_the_schedule_and_reproduces_an_uninterrupted_run(recording, tmp_path):
    straight = tmp_path / "straight.pt"
    train([recording], straight, _sr_config(), network_config=TINY_SR)

    interrupted = tmp_path / "interrupted.pt"
    first = train([recording], interrupted, _sr_config(), network_config=TINY_SR,
                  options=RunOptions(time_limit_min=1e-9))  # stops after the first step
    assert not first.finished and first.stopped_early == "time limit"
    assert (first.epochs_completed, first.step_in_epoch) == (0, 1)
    _, meta = load_checkpoint(interrupted)
    assert meta["training"]["step_in_epoch"] == 1 and not meta["training"]["finished"]

    resumed = train([recording], interrupted, TrainConfig("sr"), resume=interrupted)
    assert resumed.finished and resumed.epochs_completed == 3
    assert [h["lr"] for h in resumed.history] == pytest.approx([cosine_lr(2e-4, e, 3) for e in range(3)])
    a, _ = load_checkpoint(straight)
    b, _ = load_checkpoint(interrupted)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_ctrl_c_saves_the_finished_steps_and_resume_reproduces_the_run(recording, tmp_path):
    import os
    import signal

    straight = tmp_path / "straight.pt"
    train([recording], straight, _sr_config(), network_config=TINY_SR)
    out = tmp_path / "interrupted.pt"

    def press_ctrl_c(event):
        if event.phase == "step" and event.epoch == 1 and event.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C: the step finishes, then the run stops

    with pytest.raises(KeyboardInterrupt):
        train([recording], out, _sr_config(), network_config=TINY_SR, progress=press_ctrl_c)
    _, meta = load_checkpoint(out)
    record = meta["training"]
    assert (record["epochs_completed"], record["step_in_epoch"], record["stopped_early"]) == (1, 1, "interrupted")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    resumed = train([recording], out, TrainConfig("sr"), resume=out)
    assert resumed.finished
    a, _ = load_checkpoint(straight)
    b, _ = load_checkpoint(out)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_resume_can_extend_the_number_of_epochs(recording, tmp_path):
    out = tmp_path / "sr.pt"
    train([recording], out, _sr_config(epochs=1), network_config=TINY_SR)
    result = train([recording], out, TrainConfig("sr", epochs=2), resume=out)
    assert result.epochs_completed == 2 and [h["epoch"] for h in result.history] == [1, 2]


def test_ldn_fine_tunes_from_init_with_the_sdm_teacher(recording, tmp_path):
    init = tmp_path / "init.pt"
    torch.manual_seed(0)
    start = LDN()
    save_checkpoint(init, "ldn", start, start.config)
    out = tmp_path / "ldn.pt"
    config = TrainConfig("ldn", epochs=1, crop=4, batch_size=2, samples_per_epoch=2, teacher="sdm", init=str(init))
    result = train([recording], out, config)
    model, meta = load_checkpoint(out, expected_kind="ldn")
    assert result.finished and meta["training"]["config"]["init"] == str(init)
    changed = any(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), model.state_dict().values()))
    assert changed


def test_ldn_trains_from_network_teacher_checkpoints(recording, tmp_path):
    bsn_path, sr_path = tmp_path / "bsn.pt", tmp_path / "sr.pt"
    bsn, sr = BSN(BSNConfig(**TINY_BSN)), SR(SRConfig(**TINY_SR))
    save_checkpoint(bsn_path, "bsn", bsn, bsn.config)
    save_checkpoint(sr_path, "sr", sr, sr.config)
    config = TrainConfig("ldn", epochs=1, crop=4, batch_size=2, samples_per_epoch=2,
                         teacher_bsn=str(bsn_path), teacher_sr=str(sr_path))
    assert config.with_defaults().teacher == "nets"
    result = train([recording], tmp_path / "ldn.pt", config)
    assert result.finished and "teacher" in result.history[0] and "reblur" in result.history[0]


def test_mean_teacher_averages_clipped_targets(exposures):
    centers = ds.evenly_spread_centers(exposures[0].window, 3)
    shape = (3,) + exposures[0].blurry.shape
    low = lambda e, c: np.full(shape, -0.5, np.float32)  # noqa: E731  (clipped to 0 first)
    high = lambda e, c: np.full(shape, 0.8, np.float32)  # noqa: E731
    targets = ds.mean_teacher(low, high)(exposures[0], centers)
    assert targets.dtype == np.float32 and targets.shape == shape and np.allclose(targets, 0.4)
    with pytest.raises(ConfigError, match="at least one"):
        ds.mean_teacher()


def test_ground_truth_teacher_returns_the_sharp_frames_at_the_targets(recording, exposures, tmp_path):
    from spikereveal.recording import open_recording

    exposure = exposures[1]
    with open_recording(recording, strict=False) as opened:
        frames = opened.ground_truth_for(exposure.exposure_index)
        expected = np.stack([opened.read_ground_truth(f) for f in frames])
    centers = ds.evenly_spread_centers(exposure.window, len(frames))  # the tiny recording's 3 gt frames
    targets = ds.ground_truth_teacher()(exposure, centers)
    assert targets.dtype == np.float32 and np.array_equal(targets, expected)
    # reversed centers pick the frames in that order; a timestamp without a frame nearby says which --k to simulate
    assert np.array_equal(ds.ground_truth_teacher()(exposure, centers[::-1]), expected[::-1])
    with pytest.raises(ConfigError, match="no ground-truth frame within 1 spike frame.*simulate with --k 5"):
        ds.ground_truth_teacher()(exposure, ds.evenly_spread_centers(exposure.window, 5))
    bare = write_recording(tmp_path / "bare", ground_truth=False)
    with pytest.raises(ConfigError, match="has no ground-truth frames.*gt.csv"):
        ds.ground_truth_teacher()(ds.load_exposures([bare])[0], centers)


def test_ground_truth_where_recorded_mixes_sharp_frames_and_the_teacher(recording, exposures, tmp_path):
    flat = lambda e, c: np.full((len(c),) + e.blurry.shape, 0.25, np.float32)  # noqa: E731
    mixed = ds.ground_truth_where_recorded(flat)
    centers = ds.evenly_spread_centers(exposures[0].window, 3)
    assert np.array_equal(mixed(exposures[0], centers), ds.ground_truth_teacher()(exposures[0], centers))
    bare = ds.load_exposures([write_recording(tmp_path / "bare", ground_truth=False)])[0]
    assert np.all(mixed(bare, ds.evenly_spread_centers(bare.window, 3)) == 0.25)
    with pytest.raises(ConfigError, match="unknown ground_truth"):
        TrainConfig("ldn", teacher="sdm", ground_truth="always")
    with pytest.raises(ConfigError, match="ground_truth only apply to training the ldn student"):
        TrainConfig("bsn", ground_truth="where-recorded")
    assert TrainConfig("ldn", teacher="sdm").with_defaults().ground_truth == "ignore"


def test_ldn_trains_on_ground_truth_targets(recording, tmp_path):
    from spikereveal.training.train_config import RunOptions

    config = TrainConfig("ldn", teacher="gt", timestamps=3, epochs=1, crop=4, batch_size=2, samples_per_epoch=2)
    cache = tmp_path / "cache"
    result = train([recording], tmp_path / "ldn.pt", config, options=RunOptions(threads=1, cache_dir=str(cache)))
    assert result.finished and "teacher" in result.history[0]
    _, meta = load_checkpoint(tmp_path / "ldn.pt", expected_kind="ldn")
    assert meta["training"]["config"]["teacher"] == "gt"
    exposure = ds.load_exposures([recording])[0]
    centers = ds.teacher_centers(exposure.window, 3)
    expected = ds.ground_truth_teacher()(exposure, centers)
    cached = [np.load(path).astype(np.float32) for path in cache.glob("teacher-*.npy")]
    assert len(cached) == 2 and any(np.allclose(c, expected, atol=1e-3) for c in cached)
    with pytest.raises(ConfigError, match="--k 5"):  # the default 5 timestamps: the tiny recording has 3 gt frames
        train([recording], tmp_path / "ldn5.pt", TrainConfig("ldn", teacher="gt", epochs=1, crop=4, batch_size=2,
                                                              samples_per_epoch=2))


def test_ldn_trains_from_the_mean_of_the_cascade_and_a_student(recording, tmp_path):
    from spikereveal.training.train_config import RunOptions

    bsn_path, sr_path, ldn_path = tmp_path / "bsn.pt", tmp_path / "sr.pt", tmp_path / "ldn.pt"
    torch.manual_seed(0)
    for path, kind, model in ((bsn_path, "bsn", BSN(BSNConfig(**TINY_BSN))), (sr_path, "sr", SR(SRConfig(**TINY_SR))),
                              (ldn_path, "ldn", LDN())):
        save_checkpoint(path, kind, model, model.config)
    nets = dict(teacher_bsn=str(bsn_path), teacher_sr=str(sr_path))
    with pytest.raises(ConfigError, match="--teacher nets\\+ldn.*--teacher-ldn"):
        TrainConfig("ldn", teacher="nets+ldn", **nets)
    with pytest.raises(ConfigError, match="--teacher nets\\+ldn.*--teacher-bsn"):
        TrainConfig("ldn", teacher="nets+ldn", teacher_ldn=str(ldn_path))
    config = TrainConfig("ldn", teacher="nets+ldn", teacher_ldn=str(ldn_path), epochs=1, crop=4, batch_size=2,
                         samples_per_epoch=2, **nets)
    cache = tmp_path / "cache"
    result = train([recording], tmp_path / "out.pt", config, options=RunOptions(threads=1, cache_dir=str(cache)))
    assert result.finished and "teacher" in result.history[0]
    _, meta = load_checkpoint(tmp_path / "out.pt", expected_kind="ldn")
    assert meta["training"]["config"]["teacher"] == "nets+ldn"
    # the cached targets are the mean of the two teachers' clipped frames, under a key of their own
    exposure = ds.load_exposures([recording], k=5)[0]
    centers = ds.teacher_centers(exposure.window, config.with_defaults().timestamps, config.reblur_count)
    bsn, _ = load_checkpoint(bsn_path, expected_kind="bsn")
    sr, _ = load_checkpoint(sr_path, expected_kind="sr")
    nets_frames = np.clip(ds.network_teacher(bsn.eval(), sr.eval())(exposure, centers), 0, 1)
    onnx = next(cache.glob("teacher-ldn-*.onnx"))
    student_frames = ds.student_teacher(onnx, threads=1)(exposure, centers)
    cached = [np.load(path).astype(np.float32) for path in cache.glob("teacher-*.npy")]
    expected = (nets_frames + student_frames) / 2
    assert any(c.shape == expected.shape and np.abs(c - expected).max() < 2e-3 for c in cached)


def test_wrong_checkpoint_kinds_are_refused(recording, tmp_path):
    bsn_path = tmp_path / "bsn.pt"
    bsn = BSN(BSNConfig(**TINY_BSN))
    save_checkpoint(bsn_path, "bsn", bsn, bsn.config)
    with pytest.raises(CheckpointError, match="'bsn'.*'ldn'"):
        train([recording], tmp_path / "x.pt", TrainConfig("ldn", teacher="sdm", init=str(bsn_path), crop=4))
    with pytest.raises(CheckpointError, match="'bsn'.*'sr'"):
        train([recording], tmp_path / "x.pt", TrainConfig("sr"), resume=bsn_path)
    with pytest.raises(CheckpointError, match="'bsn'.*'sr'"):
        train([recording], tmp_path / "x.pt", TrainConfig("ldn", teacher_bsn=str(bsn_path), teacher_sr=str(bsn_path),
                                                          crop=4, epochs=1, samples_per_epoch=1))


def test_resume_needs_a_training_record(recording, tmp_path):
    plain = tmp_path / "plain.pt"
    model = SR(SRConfig(**TINY_SR))
    save_checkpoint(plain, "sr", model, model.config)
    with pytest.raises(ConfigError, match="--init"):
        train([recording], tmp_path / "x.pt", TrainConfig("sr"), resume=plain)


def test_invalid_devices_and_recordings(recording, tmp_path):
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="no recording"):
        train([], tmp_path / "x.pt", _sr_config())
    odd = write_recording(tmp_path / "odd", rgb_shape=(66, 98))
    with pytest.raises(ConfigError, match="divisible by 4"):
        ds.load_exposures([odd])
    not_4x = write_recording(tmp_path / "not4x", rgb_shape=(68, 100))
    with pytest.raises(ConfigError, match="exactly 4x"):
        ds.load_exposures([not_4x])
    short_margins = write_recording(tmp_path / "short", margin=5)  # windows need 10 frames each side
    with pytest.raises(ConfigError, match="longer margins"):
        ds.load_exposures([short_margins])


# -- CLI -------------------------------------------------------------------------------------------------------
def _cli(argv):
    from spikereveal.commands import train as train_command

    parser = argparse.ArgumentParser(prog="spikereveal")
    train_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_trains_and_resumes(recording, tmp_path, capsys):
    out = tmp_path / "sr.pt"
    common = ["--data", str(recording), "--out", str(out), "--crop", "4", "--batch-size", "2",
              "--samples-per-epoch", "2", "--threads", "1"]
    assert _cli(["train", "sr", *common, "--epochs", "1"]) == 0
    assert "1 epoch(s) finished" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--force"):
        _cli(["train", "sr", *common, "--epochs", "1"])
    assert _cli(["train", "sr", *common, "--epochs", "2", "--resume", str(out)]) == 0
    _, meta = load_checkpoint(out, expected_kind="sr")
    assert meta["training"]["epochs_completed"] == 2 and meta["training"]["threads"] == 1


def test_cli_ldn_needs_a_teacher(recording, tmp_path):
    with pytest.raises(ConfigError, match="--teacher sdm"):
        _cli(["train", "ldn", "--data", str(recording), "--out", str(tmp_path / "l.pt")])
