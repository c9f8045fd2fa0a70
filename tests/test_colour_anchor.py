"""The student's colour anchor (LDNConfig.colour_anchor "exposure-mean"): each channel of an exposure's K frames
shifted so their mean is the blurry frame's (SPEC §3: B = (1/T) integral L dt), in every place the student runs
per exposure, and how checkpoints and training carry it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

from spikereveal import cli  # noqa: E402
from spikereveal.engines.checkpoint import interpolate_checkpoints, load_checkpoint, save_checkpoint  # noqa: E402
from spikereveal.engines.ldn import LDN, ExposureLDN, LDNConfig, anchor_colour  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.kernels.extract import SPIKE_LEVEL  # noqa: E402
from spikereveal.kernels.images import COLOUR_ANCHORS  # noqa: E402


def anchor_twin(frames: np.ndarray, blurry: np.ndarray) -> np.ndarray:
    """Slow twin of ``anchor_colour``: clip; per channel, add (blurry mean - mean of the K clipped frames); clip."""
    frames = np.clip(frames.astype(np.float64), 0.0, 1.0)
    out = np.empty_like(frames)
    for c in range(3):
        out[:, c] = frames[:, c] + (blurry[..., c, :, :].mean() - frames[:, c].mean())
    return np.clip(out, 0.0, 1.0)


def _exposure(k=5, height=32, width=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    blur = torch.rand(1, 3, height, width, generator=gen)
    spikes = (torch.rand(k, 21, height // 4, width // 4, generator=gen) < 0.3).float()
    return blur, spikes


def _pair(seed=0, **config):
    """The same random weights without and with the anchor (perturbed: the lite head starts as a copy of B)."""
    torch.manual_seed(seed)
    plain = LDN(LDNConfig(**config)).eval()
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    anchored = LDN(LDNConfig(colour_anchor="exposure-mean", **config)).eval()
    anchored.load_state_dict(plain.state_dict())
    return plain, anchored


def test_anchor_matches_its_twin_and_restores_each_channel_mean():
    gen = torch.Generator().manual_seed(3)
    blur = 0.2 + 0.6 * torch.rand(1, 3, 16, 24, generator=gen)
    cast = torch.tensor([0.04, -0.03, 0.02]).view(1, 3, 1, 1)  # a colour cast well inside [0, 1]
    sharp = (blur + 0.05 * torch.randn(4, 3, 16, 24, generator=gen)).clamp(0.1, 0.9) + cast
    out = anchor_colour(sharp, blur)
    np.testing.assert_allclose(out.numpy(), anchor_twin(sharp.numpy(), blur.numpy()), atol=1e-6)
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), blur.mean(dim=(0, 2, 3)).numpy(), atol=1e-6)
    assert not np.allclose(sharp.mean(dim=(0, 2, 3)).numpy(), blur.mean(dim=(0, 2, 3)).numpy(), atol=1e-2)
    # the structure within a channel is untouched: one offset per channel
    torch.testing.assert_close(out - out.mean(dim=(0, 2, 3), keepdim=True),
                               sharp - sharp.mean(dim=(0, 2, 3), keepdim=True), rtol=0, atol=1e-6)
    wild = torch.randn(3, 3, 8, 8, generator=gen) * 2  # far outside [0, 1]: the result stays inside
    bounded = anchor_colour(wild, blur[..., :8, :8])
    assert float(bounded.min()) >= 0 and float(bounded.max()) <= 1


@pytest.mark.parametrize("variant", ["paper", "lite"])
def test_forward_exposure_applies_the_anchor_and_forward_does_not(variant):
    plain, anchored = _pair(variant=variant)
    blur, spikes = _exposure()
    with torch.no_grad():
        raw = plain.forward_exposure(blur, spikes)
        out = anchored.forward_exposure(blur, spikes)
        # the per-timestamp forward (training's) is the network alone
        batch = blur.expand(5, -1, -1, -1)
        torch.testing.assert_close(anchored(batch, spikes), plain(batch, spikes))
    np.testing.assert_allclose(out.numpy(), anchor_twin(raw.numpy(), blur.numpy()), atol=1e-5)
    assert not np.allclose(out.numpy(), np.clip(raw.numpy(), 0, 1), atol=1e-3)


def test_deployed_graph_applies_the_same_anchor():
    _, anchored = _pair(seed=1, spike_norm="firing-gain")
    blur, spikes = _exposure(seed=1)
    image = (blur.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    with torch.no_grad():
        reference = anchored.forward_exposure(image.permute(0, 3, 1, 2).float() / 255, spikes)
        graph = ExposureLDN(anchored)(image, (spikes * SPIKE_LEVEL).to(torch.uint8))
    expected = (reference * 255 + 0.5).floor().permute(0, 2, 3, 1)
    assert (graph.float() - expected).abs().max() <= 1.0
    channel_means = graph.float().mean(dim=(0, 1, 2)) / 255
    np.testing.assert_allclose(channel_means.numpy(), image.float().mean(dim=(0, 1, 2)).numpy() / 255, atol=0.01)


def test_onnx_export_runs_the_anchor(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    from engines_support import assert_within_lsb, exposure_inputs
    from twins import reference_sharp8
    from spikereveal.engines.export import ExportConfig, export_checkpoint
    from spikereveal.engines.runners import InputShape, RunnerOptions, create_runner

    plain, anchored = _pair(seed=2, spike_norm="firing-gain")
    checkpoint = save_checkpoint(tmp_path / "anchored.pt", "ldn", anchored, anchored.config, source="test")
    shape = InputShape(k=3, height=32, width=48)
    onnx_path = tmp_path / "anchored.onnx"
    export_checkpoint(checkpoint, onnx_path, ExportConfig(k=shape.k, height=shape.height, width=shape.width))
    image, spikes = exposure_inputs(shape, 0, spike_rate=0.2)
    with create_runner("ort", shape, onnx_path=onnx_path, options=RunnerOptions(threads=1)) as runner:
        out = runner.infer(image, spikes)
    assert_within_lsb(out, reference_sharp8(anchored, image, spikes), max_lsb=1, max_fraction=1e-3)
    assert np.abs(out.astype(int) - reference_sharp8(plain, image, spikes).astype(int)).max() > 1


def test_config_checks_the_choice_and_old_files_read_as_before():
    assert COLOUR_ANCHORS == ("none", "exposure-mean")
    assert LDNConfig().colour_anchor == "none"  # the paper's network
    assert "colour_anchor" not in LDNConfig().to_dict()  # files without the field read exactly as before
    assert LDNConfig(colour_anchor="exposure-mean").to_dict()["colour_anchor"] == "exposure-mean"
    assert LDNConfig.from_dict({"spike_frames": 21, "spike_norm": "none"}).colour_anchor == "none"
    with pytest.raises(ConfigError, match="colour_anchor must be one of"):
        LDNConfig(colour_anchor="grey-world")


def test_interpolation_sets_the_anchor_and_refuses_it_for_teacher_nets(tmp_path):
    from spikereveal.training.bsn import BSN, BSNConfig

    plain, _ = _pair()
    path = save_checkpoint(tmp_path / "a.pt", "ldn", plain, plain.config, source="a")
    out = tmp_path / "blend.pt"
    interpolate_checkpoints(path, path, 0.5, out, colour_anchor="exposure-mean")
    model, meta = load_checkpoint(out, expected_kind="ldn")
    assert model.config.colour_anchor == "exposure-mean" and meta["config"]["colour_anchor"] == "exposure-mean"
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=1e-7)
    interpolate_checkpoints(out, out, 0.5, tmp_path / "kept.pt")  # default: END's anchor
    assert load_checkpoint(tmp_path / "kept.pt")[0].config.colour_anchor == "exposure-mean"
    bsn = BSN(BSNConfig())
    bsn_path = save_checkpoint(tmp_path / "bsn.pt", "bsn", bsn, bsn.config)
    with pytest.raises(ConfigError, match="student.*bsn checkpoint"):
        interpolate_checkpoints(bsn_path, bsn_path, 0.5, tmp_path / "x.pt", colour_anchor="exposure-mean")
    assert not (tmp_path / "x.pt").exists()


def test_cli_interpolate_weights_colour_anchor(tmp_path, capsys):
    plain, _ = _pair()
    path = save_checkpoint(tmp_path / "a.pt", "ldn", plain, plain.config, source="a")
    out = tmp_path / "b.pt"
    argv = ["interpolate-weights", str(path), str(path), "--alpha", "1", "--out", str(out)]
    assert cli.main(argv + ["--colour-anchor", "exposure-mean"]) == 0
    assert load_checkpoint(out)[0].config.colour_anchor == "exposure-mean"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main(argv + ["--colour-anchor", "grey", "--force"])
    assert stop.value.code == 2 and "invalid choice: 'grey'" in capsys.readouterr().err


def test_train_config_takes_the_anchor_for_students_only():
    from spikereveal.training.train_config import TrainConfig

    assert TrainConfig("ldn", teacher="sdm", colour_anchor="exposure-mean").colour_anchor == "exposure-mean"
    with pytest.raises(ConfigError, match="unknown colour_anchor 'grey'"):
        TrainConfig("ldn", teacher="sdm", colour_anchor="grey")
    with pytest.raises(ConfigError, match="colour_anchor"):
        TrainConfig("sr", colour_anchor="exposure-mean")


def test_training_sets_the_anchor_on_an_init_and_adapt_style_inits_keep_it(tmp_path):
    from spikereveal.sim.config import preset
    from spikereveal.sim.simulate import simulate_recording
    from spikereveal.training.train import TrainConfig, train

    config = preset("tiny", rgb_height=64, rgb_width=96, spike_height=16, spike_width=24, exposure_frames=13, k=3)
    recording = simulate_recording(config, tmp_path / "rec", seed=3, exposures=2)
    plain, _ = _pair()
    init = save_checkpoint(tmp_path / "init.pt", "ldn", plain, plain.config, source="test init")
    common = dict(teacher="sdm", epochs=1, crop=4, batch_size=2, samples_per_epoch=2, lr=1e-12)
    train([recording], tmp_path / "anchored.pt", TrainConfig("ldn", init=str(init), colour_anchor="exposure-mean",
                                                             **common))
    model, _ = load_checkpoint(tmp_path / "anchored.pt", expected_kind="ldn")
    assert model.config.colour_anchor == "exposure-mean"
    for name, tensor in plain.state_dict().items():  # lr ~ 0: the init's weights, read through the new config
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=1e-6)
    train([recording], tmp_path / "kept.pt", TrainConfig("ldn", init=str(tmp_path / "anchored.pt"), **common))
    assert load_checkpoint(tmp_path / "kept.pt")[0].config.colour_anchor == "exposure-mean"  # the init's own
