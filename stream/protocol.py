"""The wire schema of spikereveal (SPEC §7): the one module that knows how messages are laid out.

Every message is three ZeroMQ frames ``[topic, header, payload]``:

* ``topic``   -- ASCII kind name (``b"spk"``, ``b"rgb"``, ``b"hb"``, ``b"sharp"``) for SUB filtering.
* ``header``  -- fixed little-endian ``struct``: a common part followed by a per-kind body.
* ``payload`` -- raw pixels, read without copies (``np.frombuffer`` on the received frame's buffer).

Common header (36 bytes, ``<4sHHIqqQ``)::

    magic b"SPKR" | version u16 | kind u16 | stream_id u32 | seq i64 | send_time_ns i64 | payload_nbytes u64

``seq`` counts the data messages of one stream id (0, 1, 2, ...). A heartbeat's ``seq`` is the sequence
number of the last data message sent on the stream it describes (-1: none yet), which is how a receiver
notices loss at the tail of a stream (a PUB socket drops silently at its high-water mark). ``send_time_ns``
is the publisher's monotonic clock when it sent the message, for latency reports only.

Bodies (all integers little-endian, reserved bytes zero)::

    spike block   first_index i64 | frame_count u32 | height u32 | width u32 | rate_hz f64 | t0_ns i64
                  | bit_order u8 (0 little, 1 big) | flip_rows u8 | encoding u8 (0 packed bits) | reserved u8
                  payload: frame_count packed frames as the sensor stores them (bit order, row flip)
    rgb exposure  frame_id i64 | start_ns i64 | duration_ns i64 | height u32 | width u32
                  | pixel_format u8 (1 bgr8) | reserved u8 | reserved u16
                  payload: uint8 (height, width, 3) BGR, row-major (OpenCV's layout)
    heartbeat     stream_kind u16 (kind of the described stream) | reserved u16 | reserved u32
                  | position i64 | clock_ns i64;  no payload.  position: spike stream -> index one past
                  the last frame sent; rgb stream -> frame id of the last exposure sent (-1: none)
    sharp frame   exposure_id i64 | t_ns i64 | k u16 | count u16 (K) | height u32 | width u32
                  | pixel_format u8 | reserved u8 | reserved u16
                  payload: pixel_format 1 (bgr8): uint8 (height, width, 3) BGR -- the default, what a
                  viewer shows and a quarter of the bytes; pixel_format 2 (bgr_f32): float32 (3, height,
                  width) BGR in [0, 1], the library's own layout (the network's 8-bit result / 255).

Decoding validates the whole header (part count, magic, version, kind, header size, topic, every field,
geometry limits, payload size implied by the geometry, actual payload length) before it touches the
payload, and raises :class:`ProtocolError` with a :class:`Reason` and the kind (when known) so that the
ingest can count rejections per kind and per reason. Network data is never unpickled.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

from spikereveal.errors import SpikeRevealError

__all__ = [
    "MAGIC",
    "PROTOCOL_VERSION",
    "Kind",
    "Reason",
    "ProtocolError",
    "SpikeBlock",
    "RgbExposure",
    "Heartbeat",
    "SharpFrame",
    "Message",
    "encode",
    "decode",
    "TOPICS",
    "MAX_SPIKE_SIDE",
    "MAX_IMAGE_SIDE",
    "MAX_BLOCK_FRAMES",
    "MAX_PAYLOAD_BYTES",
    "MAX_RATE_HZ",
]

MAGIC = b"SPKR"
PROTOCOL_VERSION = 1

# Geometry limits: generous for any real sensor, small enough that a lying header cannot make us
# allocate or view gigabytes.
MAX_SPIKE_SIDE = 4096
MAX_IMAGE_SIDE = 16384
MAX_BLOCK_FRAMES = 4096
MAX_PAYLOAD_BYTES = 512 * 1024 * 1024
MAX_RATE_HZ = 10_000_000.0
MAX_OUTPUT_COUNT = 4096


class Kind(enum.IntEnum):
    SPIKE_BLOCK = 1
    RGB_EXPOSURE = 2
    HEARTBEAT = 3
    SHARP_FRAME = 4


TOPICS: dict[Kind, bytes] = {
    Kind.SPIKE_BLOCK: b"spk",
    Kind.RGB_EXPOSURE: b"rgb",
    Kind.HEARTBEAT: b"hb",
    Kind.SHARP_FRAME: b"sharp",
}


class Reason(str, enum.Enum):
    """Why a message was rejected (the value is the counter name used in reports)."""

    PARTS = "parts"  # not exactly [topic, header, payload]
    HEADER_SIZE = "header_size"  # header shorter than the common part or not the kind's size
    MAGIC = "magic"
    VERSION = "version"
    KIND = "kind"  # unknown message kind
    TOPIC = "topic"  # topic frame does not name the header's kind
    FIELD = "field"  # a field out of its domain (negative seq, unknown bit order, reserved != 0, ...)
    GEOMETRY = "geometry"  # sizes zero, absurd, or not packable
    PAYLOAD_SIZE = "payload_size"  # header's payload_nbytes disagrees with its geometry, or payload too long
    TRUNCATED = "truncated"  # payload shorter than the header says
    JUMP = "jump"  # sequence number, frame index or heartbeat far beyond any real loss, not confirmed by the next message
    STALE = "stale_stream"  # from a stream that a restart replaced moments ago (its last messages, still in flight)


class ProtocolError(SpikeRevealError, ValueError):
    """A message that does not follow the wire schema. ``kind`` is None when it could not be read."""

    def __init__(self, reason: Reason, message: str, kind: Kind | None = None):
        self.reason = reason
        self.kind = kind
        what = kind.name.lower() if kind is not None else "message"
        super().__init__(f"malformed {what} ({reason.value}): {message}")


_COMMON = struct.Struct("<4sHHIqqQ")
_SPIKE = struct.Struct("<qIIIdqBBBB")
_RGB = struct.Struct("<qqqIIBBH")
_HEARTBEAT = struct.Struct("<HHIqq")
_SHARP = struct.Struct("<qqHHIIBBH")
_BODIES = {Kind.SPIKE_BLOCK: _SPIKE, Kind.RGB_EXPOSURE: _RGB, Kind.HEARTBEAT: _HEARTBEAT, Kind.SHARP_FRAME: _SHARP}
HEADER_SIZES = {kind: _COMMON.size + body.size for kind, body in _BODIES.items()}

_BIT_ORDER_CODES = {"little": 0, "big": 1}
_BIT_ORDER_NAMES = {code: name for name, code in _BIT_ORDER_CODES.items()}
ENCODING_PACKED_BITS = 0
PIXEL_BGR8 = 1
PIXEL_BGR_F32 = 2
_PIXEL_FORMAT_NAMES = {PIXEL_BGR8: "bgr8", PIXEL_BGR_F32: "bgr_f32"}
_PIXEL_FORMAT_CODES = {name: code for code, name in _PIXEL_FORMAT_NAMES.items()}
_UINT32_MAX = 2**32 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# -- messages ------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SpikeBlock:
    """``packed``: (frame_count, H*W/8) uint8, frames ``first_index ..`` in the sensor's storage layout
    (``bit_order``, ``flip_rows``); :func:`spikereveal.kernels.packing.to_canonical` normalises it."""

    stream_id: int
    seq: int
    first_index: int
    t0_ns: int
    rate_hz: float
    height: int
    width: int
    packed: np.ndarray
    bit_order: str = "little"
    flip_rows: bool = False
    send_time_ns: int = 0

    kind = Kind.SPIKE_BLOCK

    @property
    def frame_count(self) -> int:
        return int(self.packed.shape[0])

    @property
    def stop_index(self) -> int:
        """One past the last frame of the block."""
        return self.first_index + self.frame_count


@dataclass(frozen=True, eq=False)
class RgbExposure:
    """A blurry RGB exposure; ``image`` is uint8 (height, width, 3) BGR. ``start_ns`` is on the RGB clock."""

    stream_id: int
    seq: int
    frame_id: int
    start_ns: int
    duration_ns: int
    image: np.ndarray
    send_time_ns: int = 0

    kind = Kind.RGB_EXPOSURE
    pixel_format = "bgr8"

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns


@dataclass(frozen=True, eq=False)
class Heartbeat:
    """``last_seq``: sequence number of the last data message sent on the described stream (-1: none)."""

    stream_id: int
    stream_kind: Kind
    last_seq: int
    position: int
    clock_ns: int
    send_time_ns: int = 0

    kind = Kind.HEARTBEAT

    @property
    def seq(self) -> int:
        return self.last_seq


@dataclass(frozen=True, eq=False)
class SharpFrame:
    """Output frame ``k`` of ``count`` of an exposure. ``image``: uint8 (H, W, 3) BGR (``bgr8``) or
    float32 (3, H, W) BGR in [0, 1] (``bgr_f32``)."""

    stream_id: int
    seq: int
    exposure_id: int
    t_ns: int
    k: int
    count: int
    image: np.ndarray
    send_time_ns: int = 0

    kind = Kind.SHARP_FRAME

    @property
    def pixel_format(self) -> str:
        return "bgr8" if self.image.dtype == np.uint8 else "bgr_f32"

    @property
    def height(self) -> int:
        return int(self.image.shape[0 if self.pixel_format == "bgr8" else 1])

    @property
    def width(self) -> int:
        return int(self.image.shape[1 if self.pixel_format == "bgr8" else 2])


Message = Union[SpikeBlock, RgbExposure, Heartbeat, SharpFrame]


# -- field checks (shared by encode and decode) ----------------------------------------------------------
def _fail(reason: Reason, message: str, kind: Kind | None) -> ProtocolError:
    return ProtocolError(reason, message, kind)


def _check_int(name: str, value, low: int, high: int, kind: Kind, reason: Reason = Reason.FIELD) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _fail(reason, f"{name} must be an integer, got {value!r}", kind)
    if not low <= int(value) <= high:
        raise _fail(reason, f"{name} must lie in [{low}, {high}], got {value}", kind)
    return int(value)


def _check_side(name: str, value, limit: int, kind: Kind) -> int:
    return _check_int(name, value, 1, limit, kind, Reason.GEOMETRY)


def _check_common(stream_id, seq, send_time_ns, kind: Kind, min_seq: int = 0) -> None:
    _check_int("stream_id", stream_id, 0, _UINT32_MAX, kind)
    _check_int("seq", seq, min_seq, _INT64_MAX, kind)
    _check_int("send_time_ns", send_time_ns, _INT64_MIN, _INT64_MAX, kind)


def _check_rate(rate_hz, kind: Kind) -> float:
    if isinstance(rate_hz, (bool, np.bool_)) or not isinstance(rate_hz, (int, float, np.integer, np.floating)):
        raise _fail(Reason.FIELD, f"rate_hz must be a number, got {rate_hz!r}", kind)
    if not math.isfinite(rate_hz) or not 0 < rate_hz <= MAX_RATE_HZ:
        raise _fail(Reason.FIELD, f"rate_hz must be in (0, {MAX_RATE_HZ:g}], got {rate_hz!r}", kind)
    return float(rate_hz)


def _spike_payload_bytes(height: int, width: int, frame_count: int, kind: Kind) -> int:
    if (height * width) % 8:
        raise _fail(Reason.GEOMETRY, f"{height}x{width} spike pixels are not a multiple of 8", kind)
    return frame_count * (height * width // 8)


def _check_payload_limit(nbytes: int, kind: Kind) -> None:
    if nbytes > MAX_PAYLOAD_BYTES:
        raise _fail(Reason.GEOMETRY, f"payload of {nbytes} bytes exceeds the {MAX_PAYLOAD_BYTES} byte limit", kind)


# -- encoding --------------------------------------------------------------------------------------------
def _payload_view(array: np.ndarray) -> memoryview:
    array = np.ascontiguousarray(array)
    return memoryview(array.reshape(-1).view(np.uint8))


def _header(kind: Kind, stream_id: int, seq: int, send_time_ns: int, nbytes: int, *body) -> bytes:
    return _COMMON.pack(MAGIC, PROTOCOL_VERSION, kind, stream_id, seq, send_time_ns, nbytes) + _BODIES[kind].pack(
        *body
    )


def encode(message: Message) -> list:
    """``[topic, header, payload]`` for ``socket.send_multipart(parts, copy=False)``.

    The payload is a memoryview of the message's (contiguous) array, not a copy. Raises ProtocolError
    when a field would not survive the trip (the same checks a receiver makes).
    """
    kind = getattr(message, "kind", None)
    if kind == Kind.SPIKE_BLOCK:
        return _encode_spike(message)
    if kind == Kind.RGB_EXPOSURE:
        return _encode_rgb(message)
    if kind == Kind.HEARTBEAT:
        return _encode_heartbeat(message)
    if kind == Kind.SHARP_FRAME:
        return _encode_sharp(message)
    raise TypeError(f"encode() takes a SpikeBlock, RgbExposure, Heartbeat or SharpFrame, got {type(message).__name__}")


def _encode_spike(m: SpikeBlock) -> list:
    kind = Kind.SPIKE_BLOCK
    _check_common(m.stream_id, m.seq, m.send_time_ns, kind)
    height = _check_side("height", m.height, MAX_SPIKE_SIDE, kind)
    width = _check_side("width", m.width, MAX_SPIKE_SIDE, kind)
    packed = np.asarray(m.packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise _fail(Reason.FIELD, f"packed frames must be a 2-D uint8 array, got {packed.dtype} {packed.shape}", kind)
    count = _check_int("frame_count", packed.shape[0], 1, MAX_BLOCK_FRAMES, kind, Reason.GEOMETRY)
    nbytes = _spike_payload_bytes(height, width, count, kind)
    if packed.shape[1] * count != nbytes:
        raise _fail(Reason.GEOMETRY, f"packed frames {packed.shape} do not match a {height}x{width} sensor", kind)
    _check_payload_limit(nbytes, kind)
    first = _check_int("first_index", m.first_index, 0, _INT64_MAX - count, kind)
    t0 = _check_int("t0_ns", m.t0_ns, _INT64_MIN, _INT64_MAX, kind)
    rate = _check_rate(m.rate_hz, kind)
    if m.bit_order not in _BIT_ORDER_CODES:
        raise _fail(Reason.FIELD, f"bit_order must be one of {tuple(_BIT_ORDER_CODES)}, got {m.bit_order!r}", kind)
    header = _header(
        kind, m.stream_id, m.seq, m.send_time_ns, nbytes,
        first, count, height, width, rate, t0, _BIT_ORDER_CODES[m.bit_order], int(bool(m.flip_rows)),
        ENCODING_PACKED_BITS, 0,
    )
    return [TOPICS[kind], header, _payload_view(packed)]


def _check_image_hwc(image, kind: Kind) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise _fail(Reason.FIELD, f"image must be uint8 (height, width, 3) BGR, got {image.dtype} {image.shape}", kind)
    _check_side("height", image.shape[0], MAX_IMAGE_SIDE, kind)
    _check_side("width", image.shape[1], MAX_IMAGE_SIDE, kind)
    _check_payload_limit(image.nbytes, kind)
    return image


def _encode_rgb(m: RgbExposure) -> list:
    kind = Kind.RGB_EXPOSURE
    _check_common(m.stream_id, m.seq, m.send_time_ns, kind)
    image = _check_image_hwc(m.image, kind)
    frame_id = _check_int("frame_id", m.frame_id, 0, _INT64_MAX, kind)
    start = _check_int("start_ns", m.start_ns, _INT64_MIN, _INT64_MAX, kind)
    duration = _check_int("duration_ns", m.duration_ns, 0, _INT64_MAX, kind)
    header = _header(
        kind, m.stream_id, m.seq, m.send_time_ns, image.nbytes,
        frame_id, start, duration, image.shape[0], image.shape[1], PIXEL_BGR8, 0, 0,
    )
    return [TOPICS[kind], header, _payload_view(image)]


def _encode_heartbeat(m: Heartbeat) -> list:
    kind = Kind.HEARTBEAT
    _check_common(m.stream_id, m.last_seq, m.send_time_ns, kind, min_seq=-1)
    if m.stream_kind not in (Kind.SPIKE_BLOCK, Kind.RGB_EXPOSURE, Kind.SHARP_FRAME):
        raise _fail(Reason.FIELD, f"a heartbeat describes a data stream kind, got {m.stream_kind!r}", kind)
    position = _check_int("position", m.position, -1, _INT64_MAX, kind)
    clock = _check_int("clock_ns", m.clock_ns, _INT64_MIN, _INT64_MAX, kind)
    header = _header(kind, m.stream_id, m.last_seq, m.send_time_ns, 0, int(m.stream_kind), 0, 0, position, clock)
    return [TOPICS[kind], header, b""]


def _encode_sharp(m: SharpFrame) -> list:
    kind = Kind.SHARP_FRAME
    _check_common(m.stream_id, m.seq, m.send_time_ns, kind)
    image = np.asarray(m.image)
    if image.dtype == np.uint8:
        image = _check_image_hwc(image, kind)
        height, width, code = image.shape[0], image.shape[1], PIXEL_BGR8
    elif image.dtype == np.float32 and image.ndim == 3 and image.shape[0] == 3:
        height = _check_side("height", image.shape[1], MAX_IMAGE_SIDE, kind)
        width = _check_side("width", image.shape[2], MAX_IMAGE_SIDE, kind)
        _check_payload_limit(image.nbytes, kind)
        image = image.astype("<f4", copy=False)
        code = PIXEL_BGR_F32
    else:
        raise _fail(
            Reason.FIELD,
            f"sharp frame must be uint8 (H, W, 3) or float32 (3, H, W) BGR, got {image.dtype} {image.shape}",
            kind,
        )
    count = _check_int("count", m.count, 1, MAX_OUTPUT_COUNT, kind)
    k = _check_int("k", m.k, 0, count - 1, kind)
    exposure_id = _check_int("exposure_id", m.exposure_id, 0, _INT64_MAX, kind)
    t_ns = _check_int("t_ns", m.t_ns, _INT64_MIN, _INT64_MAX, kind)
    header = _header(
        kind, m.stream_id, m.seq, m.send_time_ns, image.nbytes, exposure_id, t_ns, k, count, height, width, code, 0, 0
    )
    return [TOPICS[kind], header, _payload_view(image)]


# -- decoding --------------------------------------------------------------------------------------------
def _as_bytes_view(part) -> memoryview:
    """A flat byte view of a received part: zmq.Frame (copy=False), bytes, bytearray or memoryview."""
    buffer = getattr(part, "buffer", part)  # zmq.Frame exposes its memory as .buffer, without a copy
    try:
        view = memoryview(buffer)
    except TypeError:
        raise _fail(Reason.PARTS, f"a message part must be bytes-like, got {type(part).__name__}", None) from None
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        view = view.cast("B")
    return view


def decode(parts) -> Message:
    """Validate and decode ``[topic, header, payload]``; payload arrays are zero-copy views of the parts.

    Views of ``bytes`` parts are read-only; views of ``zmq.Frame`` parts are writable. The returned
    message keeps the received buffers alive.
    """
    if not isinstance(parts, (list, tuple)) or len(parts) != 3:
        count = len(parts) if isinstance(parts, (list, tuple)) else type(parts).__name__
        raise _fail(Reason.PARTS, f"expected 3 parts [topic, header, payload], got {count}", None)
    topic, header, payload = (_as_bytes_view(part) for part in parts)
    if len(header) < _COMMON.size:
        raise _fail(Reason.HEADER_SIZE, f"header has {len(header)} bytes, fewer than the common {_COMMON.size}", None)
    magic, version, kind_code, stream_id, seq, send_time_ns, nbytes = _COMMON.unpack_from(header)
    if magic != MAGIC:
        raise _fail(Reason.MAGIC, f"magic {bytes(magic)!r} is not {MAGIC!r}: not a spikereveal message", None)
    if version != PROTOCOL_VERSION:
        raise _fail(
            Reason.VERSION,
            f"protocol version {version} is not {PROTOCOL_VERSION}; run the same spikereveal version on both ends",
            None,
        )
    try:
        kind = Kind(kind_code)
    except ValueError:
        raise _fail(Reason.KIND, f"unknown message kind {kind_code}", None) from None
    if len(header) != HEADER_SIZES[kind]:
        raise _fail(Reason.HEADER_SIZE, f"header has {len(header)} bytes, expected {HEADER_SIZES[kind]}", kind)
    if topic != TOPICS[kind]:
        raise _fail(Reason.TOPIC, f"topic {bytes(topic)!r} does not name a {kind.name} ({TOPICS[kind]!r})", kind)
    body = _BODIES[kind].unpack_from(header, _COMMON.size)
    if kind == Kind.HEARTBEAT:
        return _decode_heartbeat(stream_id, seq, send_time_ns, nbytes, body, payload)
    _check_int("seq", seq, 0, _INT64_MAX, kind)
    if kind == Kind.SPIKE_BLOCK:
        return _decode_spike(stream_id, seq, send_time_ns, nbytes, body, payload)
    if kind == Kind.RGB_EXPOSURE:
        return _decode_rgb(stream_id, seq, send_time_ns, nbytes, body, payload)
    return _decode_sharp(stream_id, seq, send_time_ns, nbytes, body, payload)


def _check_payload(declared: int, expected: int, payload: memoryview, kind: Kind) -> None:
    if declared != expected:
        raise _fail(
            Reason.PAYLOAD_SIZE, f"header declares {declared} payload bytes, its geometry implies {expected}", kind
        )
    if len(payload) < declared:
        raise _fail(Reason.TRUNCATED, f"payload has {len(payload)} bytes, the header declares {declared}", kind)
    if len(payload) > declared:
        raise _fail(Reason.PAYLOAD_SIZE, f"payload has {len(payload)} bytes, more than the {declared} declared", kind)


def _decode_spike(stream_id, seq, send_time_ns, nbytes, body, payload) -> SpikeBlock:
    kind = Kind.SPIKE_BLOCK
    first, count, height, width, rate, t0, bit_code, flip, encoding, reserved = body
    _check_side("height", height, MAX_SPIKE_SIDE, kind)
    _check_side("width", width, MAX_SPIKE_SIDE, kind)
    _check_int("frame_count", count, 1, MAX_BLOCK_FRAMES, kind, Reason.GEOMETRY)
    expected = _spike_payload_bytes(height, width, count, kind)
    _check_payload_limit(expected, kind)
    _check_int("first_index", first, 0, _INT64_MAX - count, kind)
    _check_rate(rate, kind)
    if bit_code not in _BIT_ORDER_NAMES:
        raise _fail(Reason.FIELD, f"unknown bit order code {bit_code}", kind)
    if flip not in (0, 1):
        raise _fail(Reason.FIELD, f"flip_rows must be 0 or 1, got {flip}", kind)
    if encoding != ENCODING_PACKED_BITS:
        raise _fail(Reason.FIELD, f"unknown spike encoding {encoding}", kind)
    if reserved:
        raise _fail(Reason.FIELD, "reserved header bytes are not zero", kind)
    _check_payload(nbytes, expected, payload, kind)
    packed = np.frombuffer(payload, dtype=np.uint8).reshape(count, expected // count)
    return SpikeBlock(
        stream_id=stream_id, seq=seq, first_index=first, t0_ns=t0, rate_hz=rate, height=height, width=width,
        packed=packed, bit_order=_BIT_ORDER_NAMES[bit_code], flip_rows=bool(flip), send_time_ns=send_time_ns,
    )


def _decode_rgb(stream_id, seq, send_time_ns, nbytes, body, payload) -> RgbExposure:
    kind = Kind.RGB_EXPOSURE
    frame_id, start, duration, height, width, pixel_format, reserved_a, reserved_b = body
    _check_side("height", height, MAX_IMAGE_SIDE, kind)
    _check_side("width", width, MAX_IMAGE_SIDE, kind)
    expected = height * width * 3
    _check_payload_limit(expected, kind)
    _check_int("frame_id", frame_id, 0, _INT64_MAX, kind)
    _check_int("duration_ns", duration, 0, _INT64_MAX, kind)
    if pixel_format != PIXEL_BGR8:
        raise _fail(Reason.FIELD, f"unsupported RGB pixel format code {pixel_format} (only bgr8 = 1)", kind)
    if reserved_a or reserved_b:
        raise _fail(Reason.FIELD, "reserved header bytes are not zero", kind)
    _check_payload(nbytes, expected, payload, kind)
    image = np.frombuffer(payload, dtype=np.uint8).reshape(height, width, 3)
    return RgbExposure(
        stream_id=stream_id, seq=seq, frame_id=frame_id, start_ns=start, duration_ns=duration, image=image,
        send_time_ns=send_time_ns,
    )


def _decode_heartbeat(stream_id, seq, send_time_ns, nbytes, body, payload) -> Heartbeat:
    kind = Kind.HEARTBEAT
    stream_kind, reserved_a, reserved_b, position, clock_ns = body
    _check_int("seq", seq, -1, _INT64_MAX, kind)
    if stream_kind not in (Kind.SPIKE_BLOCK, Kind.RGB_EXPOSURE, Kind.SHARP_FRAME):
        raise _fail(Reason.FIELD, f"heartbeat describes unknown stream kind {stream_kind}", kind)
    if reserved_a or reserved_b:
        raise _fail(Reason.FIELD, "reserved header bytes are not zero", kind)
    _check_int("position", position, -1, _INT64_MAX, kind)
    _check_payload(nbytes, 0, payload, kind)
    return Heartbeat(
        stream_id=stream_id, stream_kind=Kind(stream_kind), last_seq=seq, position=position, clock_ns=clock_ns,
        send_time_ns=send_time_ns,
    )


def _decode_sharp(stream_id, seq, send_time_ns, nbytes, body, payload) -> SharpFrame:
    kind = Kind.SHARP_FRAME
    exposure_id, t_ns, k, count, height, width, pixel_format, reserved_a, reserved_b = body
    _check_side("height", height, MAX_IMAGE_SIDE, kind)
    _check_side("width", width, MAX_IMAGE_SIDE, kind)
    _check_int("count", count, 1, MAX_OUTPUT_COUNT, kind)
    _check_int("k", k, 0, count - 1, kind)
    _check_int("exposure_id", exposure_id, 0, _INT64_MAX, kind)
    if pixel_format not in _PIXEL_FORMAT_NAMES:
        raise _fail(Reason.FIELD, f"unknown sharp-frame pixel format code {pixel_format}", kind)
    if reserved_a or reserved_b:
        raise _fail(Reason.FIELD, "reserved header bytes are not zero", kind)
    item = 1 if pixel_format == PIXEL_BGR8 else 4
    expected = height * width * 3 * item
    _check_payload_limit(expected, kind)
    _check_payload(nbytes, expected, payload, kind)
    if pixel_format == PIXEL_BGR8:
        image = np.frombuffer(payload, dtype=np.uint8).reshape(height, width, 3)
    else:
        image = np.frombuffer(payload, dtype="<f4").reshape(3, height, width)
    return SharpFrame(
        stream_id=stream_id, seq=seq, exposure_id=exposure_id, t_ns=t_ns, k=k, count=count, image=image,
        send_time_ns=send_time_ns,
    )
