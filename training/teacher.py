"""The network teacher of S-SDM (SPEC §3): ``clip(B * SR(BSN(TFP_short)) / SR(TFP_long), 0, 1)``.

The plain SDM baseline (no networks) is ``spikereveal.kernels.sdm``; this module only adds the BSN/SR
cascade in PyTorch. Division rule of the reference code: no epsilon, a zero denominator gives 0, and
every stage (BSN output, both SR outputs, the result) is clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spikereveal.errors import ConfigError
from spikereveal.training.sr import SR_SCALE


def _as_float_tensor(value, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"expected a numpy array or a torch tensor, got {type(value).__name__}")
    return tensor.to(device=device, dtype=torch.float32)


def ratio_deblur(blur: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``clip(blur / denominator * numerator, 0, 1)`` with 0 where the denominator is exactly 0.

    ``blur`` is (..., 3, H, W); the gray maps are (..., 1, H, W) and apply to all three channels. The
    operation order follows the reference code (divide first, then multiply).
    """
    ratio = torch.where(denominator == 0, torch.zeros_like(blur), blur / denominator)
    return (ratio * numerator).clamp(0.0, 1.0)


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def teacher_frames(blur, tfp_short, tfp_long, bsn: nn.Module, sr: nn.Module,
                   chunk_size: int | None = None) -> torch.Tensor:
    """Pseudo-sharp frames of one exposure for K timestamps.

    blur: (3, H, W) BGR in [0, 1] (numpy or torch). tfp_short: (K, h, w) short-window TFPs at the K
    timestamps. tfp_long: (h, w) TFP over the whole exposure. H, W = 4h, 4w. Returns a float32 tensor
    (K, 3, H, W) in [0, 1] on the networks' device. The networks are used as given (call ``.eval()``).
    ``chunk_size`` runs at most that many timestamps through the networks at once (bounds memory on
    full frames: the BSN holds 4 rotations x 96 channels at full spike resolution per timestamp).
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"teacher chunk_size must be a positive integer or None, got {chunk_size!r}")
    device = _device_of(bsn)
    blur = _as_float_tensor(blur, device)
    tfp_short = _as_float_tensor(tfp_short, device)
    tfp_long = _as_float_tensor(tfp_long, device)
    if blur.ndim != 3 or blur.shape[0] != 3:
        raise ConfigError(f"teacher blur must be (3, H, W), got shape {tuple(blur.shape)}")
    if tfp_short.ndim != 3 or tfp_long.ndim != 2:
        raise ConfigError(
            f"teacher needs tfp_short (K, h, w) and tfp_long (h, w), got {tuple(tfp_short.shape)} "
            f"and {tuple(tfp_long.shape)}"
        )
    spike_shape = tuple(tfp_long.shape)
    image_shape = (spike_shape[0] * SR_SCALE, spike_shape[1] * SR_SCALE)
    if tuple(tfp_short.shape[1:]) != spike_shape or tuple(blur.shape[1:]) != image_shape:
        raise ConfigError(
            f"teacher shapes do not match: tfp_long {spike_shape}, tfp_short {tuple(tfp_short.shape)}, blur "
            f"{tuple(blur.shape)}; both TFPs must be (h, w) and the blurry image exactly {SR_SCALE}x that"
        )
    denominator = sr(tfp_long[None, None]).clamp(0.0, 1.0)  # (1, 1, H, W)
    step = chunk_size or max(1, tfp_short.shape[0])
    frames = []
    for start in range(0, tfp_short.shape[0], step):
        denoised = bsn(tfp_short[start:start + step].unsqueeze(1)).clamp(0.0, 1.0)
        numerator = sr(denoised).clamp(0.0, 1.0)  # (k, 1, H, W)
        frames.append(ratio_deblur(blur.unsqueeze(0), numerator, denominator))
    return torch.cat(frames, dim=0)
