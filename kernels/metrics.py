"""Image quality against a reference, torch-free (eval, adapt and the device check score frames with it).

Images are float in [0, 1] (``DATA_RANGE``); PSNR is capped at ``PSNR_CAP_DB`` so identical images score a
finite number.
"""

from __future__ import annotations

import numpy as np

DATA_RANGE = 1.0
PSNR_CAP_DB = 100.0


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB of ``image`` against ``reference`` (float, data range 1), capped at 100 dB."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2))
    if mse <= 10.0 ** (-PSNR_CAP_DB / 10.0):
        return PSNR_CAP_DB
    return float(10.0 * np.log10(DATA_RANGE**2 / mse))
