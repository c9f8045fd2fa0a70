"""The student: Lightweight Deblurring Network (LDN) of S-SDM, SPEC §3.

Layer for layer the released network (``Deblur_Net`` of the official code, MIT), with the same parameter
names, so the official state dict loads with ``strict=True``. Images are BGR float in [0, 1]; spikes are
raw 0/1 frames at 1/4 of the image resolution. The output is *not* clipped (the official code clips
outside the network, and training needs the unclipped value's gradient); clip it where it is consumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spikereveal.errors import ConfigError
from spikereveal.kernels.extract import SPIKE_LEVEL
from spikereveal.kernels.images import COLOUR_ANCHORS, SPIKE_TO_IMAGE_SCALE  # scale: the two stride-2 encoder stages
from spikereveal.kernels.sensor import FIRING_GAIN_MAX, FIRING_GAIN_MIN, GRAY_WEIGHTS_BGR, MIN_GRAY_MEAN, SPIKE_NORMS
from spikereveal.kernels.timing import LDN_SPIKE_WINDOW


#: The student's architectures (``LDNConfig.variant``): "paper", the released S-SDM network layer for layer
#: (SPEC §3), and the sequence students of issue 18, "lite" and "lite-fused" (:class:`LDN` documents all three).
#: All are kind "ldn" checkpoints with the same deployed interface (``ExposureLDN``).
LDN_VARIANTS = ("paper", "lite", "lite-fused")
DEFAULT_VARIANT = "paper"
#: the variants with the lite decoder and head (``to_rgb`` + ``blur_skip``)
LITE_VARIANTS = ("lite", "lite-fused")


@dataclass(frozen=True)
class LDNConfig:
    """Network configuration stored in checkpoints. The paper's network uses 21 spike frames and raw
    spikes (``spike_norm`` "none"); ``"firing-gain"`` makes the student read rates relative to the exposure's
    own firing gain. ``variant`` picks the architecture (``LDN_VARIANTS``). ``colour_anchor`` "exposure-mean"
    shifts each channel of an exposure's frames so their mean is the blurry frame's (``COLOUR_ANCHORS``; applied
    where the network runs per exposure, :meth:`LDN.forward_exposure` and the deployed graph, not in the
    per-timestamp ``forward`` that training calls)."""

    spike_frames: int = LDN_SPIKE_WINDOW
    spike_norm: str = "none"
    variant: str = DEFAULT_VARIANT
    colour_anchor: str = "none"

    def __post_init__(self):
        if isinstance(self.spike_frames, bool) or not isinstance(self.spike_frames, int) or self.spike_frames < 1:
            raise ConfigError(f"LDN spike_frames must be a positive integer, got {self.spike_frames!r}")
        if self.spike_norm not in SPIKE_NORMS:
            raise ConfigError(f"LDN spike_norm must be one of {SPIKE_NORMS}, got {self.spike_norm!r}")
        if self.variant not in LDN_VARIANTS:
            raise ConfigError(f"LDN variant must be one of {LDN_VARIANTS}, got {self.variant!r}")
        if self.colour_anchor not in COLOUR_ANCHORS:
            raise ConfigError(f"LDN colour_anchor must be one of {COLOUR_ANCHORS}, got {self.colour_anchor!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as stored in checkpoints and ONNX metadata; fields at their defaults that came after the
        first release (``variant`` "paper", ``colour_anchor`` "none") are left out, so such files read exactly as
        before (and by versions that predate the fields)."""
        values = asdict(self)
        for name, default in (("variant", DEFAULT_VARIANT), ("colour_anchor", "none")):
            if values[name] == default:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LDNConfig":
        return config_from_dict(cls, values, "LDN")


def config_from_dict(cls, values: Mapping[str, Any], what: str):
    """Build a config dataclass from a dict, naming unknown keys instead of failing with a TypeError."""
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} config field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**dict(values))


def _conv_relu(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, padding), nn.ReLU())


def _deconv_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 5, stride=2, padding=2, output_padding=1), nn.ReLU()
    )


class ChannelAttention(nn.Module):
    """CBAM channel gate: shared bias-free MLP over global avg- and max-pooled features."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc(torch.mean(x, dim=(2, 3), keepdim=True))
        peak = self.fc(torch.amax(x, dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial gate: 7x7 conv over the channel mean and max."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


class LightResidualBlock(nn.Module):
    """The lite trunk's block: (depthwise 3x3 -> pointwise 1x1) -> ReLU -> (depthwise 3x3 -> pointwise 1x1),
    plus the input; no normalisation. A ninth of a plain 3x3 block's multiply-adds at 64 channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _shuffle_up(in_channels: int, out_channels: int) -> nn.Sequential:
    """x2 upsampling: depthwise 3x3, pointwise 1x1 to ``4 * out_channels``, pixel shuffle (DepthToSpace), ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels),
                         nn.Conv2d(in_channels, 4 * out_channels, 1), nn.PixelShuffle(2), nn.ReLU())


class ResidualBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus the input; no normalisation."""

    def __init__(self, channels: int):
        super().__init__()
        # The Identity fills the official code's (disabled) norm slot, so the convs keep indices 0 and 3.
        self.conv_block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Identity(),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def firing_gain(blur: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
    """The exposure's firing gain (``kernels.sensor``) from the student's own inputs, one scalar for the
    whole batch: the mean spike rate of all windows over the mean gray of the blurry frame(s), clamped to
    ``[FIRING_GAIN_MIN, FIRING_GAIN_MAX]``. ``blur`` (N,3,H,W) in [0, 1], ``spikes`` (K,S,h,w) in spikes."""
    gray_weights = torch.tensor(GRAY_WEIGHTS_BGR, dtype=torch.float32, device=blur.device).view(1, 3, 1, 1)
    gray = (blur.float() * gray_weights).sum(dim=1).mean()
    rate = spikes.float().mean()
    return (rate / gray.clamp(min=MIN_GRAY_MEAN)).clamp(FIRING_GAIN_MIN, FIRING_GAIN_MAX)


def _exporting() -> bool:
    """True while torch traces or exports the network: input checks on symbolic shapes are skipped."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling())


#: channels of the lite decoder at H/2 (the paper's: 32 at H/2, then 16 at H; the lite has none at H)
LITE_HALF_CHANNELS = 8
LITE_TRUNK_BLOCKS = 2
#: channels of the "lite-fused" trunk at H/4 (the paper and "lite": 64, the two encoders' outputs concatenated)
FUSED_CHANNELS = 32


class LDN(nn.Module):
    """Lightweight Deblurring Network. ``forward(blur (N,3,H,W), spikes (N,S,H/4,W/4)) -> (N,3,H,W)``.

    Variant "paper" (default): the released network, layer for layer. Variant "lite" (issue 18): the same blur
    and spike encoders and the same channel/spatial attention (same names and shapes, so a paper checkpoint
    warm-starts them), then

    - trunk: two :class:`LightResidualBlock` (depthwise 3x3 + pointwise 1x1, twice) at H/4 instead of two
      plain 3x3 residual blocks (8.5 of the paper's 15.0 GMAC per 720p frame);
    - ``up1``: depthwise 3x3 + 1x1 to 4 x 8 channels + DepthToSpace: 8 channels at H/2 (the paper: a 5x5
      transposed convolution to 32 channels, 2.9 GMAC); ``refine``: 3x3 conv 8 -> 8 at H/2;
    - head: ``to_rgb`` (3x3 conv 8 -> 3 x 4 + DepthToSpace) gives the three colour channels at H directly, plus
      ``blur_skip``, a 1x1 conv of B (the paper: a second 5x5 transposed convolution to 16 channels at H, 2.9
      GMAC, then a 1x1 conv over those and B).

    No transposed convolution (ONNX Runtime's slowest CPU kernel here) and no feature map wider than 3 channels
    at full resolution (DepthToSpace of a wide map at H was 16 % of an early candidate's time). A fresh lite
    network is the identity on B (zero ``to_rgb``, identity ``blur_skip``). At the gopro geometry (K = 7, the
    blurry frame encoded once per exposure) it costs 2.15 GMAC per frame against the paper's 15.03 and has
    45,730 parameters against 234,158, both counted from the ONNX graphs (``bench.graph_cost``).

    Variant "lite-fused": the lite with no 64-channel map at H/4. The two encoders' outputs are fused by one
    1x1 conv to :data:`FUSED_CHANNELS` channels, split in its blurry part (``fuse_blur``, with the bias) and
    its spike part (``fuse_spikes``): ``relu(fuse_spikes(S) + fuse_blur(B))``, exactly a 1x1 conv over their
    concatenation, but the blurry part runs once per exposure and is broadcast over the K windows (no
    concatenated copy). Channel and spatial attention and the two trunk blocks then run at 32 channels;
    decoder and head are the lite's. The lite's time on a CPU goes mostly to moving the (K, 64, H/4, W/4)
    maps through memory-bound ops (attention, residual adds, layout reorders), not to its convolutions:
    halving them cut its gopro window from ~760 to ~540 ms with ONNX Runtime on one thread. The encoders,
    decoder and head have the lite's names and shapes, so a lite checkpoint warm-starts them.
    """

    def __init__(self, config: LDNConfig | None = None):
        super().__init__()
        self.config = config or LDNConfig()
        spike_frames = self.config.spike_frames
        self.blur_enc = _conv_relu(3, 16, 5, 2, 2)
        self.blur_enc2 = _conv_relu(16, 32, 5, 2, 2)
        self.spike_enc = _conv_relu(spike_frames, 16, 3, 1, 1)
        self.spike_enc2 = _conv_relu(16, 32, 3, 1, 1)
        if self.config.variant in LITE_VARIANTS:
            trunk = FUSED_CHANNELS if self.config.variant == "lite-fused" else 64
            if self.config.variant == "lite-fused":
                self.fuse_blur = nn.Conv2d(32, trunk, kernel_size=1)
                self.fuse_spikes = nn.Conv2d(32, trunk, kernel_size=1, bias=False)
            self.trunk = nn.Sequential(*(LightResidualBlock(trunk) for _ in range(LITE_TRUNK_BLOCKS)))
            self.ca = ChannelAttention(trunk, 4)
            self.sa = SpatialAttention(7)
            self.up1 = _shuffle_up(trunk, LITE_HALF_CHANNELS)
            self.refine = _conv_relu(LITE_HALF_CHANNELS, LITE_HALF_CHANNELS, 3, 1, 1)
            # the head: 3 colour channels at each of the 2x2 sub-pixels of the H/2 grid, plus a 1x1 skip of B
            self.to_rgb = nn.Sequential(nn.Conv2d(LITE_HALF_CHANNELS, 3 * 4, 3, padding=1), nn.PixelShuffle(2))
            self.blur_skip = nn.Conv2d(3, 3, kernel_size=1)
            with torch.no_grad():  # a fresh lite network starts as the identity on B (zero residual, Fixup-style)
                self.blur_skip.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
                self.blur_skip.bias.zero_()
                self.to_rgb[0].weight.zero_()
                self.to_rgb[0].bias.zero_()
            return
        self.resBlock1 = ResidualBlock(64)
        self.resBlock2 = ResidualBlock(64)
        self.ca = ChannelAttention(64, 4)
        self.sa = SpatialAttention(7)
        self.decoder1 = _deconv_relu(64, 32)
        self.decoder2 = _deconv_relu(32, 16)
        self.pred = nn.Conv2d(3 + 16, 3, kernel_size=1)

    def check_inputs(self, blur: torch.Tensor, spikes: torch.Tensor) -> None:
        """Raise ConfigError unless ``blur`` is (N,3,H,W) with H, W multiples of 4 and spikes match it."""
        if blur.ndim != 4 or blur.shape[1] != 3:
            raise ConfigError(f"LDN blur input must be (N, 3, H, W) BGR, got shape {tuple(blur.shape)}")
        n, _, height, width = blur.shape
        if height % SPIKE_TO_IMAGE_SCALE or width % SPIKE_TO_IMAGE_SCALE:
            raise ConfigError(
                f"LDN image height and width must be multiples of {SPIKE_TO_IMAGE_SCALE}, got {height}x{width}; "
                f"crop or pad the image (and the spikes to a quarter of it)"
            )
        expected = (n, self.config.spike_frames, height // SPIKE_TO_IMAGE_SCALE, width // SPIKE_TO_IMAGE_SCALE)
        if tuple(spikes.shape) != expected:
            raise ConfigError(
                f"LDN spikes must have shape {expected} (batch, spike frames, H/4, W/4) for a blurry image "
                f"of {tuple(blur.shape)}, got {tuple(spikes.shape)}"
            )

    def forward(self, blur: torch.Tensor, spikes: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        """``gain`` (N,) or a scalar: the firing gain of each sample's exposure (``spike_norm`` "firing-gain"
        only; None: estimated from this batch as one exposure, :func:`firing_gain`)."""
        if not _exporting():
            self.check_inputs(blur, spikes)
        spikes = self.normalise_spikes(blur, spikes.to(blur.dtype), gain)
        fused = self.fuse_and_decode(self.encode_blur(blur), self.encode_spikes(spikes))
        if self.config.variant in LITE_VARIANTS:
            return self.blur_skip(blur) + fused
        # The official head concatenates the blurry image FIRST, then the 16 decoded channels.
        return self.pred(torch.cat([blur, fused], dim=1))

    def normalise_spikes(self, blur: torch.Tensor, spikes: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        """The spike input as the network reads it: unchanged, or divided by the exposure's firing gain."""
        scale = self.spike_scale(blur, spikes, gain)
        return spikes if scale is None else spikes * scale

    def spike_scale(self, blur: torch.Tensor, spikes: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor | None:
        """What :meth:`normalise_spikes` multiplies the spikes by: ``1 / firing gain`` (a scalar, or (N,1,1,1)
        for per-sample gains), or None when ``spike_norm`` is "none"."""
        if self.config.spike_norm == "none":
            return None
        if gain is None:
            gain = firing_gain(blur, spikes)
        gain = torch.as_tensor(gain, dtype=torch.float32, device=spikes.device)
        gain = gain.clamp(FIRING_GAIN_MIN, FIRING_GAIN_MAX).reshape(-1, 1, 1, 1) if gain.ndim else gain
        return (1.0 / gain).to(spikes.dtype)

    def encode_scaled_spikes(self, spikes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``encode_spikes(spikes * scale)`` with the scale applied after the first conv's weights, before its
        bias (exact: ``conv(s * c) = c * conv_w(s) + b``), so that conv reads the spikes as recorded. The
        deployed graph uses it: an int8 export's calibrated range of that conv's input then holds on a sensor
        whose firing gain differs from the calibration recordings' (the scaled input would clip there)."""
        conv = self.spike_enc[0]
        features = F.conv2d(spikes, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        features = features * scale + conv.bias.view(1, -1, 1, 1)
        return self.spike_enc2(self.spike_enc[1:](features))

    def encode_blur(self, blur: torch.Tensor) -> torch.Tensor:
        """The blurry frame's encoder: (N, 3, H, W) -> (N, 32, H/4, W/4)."""
        return self.blur_enc2(self.blur_enc(blur))

    def encode_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        """The spike windows' encoder (spikes already normalised): (N, S, H/4, W/4) -> (N, 32, H/4, W/4)."""
        return self.spike_enc2(self.spike_enc(spikes))

    def fuse_and_decode(self, blur_features: torch.Tensor, spike_features: torch.Tensor) -> torch.Tensor:
        """Everything between the two encoders and the head: (N or 1, 32, H/4, W/4) and (N, 32, H/4, W/4) ->
        (N, 16, H, W) (paper: the features the head mixes with B) or (N, 3, H, W) (lite variants: the sharp frame
        less the head's skip of B). A batch of 1 of blur features is shared by the N spike windows."""
        if self.config.variant == "lite-fused":
            fused = torch.relu(self.fuse_spikes(spike_features) + self.fuse_blur(blur_features))
        else:
            blur_features = blur_features.expand(spike_features.shape[0], -1, -1, -1)
            fused = torch.cat([blur_features, spike_features], dim=1)
        fused = self.ca(fused) * fused
        fused = self.sa(fused) * fused
        if self.config.variant in LITE_VARIANTS:
            return self.to_rgb(self.refine(self.up1(self.trunk(fused))))
        fused = self.resBlock2(self.resBlock1(fused))
        return self.decoder2(self.decoder1(fused))

    def forward_exposure(self, blur: torch.Tensor, spike_windows: torch.Tensor) -> torch.Tensor:
        """All K timestamps of one exposure as one batch: the same blurry frame for each spike window.

        ``blur`` is (3,H,W) or (1,3,H,W); ``spike_windows`` is (K,S,H/4,W/4). Returns (K,3,H,W), unclipped
        (clipped with ``colour_anchor`` "exposure-mean", :func:`anchor_colour`).
        """
        if blur.ndim == 3:
            blur = blur.unsqueeze(0)
        if blur.ndim != 4 or blur.shape[0] != 1:
            raise ConfigError(f"forward_exposure takes one blurry frame (3,H,W) or (1,3,H,W), got {tuple(blur.shape)}")
        if spike_windows.ndim != 4:
            raise ConfigError(
                f"forward_exposure takes spike windows of shape (K, {self.config.spike_frames}, H/4, W/4), "
                f"got {tuple(spike_windows.shape)}"
            )
        # one firing gain for the K windows: forward measures it over the whole batch, i.e. this exposure
        sharp = self(blur.expand(spike_windows.shape[0], -1, -1, -1), spike_windows)
        return sharp if self.config.colour_anchor == "none" else anchor_colour(sharp, blur)


class ExposureLDN(nn.Module):
    """The deployed graph: one exposure in its wire formats, the same function as ``LDN.forward_exposure``.

    ``forward(image (1,H,W,3) uint8 BGR, spikes (K,S,H/4,W/4) uint8 levels) -> (K,H,W,3) uint8 BGR``:
    ``image / 255`` and ``spikes / SPIKE_LEVEL`` in, the output clipped to [0, 1] and rounded half up
    (``floor(x * 255 + 0.5)``, as ``kernels.convert.planar_to_bgr8``). The conversions run inside the graph (on a
    GPU they fuse into the first and last layers, and the host moves uint8, not float32), and the blurry
    frame is encoded once for the K timestamps: the head's 1x1 conv over ``cat(blur, decoded)`` is split
    into its blur and decoded parts, so the (K,3,H,W) copies of the frame are never made.
    """

    def __init__(self, ldn: nn.Module):
        super().__init__()
        self.ldn = ldn

    def forward(self, image: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
        ldn = self.ldn
        blur = image.permute(0, 3, 1, 2).float() / 255.0  # (1, 3, H, W)
        spikes = spikes.float() / float(SPIKE_LEVEL)
        scale = ldn.spike_scale(blur, spikes, None)  # one gain for the exposure: its K windows, its frame
        spike_features = ldn.encode_spikes(spikes) if scale is None else ldn.encode_scaled_spikes(spikes, scale)
        decoded = ldn.fuse_and_decode(ldn.encode_blur(blur), spike_features)  # (1, ...) blur features, shared
        if ldn.config.variant in LITE_VARIANTS:  # its head: a 1x1 skip of the blurry frame (once) plus the decoded frames
            sharp = ldn.blur_skip(blur) + decoded
        else:
            weight = ldn.pred.weight  # (3, 3 + 16, 1, 1): the blurry image's channels come first
            sharp = F.conv2d(blur, weight[:, :3]) + F.conv2d(decoded, weight[:, 3:], ldn.pred.bias)
        sharp = sharp.clamp(0.0, 1.0) if ldn.config.colour_anchor == "none" else anchor_colour(sharp, blur)
        return (sharp * 255.0 + 0.5).floor().to(torch.uint8).permute(0, 2, 3, 1)


def anchor_colour(sharp: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """``colour_anchor`` "exposure-mean": the K frames ``sharp`` (K,3,H,W) of one exposure, clipped to [0, 1],
    each channel shifted by one offset so the mean over the K frames and the image equals that of the blurry frame
    ``blur`` (1,3,H,W) (the blur formation fixes it, SPEC §3), clipped again. The frames should span the
    exposure (a batch of its first half alone would be pulled towards the whole exposure's mean)."""
    sharp = sharp.clamp(0.0, 1.0)
    offset = blur.mean(dim=(0, 2, 3), keepdim=True) - sharp.mean(dim=(0, 2, 3), keepdim=True)
    return (sharp + offset).clamp(0.0, 1.0)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
