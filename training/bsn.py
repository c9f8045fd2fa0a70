"""The teacher's denoiser: a blind-spot network (Laine et al. 2019 style), SPEC §3.

One U-Net whose every unit only sees rows at or above its output row runs on the four 90° rotations of
the input; its outputs are shifted down one row (so each sees strictly above), un-rotated and fused by
1x1 convs. The output at a pixel therefore never depends on that pixel's input: trained with
``MSE(x, BSN(x))`` it cannot learn the identity and learns to denoise instead.

Parameter names follow the official S-SDM code (``unet.enc1.conv1.conv.weight`` ... ``nin_C.weight``).
Two deliberate differences from the official code: the input is padded with zeros (bottom/right) to a
multiple of 4, not by reflection, because a reflected copy of a pixel can sit above it and leak its own
value into its prediction near the border, which breaks the blind spot there; and a non-square input is
not padded to a square: the 0° and 180° views run as one (H, W) batch and the 90° and 270° views as one
(W, H) batch, which computes the same function away from the bottom/right borders at about half the cost
on a 16:9 frame (the teacher runs the BSN on full frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spikereveal.engines.checkpoint import register_network
from spikereveal.engines.ldn import config_from_dict
from spikereveal.errors import ConfigError

LEAKY_SLOPE = 0.1
#: Two blind poolings: both sides must be multiples of 4 (the input is zero-padded to that).
SIDE_MULTIPLE = 4


@dataclass(frozen=True)
class BSNConfig:
    """BSN configuration stored in checkpoints (paper: 48 / 96 channels)."""

    encoder_channels: int = 48
    decoder_channels: int = 96

    def __post_init__(self):
        for name in ("encoder_channels", "decoder_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BSN {name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "BSNConfig":
        return config_from_dict(cls, values, "BSN")


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row down by one: a zero row enters at the top, the last row is dropped."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


class UpwardConv(nn.Module):
    """3x3 conv (no bias) + LeakyReLU whose output row r sees input rows r-2..r only."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero row on top, then replicate-pad as the official code does: the top pad copies the zero row,
        # the bottom pad only feeds the row that is dropped, the side pads stay within the row.
        x = F.pad(F.pad(x, (0, 0, 1, 0)), (1, 1, 1, 1), mode="replicate")
        x = F.leaky_relu(self.conv(x), LEAKY_SLOPE)
        return x[:, :, :-1, :]


class BlindPool(nn.Module):
    """Shift down one row, then 2x2 max pool: pooled row p sees input rows <= 2p."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(shift_down(x), 2)


class EncoderStage(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, pool: bool):
        super().__init__()
        self.conv1 = UpwardConv(in_channels, mid_channels)
        self.conv2 = UpwardConv(mid_channels, mid_channels)
        self.conv3 = UpwardConv(mid_channels, out_channels)
        self.pool = BlindPool() if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.pool(x) if self.pool is not None else x


class DecoderStage(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = UpwardConv(in_channels, mid_channels)
        self.conv2 = UpwardConv(mid_channels, mid_channels)
        self.conv3 = UpwardConv(mid_channels, mid_channels)
        self.conv4 = UpwardConv(mid_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], dim=1)
        return self.conv4(self.conv3(self.conv2(self.conv1(x))))


class BlindUNet(nn.Module):
    """U-Net of upward-only units; output row r sees input rows <= r."""

    def __init__(self, in_channels: int, config: BSNConfig):
        super().__init__()
        enc, dec = config.encoder_channels, config.decoder_channels
        self.enc1 = EncoderStage(in_channels, enc, enc, pool=True)
        self.enc2 = EncoderStage(enc, enc, enc, pool=True)
        self.enc3 = EncoderStage(enc, dec, enc, pool=False)
        self.dec2 = DecoderStage(2 * enc, dec, dec)
        self.dec1 = DecoderStage(dec + in_channels, dec, dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = self.enc1(x)
        bottom = self.enc3(self.enc2(skip1))
        return self.dec1(self.dec2(bottom, skip1), x)


# k for torch.rot90 over (H, W): 0°, 90° clockwise, 180°, 270° clockwise (the official branch order).
_ROTATIONS = (0, -1, 2, 1)


class BSN(nn.Module):
    """Blind-spot denoiser for gray TFP images: ``forward((N,1,H,W)) -> (N,1,H,W)``, unclipped."""

    def __init__(self, config: BSNConfig | None = None):
        super().__init__()
        self.config = config or BSNConfig()
        dec = self.config.decoder_channels
        self.unet = BlindUNet(1, self.config)
        self.nin_A = nn.Conv2d(4 * dec, 4 * dec, 1, bias=False)
        self.nin_B = nn.Conv2d(4 * dec, dec, 1, bias=False)
        self.nin_C = nn.Conv2d(dec, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ConfigError(f"BSN input must be (N, 1, H, W) gray images, got shape {tuple(x.shape)}")
        height, width = x.shape[2:]
        padded_height = -(-height // SIDE_MULTIPLE) * SIDE_MULTIPLE
        padded_width = -(-width // SIDE_MULTIPLE) * SIDE_MULTIPLE
        x = F.pad(x, (0, padded_width - width, 0, padded_height - height))
        # Views of one shape share a batch: (0°, 180°) keep (H, W), (90°, 270°) are (W, H); on a square
        # input both pairs share one batch.
        views = [torch.rot90(x, k, dims=(2, 3)) for k in _ROTATIONS]
        if padded_height == padded_width:
            outputs = torch.chunk(shift_down(self.unet(torch.cat(views, dim=0))), len(views), dim=0)
        else:
            upright = torch.chunk(shift_down(self.unet(torch.cat(views[0::2], dim=0))), 2, dim=0)
            sideways = torch.chunk(shift_down(self.unet(torch.cat(views[1::2], dim=0))), 2, dim=0)
            outputs = (upright[0], sideways[0], upright[1], sideways[1])
        x = torch.cat([torch.rot90(out, -k, dims=(2, 3)) for out, k in zip(outputs, _ROTATIONS)], dim=1)
        x = F.leaky_relu(self.nin_A(x), LEAKY_SLOPE)
        x = F.leaky_relu(self.nin_B(x), LEAKY_SLOPE)
        return self.nin_C(x)[:, :, :height, :width]


register_network("bsn", BSNConfig, BSN)  # so engines.checkpoint can rebuild bsn checkpoints
