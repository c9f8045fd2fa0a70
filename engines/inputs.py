"""The deployed graph's inputs, made in one place for every path (deblur, serve, workers, eval, int8 data).

* :func:`input_shape_for` -- the runner's :class:`~spikereveal.engines.runners.InputShape` for K frames of a
  spike sensor: the network grid is ``SPIKE_TO_IMAGE_SCALE`` (4) times the sensor in each dimension.
* :func:`fill_exposure_inputs` -- a camera frame and its packed spikes into ``image (1,H,W,3)`` and
  ``spikes (K,S,h,w)`` uint8, with the rig calibration applied when there is one.
"""

from __future__ import annotations

import numpy as np

from spikereveal.engines.runners import InputShape
from spikereveal.errors import ConfigError
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE
from spikereveal.kernels.timing import LDN_SPIKE_WINDOW

__all__ = ["input_shape_for", "fill_exposure_inputs"]


def input_shape_for(k: int, spike_height: int, spike_width: int, spike_frames: int = LDN_SPIKE_WINDOW) -> InputShape:
    """The runner's InputShape for ``k`` frames of a ``spike_height`` x ``spike_width`` sensor (the network grid
    is ``SPIKE_TO_IMAGE_SCALE`` times the sensor)."""
    return InputShape(k, SPIKE_TO_IMAGE_SCALE * spike_height, SPIKE_TO_IMAGE_SCALE * spike_width, spike_frames)


def fill_exposure_inputs(image_out: np.ndarray, spikes_out: np.ndarray, image_bgr8: np.ndarray, packed: np.ndarray,
                         spike_shape: tuple[int, int], centers, first_index: int, calibration=None) -> None:
    """Fill the deployed graph's inputs for one exposure: the one place deblur, serve and int8 calibration
    turn a camera frame and its packed spikes into ``image (1,H,W,3)`` and ``spikes (K,S,h,w)`` uint8.

    ``image_bgr8`` is the RGB camera's frame (h_rgb, w_rgb, 3) uint8 BGR; with a ``calibration`` (a
    RigCalibration) it is warped onto the grid and hot pixels are filled in the spike levels, without one it
    must already be the grid's size. ``packed`` holds canonical frames from index ``first_index`` on.
    """
    from spikereveal.kernels import extract_ldn_input  # numba, loaded on first use

    if calibration is None:
        if image_bgr8.shape != image_out.shape[1:]:
            raise ConfigError(f"the RGB frame is {image_bgr8.shape[1]}x{image_bgr8.shape[0]} but the network grid is "
                              f"{image_out.shape[2]}x{image_out.shape[1]}; give the rig's calibration")
        np.copyto(image_out[0], image_bgr8)
    else:
        calibration.warp_image_bgr8(image_bgr8, out=image_out[0])
    extract_ldn_input(packed, spike_shape[0], spike_shape[1], centers, window=spikes_out.shape[1],
                      first_index=first_index, out=spikes_out)
    if calibration is not None and calibration.photometric is not None:
        calibration.photometric.fill_hot_pixel_levels(spikes_out)
