"""Pure spike kernels: functions over arrays (numba where it pays). Imports no zmq, torch or TensorRT.

Packed frames are ``uint8`` arrays of shape ``(N, H*W/8)``: row-major pixels, pixel ``k`` in bit ``k % 8``
of byte ``k // 8`` (least significant bit first), top row first. File readers convert other bit orders
and upside-down storage to this layout once, at read time.
"""

from spikereveal.kernels.accumulate import MAX_WINDOW_FRAMES, SpikeAccumulator, window_count, window_counts
from spikereveal.kernels.convert import bgr8_to_planar, planar_to_bgr8
from spikereveal.kernels.extract import extract_ldn_input
from spikereveal.kernels.images import (
    SDM_SHORT_WINDOW,
    reblur,
    sdm,
    tfi,
    tfp,
    tfp_range,
    tfp_stack,
    upsample_nearest,
)
from spikereveal.kernels.packing import (
    BIT_ORDERS,
    as_packed,
    from_canonical,
    pack_frames,
    packed_frame_bytes,
    to_canonical,
    unpack_frames,
)
from spikereveal.kernels.sensor import (
    DEFAULT_GAIN_TOLERANCE,
    domain_check,
    exposure_firing_gain,
    firing_gain,
    gray_mean,
    mean_spike_rate,
    parse_gain_range,
)
from spikereveal.kernels.timing import (
    DEFAULT_K,
    DEFAULT_MARGIN_FRAMES,
    LDN_SPIKE_WINDOW,
    ExposureWindow,
    exposure_window,
    frame_period_ns,
    index_to_time,
    output_timestamps,
    time_to_index,
)

__all__ = [
    "MAX_WINDOW_FRAMES",
    "SpikeAccumulator",
    "window_count",
    "window_counts",
    "bgr8_to_planar",
    "planar_to_bgr8",
    "extract_ldn_input",
    "SDM_SHORT_WINDOW",
    "reblur",
    "sdm",
    "tfi",
    "tfp",
    "tfp_range",
    "tfp_stack",
    "upsample_nearest",
    "BIT_ORDERS",
    "as_packed",
    "from_canonical",
    "pack_frames",
    "packed_frame_bytes",
    "to_canonical",
    "unpack_frames",
    "DEFAULT_GAIN_TOLERANCE",
    "domain_check",
    "exposure_firing_gain",
    "firing_gain",
    "gray_mean",
    "mean_spike_rate",
    "parse_gain_range",
    "DEFAULT_K",
    "DEFAULT_MARGIN_FRAMES",
    "LDN_SPIKE_WINDOW",
    "ExposureWindow",
    "exposure_window",
    "frame_period_ns",
    "index_to_time",
    "output_timestamps",
    "time_to_index",
]
