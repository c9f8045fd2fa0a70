"""Export-time rewrite: stride-2 transposed convolutions as a convolution + pixel shuffle (exactly equal).

ONNX Runtime's CPU ConvTranspose is its slowest kernel on the LDN (over half the time at 720p, measured);
a stride-2 transposed convolution equals one ordinary convolution over the input producing the four output
phases as channels, followed by DepthToSpace, which every runtime runs with its fast convolution path.
Output row ``2i + a`` of ``ConvTranspose2d(k, stride=2, padding=p)`` takes input row ``i + t`` through
kernel row ``m = a + p - 2t`` (when ``0 <= m < k``); the same holds for columns. The rewrite is exact up
to float summation order (~1e-7) and only touches the exported copy, never the trained module.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _phase_taps(kernel: int, padding: int) -> tuple[int, int]:
    """Smallest input-offset range ``[t_lo, t_hi]`` that covers both output phases."""
    offsets = [t for a in (0, 1) for t in range(-kernel, kernel + 1) if 0 <= a + padding - 2 * t < kernel]
    return min(offsets), max(offsets)


def can_rewrite(module: nn.Module) -> bool:
    """A 2-D transposed convolution with stride 2, square kernel, no groups/dilation, output exactly 2x."""
    if not isinstance(module, nn.ConvTranspose2d):
        return False
    (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
    (oh, ow), (dh, dw) = module.output_padding, module.dilation
    return (kh == kw and ph == pw and oh == ow and (sh, sw) == (2, 2) and (dh, dw) == (1, 1)
            and module.groups == 1 and kh + oh - 2 * ph == 2 and module.padding_mode == "zeros")


class SubPixelConvTranspose2d(nn.Module):
    """``ConvTranspose2d(stride=2)`` as ``Conv2d(C_in, 4*C_out)`` + ``pixel_shuffle(2)``, same weights."""

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        if not can_rewrite(deconv):
            raise ValueError(f"cannot rewrite {deconv} as a sub-pixel convolution")
        k, pad = deconv.kernel_size[0], deconv.padding[0]
        c_in, c_out = deconv.in_channels, deconv.out_channels
        t_lo, t_hi = _phase_taps(k, pad)
        size = t_hi - t_lo + 1
        weight = deconv.weight.detach()  # (c_in, c_out, k, k)
        kernel = torch.zeros(c_out, 2, 2, c_in, size, size, dtype=weight.dtype)
        for a in (0, 1):
            for b in (0, 1):
                for u in range(size):
                    m = a + pad - 2 * (t_lo + u)
                    for v in range(size):
                        n = b + pad - 2 * (t_lo + v)
                        if 0 <= m < k and 0 <= n < k:
                            kernel[:, a, b, :, u, v] = weight[:, :, m, n].t()
        self.conv = nn.Conv2d(c_in, 4 * c_out, size, bias=deconv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(kernel.reshape(4 * c_out, c_in, size, size))
            if deconv.bias is not None:
                self.conv.bias.copy_(deconv.bias.detach().repeat_interleave(4))
        self.pad_before, self.pad_after = -t_lo, t_hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_before == self.pad_after:
            y = F.conv2d(x, self.conv.weight, self.conv.bias, padding=self.pad_before)
        else:
            y = self.conv(F.pad(x, (self.pad_before, self.pad_after, self.pad_before, self.pad_after)))
        return F.pixel_shuffle(y, 2)


def rewrite_transposed_convs(model: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``model`` with every rewritable ConvTranspose2d replaced; returns (copy, count)."""
    model = copy.deepcopy(model)
    count = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if can_rewrite(child):
                setattr(parent, name, SubPixelConvTranspose2d(child))
                count += 1
    return model, count
