"""Pure spike kernels: functions over arrays (numba where it pays). Imports no zmq, torch or TensorRT.

Packed frames are ``uint8`` arrays of shape ``(N, H*W/8)``: row-major pixels, pixel ``k`` in bit ``k % 8``
of byte ``k // 8`` (least significant bit first), top row first. File readers convert other bit orders
and upside-down storage to this layout once, at read time.

Names are imported on first use (PEP 562), so ``import spikereveal.kernels.timing`` (the geometry
constants, e.g. for the CLI) does not load numba.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MAX_WINDOW_FRAMES": "spikereveal.kernels.accumulate",
    "SpikeAccumulator": "spikereveal.kernels.accumulate",
    "window_count": "spikereveal.kernels.accumulate",
    "window_counts": "spikereveal.kernels.accumulate",
    "bgr8_to_planar": "spikereveal.kernels.convert",
    "planar_to_bgr8": "spikereveal.kernels.convert",
    "extract_ldn_input": "spikereveal.kernels.extract",
    "SDM_SHORT_WINDOW": "spikereveal.kernels.images",
    "reblur": "spikereveal.kernels.images",
    "sdm": "spikereveal.kernels.images",
    "tfi": "spikereveal.kernels.images",
    "tfp": "spikereveal.kernels.images",
    "tfp_range": "spikereveal.kernels.images",
    "tfp_stack": "spikereveal.kernels.images",
    "upsample_nearest": "spikereveal.kernels.images",
    "BIT_ORDERS": "spikereveal.kernels.packing",
    "as_packed": "spikereveal.kernels.packing",
    "from_canonical": "spikereveal.kernels.packing",
    "pack_frames": "spikereveal.kernels.packing",
    "packed_frame_bytes": "spikereveal.kernels.packing",
    "to_canonical": "spikereveal.kernels.packing",
    "unpack_frames": "spikereveal.kernels.packing",
    "DEFAULT_GAIN_TOLERANCE": "spikereveal.kernels.sensor",
    "domain_check": "spikereveal.kernels.sensor",
    "exposure_firing_gain": "spikereveal.kernels.sensor",
    "firing_gain": "spikereveal.kernels.sensor",
    "gray_mean": "spikereveal.kernels.sensor",
    "mean_spike_rate": "spikereveal.kernels.sensor",
    "parse_gain_range": "spikereveal.kernels.sensor",
    "DEFAULT_K": "spikereveal.kernels.timing",
    "DEFAULT_MARGIN_FRAMES": "spikereveal.kernels.timing",
    "LDN_SPIKE_WINDOW": "spikereveal.kernels.timing",
    "ExposureWindow": "spikereveal.kernels.timing",
    "exposure_window": "spikereveal.kernels.timing",
    "frame_period_ns": "spikereveal.kernels.timing",
    "index_to_time": "spikereveal.kernels.timing",
    "output_timestamps": "spikereveal.kernels.timing",
    "time_to_index": "spikereveal.kernels.timing",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
