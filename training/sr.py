"""The teacher's super-resolver: EDSR-baseline, gray, x4 (SPEC §3).

Maps a gray TFP at spike resolution to a gray image at 4x the resolution. Layer names follow the official
S-SDM / EDSR code (``head.0``, ``body.<i>.body.{0,2}``, ``body.16``, ``tail.0.{0,2}``, ``tail.1``); the
fixed mean shift is a constant here rather than two frozen 1x1 convs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from spikereveal.engines.checkpoint import register_network
from spikereveal.engines.ldn import config_from_dict
from spikereveal.errors import ConfigError

#: The upsampling factor: two pixel-shuffle x2 stages, matching the LDN's 1/4 spike resolution.
SR_SCALE = 4


@dataclass(frozen=True)
class SRConfig:
    """SR configuration stored in checkpoints (paper: 16 blocks x 64 features, mean 0.446)."""

    residual_blocks: int = 16
    features: int = 64
    gray_mean: float = 0.446

    def __post_init__(self):
        for name in ("residual_blocks", "features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SR {name} must be a positive integer, got {value!r}")
        if not 0.0 <= float(self.gray_mean) <= 1.0:
            raise ConfigError(f"SR gray_mean must lie in [0, 1], got {self.gray_mean!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SRConfig":
        return config_from_dict(cls, values, "SR")


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResBlock(nn.Module):
    """conv - ReLU - conv plus the input, no normalisation, residual scale 1."""

    def __init__(self, features: int):
        super().__init__()
        self.body = nn.Sequential(_conv3x3(features, features), nn.ReLU(), _conv3x3(features, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SR(nn.Module):
    """EDSR-baseline gray x4: ``forward((N,1,h,w)) -> (N,1,4h,4w)``, unclipped."""

    def __init__(self, config: SRConfig | None = None):
        super().__init__()
        self.config = config or SRConfig()
        feats = self.config.features
        self.head = nn.Sequential(_conv3x3(1, feats))
        self.body = nn.Sequential(*[ResBlock(feats) for _ in range(self.config.residual_blocks)],
                                  _conv3x3(feats, feats))
        upsampler = nn.Sequential(
            _conv3x3(feats, 4 * feats), nn.PixelShuffle(2), _conv3x3(feats, 4 * feats), nn.PixelShuffle(2)
        )
        self.tail = nn.Sequential(upsampler, _conv3x3(feats, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ConfigError(f"SR input must be (N, 1, h, w) gray images, got shape {tuple(x.shape)}")
        mean = float(self.config.gray_mean)
        features = self.head(x - mean)
        return self.tail(self.body(features) + features) + mean


register_network("sr", SRConfig, SR)  # so engines.checkpoint can rebuild sr checkpoints
