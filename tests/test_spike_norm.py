"""The student's firing-gain spike normalisation (LDNConfig.spike_norm) and how training carries it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

from spikereveal.engines.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from spikereveal.engines.ldn import LDN, ExposureLDN, LDNConfig, firing_gain  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.kernels.extract import SPIKE_LEVEL  # noqa: E402
from spikereveal.kernels.sensor import FIRING_GAIN_MAX, FIRING_GAIN_MIN, SPIKE_NORMS  # noqa: E402
from spikereveal.training import datasets as ds  # noqa: E402


def _exposure(k=7, height=32, width=48, density=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    blur = torch.rand(1, 3, height, width, generator=gen)
    spikes = (torch.rand(k, 21, height // 4, width // 4, generator=gen) < density).float()
    return blur, spikes


def _normed(seed=0):
    torch.manual_seed(seed)
    return LDN(LDNConfig(spike_norm="firing-gain")).eval()


def test_firing_gain_is_mean_rate_over_mean_gray():
    blur, spikes = _exposure()
    gray = (0.11 * blur[:, 0] + 0.59 * blur[:, 1] + 0.3 * blur[:, 2]).mean()
    assert float(firing_gain(blur, spikes)) == pytest.approx(float(spikes.mean() / gray), rel=1e-6)
    dark = torch.zeros_like(blur)
    assert float(firing_gain(dark, spikes)) == FIRING_GAIN_MAX  # clamped, not infinite
    assert float(firing_gain(blur, torch.zeros_like(spikes))) == FIRING_GAIN_MIN


def test_normalised_student_is_invariant_to_the_sensor_scale():
    """A sensor firing at half the rate (float rates: the expectation of its spikes) feeds the same input."""
    model = _normed()
    blur, spikes = _exposure()
    with torch.no_grad():
        full = model.forward_exposure(blur, spikes)
        half = model.forward_exposure(blur, spikes * 0.5)
    torch.testing.assert_close(full, half, rtol=1e-5, atol=1e-5)
    raw = LDN().eval()
    raw.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(raw.forward_exposure(blur, spikes), raw.forward_exposure(blur, spikes * 0.5), atol=1e-3)


def test_explicit_gain_per_sample_equals_dividing_the_spikes():
    model = _normed()
    blur, spikes = _exposure(k=3)
    blur3 = blur.expand(3, -1, -1, -1)
    gains = torch.tensor([0.5, 1.0, 2.0])
    raw = LDN().eval()
    raw.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(blur3, spikes, gains), raw(blur3, spikes / gains.view(-1, 1, 1, 1)))


def test_deployed_graph_measures_the_same_gain():
    model = _normed(1)
    blur, spikes = _exposure(seed=1)
    image = (blur.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    with torch.no_grad():
        reference = model.forward_exposure(image.permute(0, 3, 1, 2).float() / 255, spikes).clamp(0, 1)
        graph = ExposureLDN(model)(image, (spikes * SPIKE_LEVEL).to(torch.uint8))
    expected = (reference * 255 + 0.5).floor().permute(0, 2, 3, 1)
    assert (graph.float() - expected).abs().max() <= 1.0


def test_config_checks_the_choice():
    assert SPIKE_NORMS == ("none", "firing-gain")
    assert LDNConfig().spike_norm == "none"  # the paper's network (and the official weights) read raw spikes
    with pytest.raises(ConfigError, match="spike_norm"):
        LDNConfig(spike_norm="rate")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    from spikereveal.sim.config import preset
    from spikereveal.sim.simulate import simulate_recording

    root = tmp_path_factory.mktemp("gain")
    out = {}
    for scale in (1, 2):
        config = preset("tiny", rgb_height=64, rgb_width=96, spike_height=16, spike_width=24, exposure_frames=13, k=3,
                        sensor={"threshold": 2.0 * scale})
        out[scale] = simulate_recording(config, root / f"th{scale}", seed=3, exposures=2)
    return out


def test_exposure_gain_halves_with_a_doubled_threshold(recordings):
    gains = {scale: [ds.exposure_gain(e) for e in ds.load_exposures([path], k=3)] for scale, path in recordings.items()}
    for one, two in zip(gains[1], gains[2]):
        assert 0.8 < one < 1.25
        assert two / one == pytest.approx(0.5, rel=0.15)


def test_training_switches_an_init_to_firing_gain_and_records_the_gain_range(recordings, tmp_path):
    from spikereveal.training.train import TrainConfig, train

    init = tmp_path / "init.pt"
    torch.manual_seed(0)
    start = LDN()
    save_checkpoint(init, "ldn", start, start.config, source="test init")
    out = tmp_path / "tuned.pt"
    config = TrainConfig("ldn", teacher="sdm", init=str(init), spike_norm="firing-gain", epochs=1, crop=4,
                         batch_size=2, samples_per_epoch=2, lr=1e-12)
    train([recordings[1], recordings[2]], out, config)
    model, meta = load_checkpoint(out, expected_kind="ldn")
    assert model.config.spike_norm == "firing-gain"
    for name, tensor in start.state_dict().items():  # lr ~ 0: the init's weights, read through the new config
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=1e-6)
    low, high = meta["training"]["firing_gain_range"]
    assert 0.3 < low < 0.7 < 0.8 < high < 1.3
    assert meta["training"]["init"]["source"] == "test init"
    assert len(meta["training"]["init"]["sha256"]) == 64


