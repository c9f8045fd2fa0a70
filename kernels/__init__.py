"""Pure spike kernels: functions over arrays (numba where it pays). Imports no zmq, torch or TensorRT.

Packed frames are ``uint8`` arrays of shape ``(N, H*W/8)``: row-major pixels, pixel ``k`` in bit ``k % 8``
of byte ``k // 8`` (least significant bit first), top row first. File readers convert other bit orders
and upside-down storage to this layout once, at read time.
"""

from spikereveal.kernels.packing import (
    BIT_ORDERS,
    as_packed,
    from_canonical,
    pack_frames,
    packed_frame_bytes,
    to_canonical,
    unpack_frames,
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
    "BIT_ORDERS",
    "as_packed",
    "from_canonical",
    "pack_frames",
    "packed_frame_bytes",
    "to_canonical",
    "unpack_frames",
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
