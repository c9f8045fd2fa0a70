"""Self-supervised losses of S-SDM (SPEC §3), in PyTorch.

- BSN: ``MSE(TFP_short, BSN(TFP_short))`` (the blind spot rules out the identity, so it learns to denoise).
- SR: ``MSE(SR(TFP_long), gray(B))`` (long TFP ~ gray blurry frame up to a gain).
- LDN: ``λ_tea · mean_m D(T(t_m), LDN(t_m)) + λ_reblur · MSE(B, mean_m LDN(t_m))``. Optionally the re-blur
  term runs over a finer set of N timestamps that contains the M distilled ones (``distilled_positions``),
  averaged with the trapezoid rule (``REBLUR_RULES``): the blurry frame is the mean over *every* frame of the
  exposure, which 5 samples approximate poorly under fast motion (see training/README.md).

The paper's distillation distance ``D`` is LPIPS-VGG, whose ImageNet weights cannot be downloaded here. We
use an offline distance instead: ``D = Charbonnier + (1 − SSIM)`` (SSIM with an 11-tap gaussian window,
σ = 1.5, data range 1): Charbonnier keeps the student's intensities on the teacher's, SSIM rewards the
local structure (edges, texture) that LPIPS is used for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spikereveal.errors import ConfigError
from spikereveal.training.train_config import REBLUR_RULES, distilled_positions

# gray = 0.3 R + 0.59 G + 0.11 B, on BGR channel order.
GRAY_WEIGHTS_BGR = (0.11, 0.59, 0.3)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
CHARBONNIER_EPS = 1e-3
LAMBDA_TEACHER = 1.0
LAMBDA_REBLUR = 100.0


def _check_reblur_rule(rule: str) -> None:
    if rule not in REBLUR_RULES:
        raise ConfigError(f"unknown re-blur rule {rule!r}; use one of {list(REBLUR_RULES)}")


def reblur_weights(count: int, rule: str = "mean") -> torch.Tensor:
    """Weights (summing to 1) of ``count`` evenly spread frames in the re-blurred image, per ``rule``."""
    _check_reblur_rule(rule)
    weights = torch.ones(int(count), dtype=torch.float64)
    if rule == "trapezoid" and count > 1:
        weights[0] = weights[-1] = 0.5
    return weights / weights.sum()


def gray(bgr: torch.Tensor) -> torch.Tensor:
    """Gray image ``(..., 1, H, W)`` of a BGR image ``(..., 3, H, W)``."""
    if bgr.shape[-3] != 3:
        raise ConfigError(f"gray() needs 3 BGR channels in dimension -3, got shape {tuple(bgr.shape)}")
    weights = torch.tensor(GRAY_WEIGHTS_BGR, dtype=bgr.dtype, device=bgr.device).view(3, 1, 1)
    return (bgr * weights).sum(dim=-3, keepdim=True)


def charbonnier(prediction: torch.Tensor, target: torch.Tensor, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """Mean Charbonnier distance ``sqrt((x - y)² + eps²)``: L1-like, smooth at zero."""
    return torch.sqrt((prediction - target).square() + eps * eps).mean()


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    kernel = torch.exp(-(coords**2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of two ``(N, C, H, W)`` batches, each channel on its own.

    Gaussian window (default 11 taps, σ 1.5), population statistics, only the positions where the window
    fits inside the image (no padding). Images smaller than the window use the largest odd window that fits.
    """
    if prediction.shape != target.shape or prediction.dim() != 4:
        raise ConfigError(
            f"ssim() needs two (N, C, H, W) tensors of one shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}"
        )
    size = min(window, prediction.shape[-2], prediction.shape[-1])
    size -= 1 - size % 2
    if size < 1:
        raise ConfigError(f"ssim() needs images of at least 1x1 pixels, got {tuple(prediction.shape)}")
    channels = prediction.shape[1]
    taps = _gaussian_window(size, sigma, prediction.dtype, prediction.device)
    rows = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable gaussian, one filter per channel
        return F.conv2d(F.conv2d(x, rows, groups=channels), cols, groups=channels)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(prediction), blur(target)
    var_x = blur(prediction * prediction) - mu_x * mu_x
    var_y = blur(target * target) - mu_y * mu_y
    cov = blur(prediction * target) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean()


def distillation_distance(prediction: torch.Tensor, target: torch.Tensor, ssim_weight: float = 1.0) -> torch.Tensor:
    """Offline stand-in for LPIPS-VGG: ``Charbonnier + ssim_weight · (1 − SSIM)`` over ``(..., C, H, W)``.

    ``ssim_weight=0`` leaves Charbonnier alone (the ablation of the structural term).
    """
    flat_prediction = prediction.reshape(-1, *prediction.shape[-3:])
    flat_target = target.reshape(-1, *target.shape[-3:])
    distance = charbonnier(flat_prediction, flat_target)
    if ssim_weight == 0:
        return distance
    return distance + ssim_weight * (1.0 - ssim(flat_prediction, flat_target))


def bsn_loss(denoised: torch.Tensor, tfp_short: torch.Tensor) -> torch.Tensor:
    """Blind-spot self-supervision: ``MSE(TFP_short, BSN(TFP_short))``."""
    return F.mse_loss(denoised, tfp_short)


def sr_loss(super_resolved: torch.Tensor, gray_blurry: torch.Tensor) -> torch.Tensor:
    """``MSE(SR(TFP_long), gray(B))``."""
    return F.mse_loss(super_resolved, gray_blurry)


@dataclass(frozen=True)
class LdnLossWeights:
    """Weights of the student's two terms (the paper's λ_tea = 1, λ_reblur = 100), of the SSIM term
    inside the distillation distance, and of the timestamps inside the re-blurred frame (``reblur_rule``)."""

    teacher: float = LAMBDA_TEACHER
    reblur: float = LAMBDA_REBLUR
    ssim: float = 1.0
    reblur_rule: str = "mean"

    def __post_init__(self):
        for name in ("teacher", "reblur", "ssim"):
            value = getattr(self, name)
            if not (value >= 0.0):
                raise ConfigError(f"LDN loss weight '{name}' must be >= 0, got {value!r}")
        _check_reblur_rule(self.reblur_rule)


def ldn_loss(
    frames: torch.Tensor,
    teacher_frames: torch.Tensor,
    blurry: torch.Tensor,
    weights: LdnLossWeights = LdnLossWeights(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Student loss over ``frames`` (B, N, 3, H, W) at N evenly spread timestamps of each of B exposure crops.

    ``teacher_frames`` (B, M, 3, H, W) are the targets at M of them (``distilled_positions(N, M)``; M = N
    is the paper's loss); ``blurry`` is (B, 3, H, W) and is compared with the frames averaged per
    ``weights.reblur_rule``. Returns the total and its parts (``teacher``: the mean distillation distance;
    ``reblur``: the re-blur MSE) as floats for logs.
    """
    if frames.dim() != 5 or teacher_frames.dim() != 5 or (
            frames.shape[:1] + frames.shape[2:] != teacher_frames.shape[:1] + teacher_frames.shape[2:]):
        raise ConfigError(
            f"ldn_loss() needs student and teacher frames of shapes (B, N, 3, H, W) and (B, M, 3, H, W), got "
            f"{tuple(frames.shape)} and {tuple(teacher_frames.shape)}"
        )
    if blurry.shape != frames.shape[:1] + frames.shape[2:]:
        raise ConfigError(
            f"ldn_loss() needs the blurry crops as (B, 3, H, W) = {tuple(frames.shape[:1] + frames.shape[2:])}, "
            f"got {tuple(blurry.shape)}"
        )
    positions = distilled_positions(frames.shape[1], teacher_frames.shape[1])
    distilled = frames if len(positions) == frames.shape[1] else frames[:, positions]
    teacher_term = distillation_distance(distilled, teacher_frames, ssim_weight=weights.ssim)
    mix = reblur_weights(frames.shape[1], weights.reblur_rule).to(frames.device, frames.dtype)
    reblurred = torch.einsum("t,btchw->bchw", mix, frames)
    reblur_term = F.mse_loss(reblurred, blurry)
    total = weights.teacher * teacher_term + weights.reblur * reblur_term
    return total, {"teacher": float(teacher_term.detach()), "reblur": float(reblur_term.detach())}
