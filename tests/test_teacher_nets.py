"""Teacher networks (BSN denoiser, EDSR-baseline SR) and the network teacher."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")
from torch import nn  # noqa: E402

from spikereveal.engines.ldn import count_parameters  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.training.bsn import BSN, BSNConfig  # noqa: E402
from spikereveal.training.sr import SR, SRConfig  # noqa: E402
from spikereveal.training.teacher import teacher_frames  # noqa: E402
from twins import reference_teacher  # noqa: E402

TINY_BSN = BSNConfig(encoder_channels=6, decoder_channels=8)
TINY_SR = SRConfig(residual_blocks=2, features=8)


def test_bsn_parameter_count_is_close_to_the_reference():
    assert abs(count_parameters(BSN()) - 1.12e6) < 0.01e6


def _bsn_output_change(model, x, row, col, at=None):
    """|change of the output at pixel ``at``| when input pixel (row, col) changes."""
    at = at or (row, col)
    bumped = x.clone()
    bumped[0, 0, row, col] += 1.0
    with torch.no_grad():
        return float((model(bumped) - model(x))[0, 0, at[0], at[1]].abs())


@pytest.mark.parametrize("height, width", [(16, 16), (12, 20), (13, 7)])
def test_bsn_is_blind_at_the_centre_pixel_but_sees_its_neighbours(height, width):
    torch.manual_seed(0)
    model = BSN(TINY_BSN).double().eval()
    x = torch.rand(1, 1, height, width, dtype=torch.float64)
    pixels = [(0, 0), (height // 2, width // 2), (height - 1, width - 1), (0, width - 1), (height - 1, 0)]
    for row, col in pixels:
        assert _bsn_output_change(model, x, row, col) < 1e-12, (row, col)
    row, col = height // 2, width // 2
    for d_row, d_col in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
        assert _bsn_output_change(model, x, row + d_row, col + d_col, at=(row, col)) > 1e-9, (d_row, d_col)


def test_bsn_default_network_is_blind():
    torch.manual_seed(1)
    model = BSN().double().eval()
    x = torch.rand(1, 1, 8, 12, dtype=torch.float64)
    assert _bsn_output_change(model, x, 3, 5) < 1e-12
    assert _bsn_output_change(model, x, 2, 5, at=(3, 5)) > 1e-9


def _bsn_one_view_at_a_time(model, x):
    """The BSN's function with every rotated view through the U-Net on its own (no batching of views)."""
    import torch.nn.functional as F

    from spikereveal.training.bsn import _ROTATIONS, LEAKY_SLOPE, shift_down

    height, width = x.shape[2:]
    x = F.pad(x, (0, -width % 4, 0, -height % 4))
    views = [torch.rot90(shift_down(model.unet(torch.rot90(x, k, dims=(2, 3)))), -k, dims=(2, 3)) for k in _ROTATIONS]
    y = F.leaky_relu(model.nin_A(torch.cat(views, dim=1)), LEAKY_SLOPE)
    return model.nin_C(F.leaky_relu(model.nin_B(y), LEAKY_SLOPE))[:, :, :height, :width]


@pytest.mark.parametrize("height, width", [(12, 20), (20, 12), (13, 7), (16, 16)])
def test_bsn_batches_its_views_without_mixing_them_up(height, width):
    torch.manual_seed(2)
    model = BSN(TINY_BSN).double().eval()
    x = torch.rand(2, 1, height, width, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _bsn_one_view_at_a_time(model, x), rtol=0, atol=1e-12)


def test_bsn_keeps_shape_and_rejects_colour_input():
    model = BSN(TINY_BSN)
    assert model(torch.rand(3, 1, 10, 6)).shape == (3, 1, 10, 6)
    with pytest.raises(ConfigError, match=r"\(N, 1, H, W\)"):
        model(torch.rand(1, 3, 8, 8))


def test_bsn_config_validation():
    with pytest.raises(ConfigError, match="encoder_channels"):
        BSNConfig(encoder_channels=0)
    with pytest.raises(ConfigError, match="unknown"):
        BSNConfig.from_dict({"channels": 3})


def _edsr_parameter_count(blocks, feats):
    conv = lambda cin, cout: cin * cout * 9 + cout  # noqa: E731
    body = blocks * 2 * conv(feats, feats) + conv(feats, feats)
    return conv(1, feats) + body + 2 * conv(feats, 4 * feats) + conv(feats, 1)


def test_sr_parameter_count_is_edsr_baseline():
    assert count_parameters(SR()) == _edsr_parameter_count(16, 64)
    assert count_parameters(SR(TINY_SR)) == _edsr_parameter_count(2, 8)


def test_sr_upsamples_by_four():
    assert SR(TINY_SR)(torch.rand(2, 1, 5, 7)).shape == (2, 1, 20, 28)
    with pytest.raises(ConfigError, match="gray"):
        SR(TINY_SR)(torch.rand(1, 3, 5, 7))


def test_sr_with_zero_weights_outputs_the_fixed_mean():
    model = SR(SRConfig(residual_blocks=1, features=4, gray_mean=0.3))
    for parameter in model.parameters():
        nn.init.zeros_(parameter)
    torch.testing.assert_close(model(torch.rand(1, 1, 3, 3)), torch.full((1, 1, 12, 12), 0.3))


def test_sr_config_validation():
    with pytest.raises(ConfigError, match="gray_mean"):
        SRConfig(gray_mean=1.5)
    with pytest.raises(ConfigError, match="residual_blocks"):
        SRConfig(residual_blocks=0)


class _Scale(nn.Module):
    """Stand-in denoiser: multiplies by a constant (so the [0,1] clip of its output is observable)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class _Nearest4(nn.Module):
    """Stand-in super-resolver: nearest x4 upsampling times a gain."""

    def __init__(self, gain=1.0):
        super().__init__()
        self.gain = gain

    def forward(self, x):
        return torch.repeat_interleave(torch.repeat_interleave(x, 4, 2), 4, 3) * self.gain


@pytest.mark.parametrize("bsn_factor, sr_gain", [(1.0, 1.0), (3.0, 1.0), (1.0, 1.7)])
def test_teacher_matches_numpy_reference(bsn_factor, sr_gain):
    rng = np.random.default_rng(0)
    k, h, w = 3, 3, 5
    blur = rng.random((3, 4 * h, 4 * w), dtype=np.float32)
    short = (rng.integers(0, 4, (k, h, w)) / 4).astype(np.float32)
    long = (rng.integers(0, 5, (h, w)) / 8).astype(np.float32)
    long[0, 0] = 0.0  # the reference rule: a zero denominator gives 0, not inf/nan
    out = teacher_frames(blur, short, long, _Scale(bsn_factor), _Nearest4(sr_gain))
    assert out.shape == (k, 3, 4 * h, 4 * w) and out.dtype == torch.float32
    expected = reference_teacher(blur, short, long, bsn_factor, sr_gain)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert torch.all(out[:, :, :4, :4] == 0)


def test_teacher_accepts_tensors_and_real_networks_and_chunks():
    torch.manual_seed(0)
    blur, short, long = torch.rand(3, 16, 24), torch.rand(3, 4, 6), torch.rand(4, 6)
    bsn, sr = BSN(TINY_BSN).eval(), SR(TINY_SR).eval()
    out = teacher_frames(blur, short, long, bsn, sr)
    assert out.shape == (3, 3, 16, 24)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(teacher_frames(blur, short, long, bsn, sr, chunk_size=2), out)
    with pytest.raises(ConfigError, match="chunk_size"):
        teacher_frames(blur, short, long, bsn, sr, chunk_size=0)


def test_cpu_channels_last_keeps_the_teacher_and_the_student_outputs():
    from spikereveal.engines.ldn import LDN, LDNConfig
    from spikereveal.training.datasets import cpu_channels_last, network_teacher

    torch.manual_seed(1)
    blur, short, long = torch.rand(3, 32, 48), torch.rand(3, 8, 12), torch.rand(8, 12)
    bsn, sr = BSN(TINY_BSN).eval(), SR(TINY_SR).eval()
    contiguous = teacher_frames(blur, short, long, bsn, sr)
    assert all(p.is_contiguous() for p in sr.parameters())
    assert cpu_channels_last(bsn) is bsn and cpu_channels_last(sr) is sr
    weights = [p for p in list(bsn.parameters()) + list(sr.parameters()) if p.ndim == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert not all(p.is_contiguous() for p in weights)  # the layout did change (not only 1x1 kernels)
    torch.testing.assert_close(teacher_frames(blur, short, long, bsn, sr), contiguous, atol=1e-5, rtol=0)
    student = LDN(LDNConfig()).eval()
    image, spikes = torch.rand(2, 3, 32, 32), (torch.rand(2, student.config.spike_frames, 8, 8) < 0.3).float()
    with torch.no_grad():
        before = student(image, spikes)
        after = cpu_channels_last(student)(image, spikes)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    fresh = SR(TINY_SR).eval()
    network_teacher(BSN(TINY_BSN).eval(), fresh)  # the teacher applies it to the nets it runs
    assert fresh.tail[1].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "blur_shape, short_shape, long_shape",
    [((3, 16, 20), (2, 4, 6), (4, 6)), ((3, 16, 24), (2, 4, 5), (4, 6)), ((1, 16, 24), (2, 4, 6), (4, 6)),
     ((3, 16, 24), (4, 6), (4, 6)), ((3, 16, 24), (2, 4, 6), (1, 4, 6))],
)
def test_teacher_rejects_mismatching_shapes(blur_shape, short_shape, long_shape):
    with pytest.raises(ConfigError):
        teacher_frames(torch.rand(blur_shape), torch.rand(short_shape), torch.rand(long_shape),
                       _Scale(1.0), _Nearest4())
