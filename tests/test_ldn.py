"""The student LDN: architecture, shapes, input errors, and the official S-SDM weights."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

from spikereveal.engines.checkpoint import import_official_ldn, load_checkpoint  # noqa: E402
from spikereveal.engines.ldn import LDN, LDNConfig, count_parameters  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from twins import reference_ldn  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
OFFICIAL = SHARED / "reference" / "official_ldn_DeblurNet_100.pth"
needs_official = pytest.mark.skipif(not OFFICIAL.is_file(), reason=f"needs the official weights at {OFFICIAL}")


def _inputs(n=2, height=16, width=24, frames=21, seed=0):
    gen = torch.Generator().manual_seed(seed)
    blur = torch.rand(n, 3, height, width, generator=gen)
    spikes = (torch.rand(n, frames, height // 4, width // 4, generator=gen) < 0.3).float()
    return blur, spikes


def test_parameter_count_matches_the_paper():
    assert count_parameters(LDN()) == 234_158


def test_spike_frames_config_sets_the_spike_encoder_width():
    model = LDN(LDNConfig(spike_frames=9))
    assert model.spike_enc[0].weight.shape[1] == 9
    blur, spikes = _inputs(frames=9)
    assert model(blur, spikes).shape == blur.shape


def test_forward_matches_functional_reference_on_random_weights():
    torch.manual_seed(1)
    model = LDN().eval()
    blur, spikes = _inputs(height=20, width=12)
    with torch.no_grad():
        ours = model(blur, spikes)
        reference = reference_ldn(model.state_dict(), blur, spikes)
    assert ours.shape == (2, 3, 20, 12)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_uint8_spikes_are_accepted():
    model = LDN().eval()
    blur, spikes = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(blur, spikes.to(torch.uint8)), model(blur, spikes))


def test_forward_exposure_broadcasts_one_blurry_frame_over_k_windows():
    model = LDN().eval()
    blur, spikes = _inputs(n=5)
    one_blur = blur[0]
    with torch.no_grad():
        batch = model.forward_exposure(one_blur, spikes)
        single = torch.cat([model(one_blur[None], spikes[k:k + 1]) for k in range(5)])
    assert batch.shape == (5, 3, 16, 24)
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.forward_exposure(one_blur[None], spikes), batch)


@pytest.mark.parametrize("seed", [0, 1])
def test_exposure_graph_is_the_network_with_8_bit_edges(seed):
    """ExposureLDN (the deployed graph) == planar_to_bgr8(forward_exposure(image / 255, spikes)); the split head
    sums in another order, which can move a value across a rounding boundary: at most 1 LSB, rarely."""
    from spikereveal.kernels.convert import planar_to_bgr8
    from spikereveal.engines.ldn import ExposureLDN
    from spikereveal.kernels.extract import SPIKE_LEVEL

    torch.manual_seed(seed)
    model = LDN().eval()
    image = torch.randint(0, 256, (1, 16, 24, 3), dtype=torch.uint8)
    spikes = (torch.rand(5, 21, 4, 6) < 0.3).to(torch.uint8)
    with torch.no_grad():
        reference = model.forward_exposure(image.permute(0, 3, 1, 2).float() / 255, spikes.float())
        deployed = ExposureLDN(model)(image, spikes * SPIKE_LEVEL)
    assert deployed.dtype == torch.uint8 and deployed.shape == (5, 16, 24, 3)
    expected = planar_to_bgr8(reference.numpy())
    assert len(set(expected.ravel().tolist())) > 50  # not a saturated output
    difference = np.abs(deployed.numpy().astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() <= 1e-3


@pytest.mark.parametrize(
    "blur_shape, spike_shape, fragment",
    [
        ((1, 3, 18, 24), (1, 21, 4, 6), "multiples of 4"),
        ((1, 3, 16, 26), (1, 21, 4, 6), "multiples of 4"),
        ((1, 3, 16, 24), (1, 20, 4, 6), "(1, 21, 4, 6)"),
        ((1, 3, 16, 24), (1, 21, 8, 12), "(1, 21, 4, 6)"),
        ((2, 3, 16, 24), (1, 21, 4, 6), "(2, 21, 4, 6)"),
        ((1, 1, 16, 24), (1, 21, 4, 6), "(N, 3, H, W)"),
        ((3, 16, 24), (1, 21, 4, 6), "(N, 3, H, W)"),
    ],
)
def test_bad_shapes_raise_config_error(blur_shape, spike_shape, fragment):
    with pytest.raises(ConfigError) as info:
        LDN()(torch.zeros(blur_shape), torch.zeros(spike_shape))
    assert fragment in str(info.value)


def test_forward_exposure_rejects_several_blurry_frames():
    blur, spikes = _inputs(n=2)
    with pytest.raises(ConfigError, match="one blurry frame"):
        LDN().forward_exposure(blur, spikes)


@pytest.mark.parametrize("bad", [0, -3, True, 21.0, "21"])
def test_config_validation(bad):
    with pytest.raises(ConfigError, match="spike_frames"):
        LDNConfig(spike_frames=bad)


def test_config_from_dict_names_unknown_fields():
    assert LDNConfig.from_dict({"spike_frames": 11}) == LDNConfig(11)
    with pytest.raises(ConfigError, match="frames"):
        LDNConfig.from_dict({"spike_frames": 21, "frames": 3})


@needs_official
def test_official_state_dict_loads_strictly_and_matches_reference_forward():
    state_dict = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    model = LDN()
    model.load_state_dict(state_dict, strict=True)
    blur, spikes = _inputs(n=1, height=32, width=40)
    with torch.no_grad():
        ours = model.eval()(blur, spikes)
        reference = reference_ldn(state_dict, blur, spikes)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@needs_official
def test_importer_checkpoint_gives_the_same_output_as_direct_load(tmp_path):
    direct = LDN()
    direct.load_state_dict(torch.load(OFFICIAL, map_location="cpu", weights_only=True), strict=True)
    meta = import_official_ldn(OFFICIAL, tmp_path / "official.ckpt")
    imported, loaded_meta = load_checkpoint(tmp_path / "official.ckpt", expected_kind="ldn")
    assert meta["parameters"] == 234_158
    assert "sha256" in loaded_meta["source"] and str(OFFICIAL.name) in loaded_meta["source"]
    blur, spikes = _inputs(n=3, height=24, width=32, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(imported(blur, spikes), direct.eval()(blur, spikes), rtol=0, atol=0)
