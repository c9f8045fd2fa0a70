"""Wire schema: round trips for every kind, zero-copy views, and every malformed kind rejected by reason."""

import struct

import numpy as np
import pytest

from spikereveal.stream import protocol as P
from spikereveal.stream.protocol import (
    Heartbeat,
    Kind,
    ProtocolError,
    Reason,
    RgbExposure,
    SharpFrame,
    SpikeBlock,
    decode,
    encode,
)

RNG = np.random.default_rng(7)


def _spike(**over):
    fields = dict(
        stream_id=0xDEADBEEF, seq=41, first_index=1234, t0_ns=-5_000, rate_hz=20_000.0, height=40, width=64,
        packed=RNG.integers(0, 256, (16, 40 * 64 // 8), dtype=np.uint8), bit_order="big", flip_rows=True,
        send_time_ns=987654321,
    )
    fields.update(over)
    return SpikeBlock(**fields)


def _rgb(**over):
    fields = dict(
        stream_id=7, seq=3, frame_id=12, start_ns=10**15, duration_ns=15_000_000,
        image=RNG.integers(0, 256, (160, 256, 3), dtype=np.uint8), send_time_ns=5,
    )
    fields.update(over)
    return RgbExposure(**fields)


def _heartbeat(**over):
    fields = dict(stream_id=9, stream_kind=Kind.SPIKE_BLOCK, last_seq=-1, position=-1, clock_ns=123, send_time_ns=4)
    fields.update(over)
    return Heartbeat(**fields)


def _sharp(image=None, **over):
    if image is None:
        image = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    fields = dict(stream_id=1, seq=0, exposure_id=5, t_ns=99, k=6, count=7, image=image)
    fields.update(over)
    return SharpFrame(**fields)


def _wire(message):
    """What a receiver gets from recv_multipart(copy=True): three bytes objects."""
    return [bytes(part) for part in encode(message)]


SAMPLES = {
    "spike": _spike,
    "rgb": _rgb,
    "heartbeat": _heartbeat,
    "sharp_u8": _sharp,
    "sharp_f32": lambda: _sharp(RNG.random((3, 40, 48), dtype=np.float32)),
}


def _same(a, b):
    assert type(a) is type(b)
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
        else:
            assert x == y, name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_every_kind(name):
    message = SAMPLES[name]()
    parts = _wire(message)
    assert parts[0] == P.TOPICS[message.kind]
    assert len(parts[1]) == P.HEADER_SIZES[message.kind]
    _same(message, decode(parts))


def test_spike_header_fields_survive():
    block = decode(_wire(_spike(bit_order="little", flip_rows=False, first_index=0, seq=0)))
    assert (block.bit_order, block.flip_rows, block.first_index, block.seq) == ("little", False, 0, 0)
    assert block.frame_count == 16 and block.stop_index == 16
    assert block.packed.shape == (16, 320)


def test_decode_is_zero_copy_on_writable_buffers():
    parts = [bytearray(p) for p in _wire(_spike())]
    block = decode(parts)
    assert np.shares_memory(block.packed, np.frombuffer(parts[2], np.uint8))
    parts[2][0] ^= 0xFF  # the view sees changes of the received buffer: no copy was made
    assert block.packed[0, 0] == parts[2][0]


def test_decode_accepts_zmq_frames_without_copy():
    zmq = pytest.importorskip("zmq")
    frames = [zmq.Frame(bytes(p)) for p in encode(_rgb())]
    message = decode(frames)
    assert message.image.shape == (160, 256, 3)
    assert np.shares_memory(message.image, np.frombuffer(frames[2].buffer, np.uint8))


def test_encode_payload_is_a_view_not_a_copy():
    block = _spike()
    payload = encode(block)[2]
    assert np.shares_memory(np.frombuffer(payload, np.uint8), block.packed)


# -- malformed messages -------------------------------------------------------------------------------
def _patch_header(parts, fmt, offset, value):
    header = bytearray(parts[1])
    struct.pack_into(fmt, header, offset, value)
    return [parts[0], bytes(header), parts[2]]


COMMON = 36  # size of the common header part


def _rejects(parts, reason, kind="any"):
    with pytest.raises(ProtocolError) as info:
        decode(parts)
    assert info.value.reason == reason, str(info.value)
    if kind != "any":
        assert info.value.kind == kind
    return info.value


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_are_rejected(seed):
    rng = np.random.default_rng(seed)
    parts = [rng.bytes(int(rng.integers(0, 8))), rng.bytes(int(rng.integers(0, 120))), rng.bytes(64)]
    with pytest.raises(ProtocolError) as info:
        decode(parts)
    assert info.value.reason in (Reason.HEADER_SIZE, Reason.MAGIC)


@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_wrong_part_count(count):
    parts = (_wire(_spike()) * 2)[:count]
    _rejects(parts, Reason.PARTS)
    _rejects(b"not a list", Reason.PARTS)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_wrong_magic_version_kind(name):
    parts = _wire(SAMPLES[name]())
    _rejects(_patch_header(parts, "<4s", 0, b"SPKX"), Reason.MAGIC)
    _rejects(_patch_header(parts, "<H", 4, P.PROTOCOL_VERSION + 1), Reason.VERSION)
    _rejects(_patch_header(parts, "<H", 6, 99), Reason.KIND)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_header_size_and_topic(name):
    message = SAMPLES[name]()
    parts = _wire(message)
    _rejects([parts[0], parts[1][:-1], parts[2]], Reason.HEADER_SIZE, message.kind)
    _rejects([parts[0], parts[1] + b"\0", parts[2]], Reason.HEADER_SIZE, message.kind)
    _rejects([parts[0], parts[1][:20], parts[2]], Reason.HEADER_SIZE, None)
    _rejects([b"bogus", parts[1], parts[2]], Reason.TOPIC, message.kind)


@pytest.mark.parametrize("name", ["spike", "rgb", "sharp_u8", "sharp_f32"])
def test_header_lying_about_payload_size_and_truncated_payload(name):
    message = SAMPLES[name]()
    parts = _wire(message)
    declared = struct.unpack_from("<Q", parts[1], 28)[0]
    _rejects(_patch_header(parts, "<Q", 28, declared - 1), Reason.PAYLOAD_SIZE, message.kind)
    _rejects(_patch_header(parts, "<Q", 28, 2**40), Reason.PAYLOAD_SIZE, message.kind)
    _rejects([parts[0], parts[1], parts[2][:-1]], Reason.TRUNCATED, message.kind)
    _rejects([parts[0], parts[1], b""], Reason.TRUNCATED, message.kind)
    _rejects([parts[0], parts[1], parts[2] + b"\0"], Reason.PAYLOAD_SIZE, message.kind)


def test_heartbeat_with_payload_is_rejected():
    parts = _wire(_heartbeat())
    _rejects([parts[0], parts[1], b"x"], Reason.PAYLOAD_SIZE, Kind.HEARTBEAT)


# offsets of body fields (after the 36-byte common part)
SPIKE_FIELDS = {"first": ("<q", 0), "count": ("<I", 8), "height": ("<I", 12), "width": ("<I", 16),
                "rate": ("<d", 20), "bit": ("<B", 36), "flip": ("<B", 37), "enc": ("<B", 38), "res": ("<B", 39)}


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("height", 0, Reason.GEOMETRY),
        ("height", 10**9, Reason.GEOMETRY),
        ("width", P.MAX_SPIKE_SIDE + 1, Reason.GEOMETRY),
        ("count", 0, Reason.GEOMETRY),
        ("count", P.MAX_BLOCK_FRAMES + 1, Reason.GEOMETRY),
        ("first", -1, Reason.FIELD),
        ("rate", 0.0, Reason.FIELD),
        ("rate", float("nan"), Reason.FIELD),
        ("rate", 1e12, Reason.FIELD),
        ("bit", 2, Reason.FIELD),
        ("flip", 2, Reason.FIELD),
        ("enc", 1, Reason.FIELD),
        ("res", 1, Reason.FIELD),
    ],
)
def test_spike_fields_out_of_domain(field, value, reason):
    fmt, offset = SPIKE_FIELDS[field]
    _rejects(_patch_header(_wire(_spike()), fmt, COMMON + offset, value), reason, Kind.SPIKE_BLOCK)


def test_spike_geometry_not_packable():
    parts = _patch_header(_wire(_spike()), "<I", COMMON + 12, 41)
    _rejects(_patch_header(parts, "<I", COMMON + 16, 63), Reason.GEOMETRY, Kind.SPIKE_BLOCK)  # 41*63 bits


@pytest.mark.parametrize(
    "fmt, offset, value, reason",
    [
        ("<I", 24, 0, Reason.GEOMETRY),  # height
        ("<I", 28, 2**31, Reason.GEOMETRY),  # width
        ("<q", 0, -3, Reason.FIELD),  # frame_id
        ("<q", 16, -1, Reason.FIELD),  # duration
        ("<B", 32, 7, Reason.FIELD),  # pixel format
    ],
)
def test_rgb_fields_out_of_domain(fmt, offset, value, reason):
    _rejects(_patch_header(_wire(_rgb()), fmt, COMMON + offset, value), reason, Kind.RGB_EXPOSURE)


def test_absurd_image_geometry_rejected_before_the_payload():
    # 16384 x 16384 x 3 is within the side limit but over the payload limit
    parts = _patch_header(_wire(_rgb()), "<I", COMMON + 24, P.MAX_IMAGE_SIDE)
    parts = _patch_header(parts, "<I", COMMON + 28, P.MAX_IMAGE_SIDE)
    _rejects(parts, Reason.GEOMETRY, Kind.RGB_EXPOSURE)


@pytest.mark.parametrize(
    "fmt, offset, value, reason",
    [("<H", 16, 7, Reason.FIELD), ("<H", 18, 0, Reason.FIELD), ("<B", 28, 3, Reason.FIELD),
     ("<I", 20, 0, Reason.GEOMETRY)],  # k >= count, count 0, pixel format, height 0
)
def test_sharp_fields_out_of_domain(fmt, offset, value, reason):
    _rejects(_patch_header(_wire(_sharp()), fmt, COMMON + offset, value), reason, Kind.SHARP_FRAME)


def test_negative_seq_only_allowed_for_heartbeats():
    _rejects(_patch_header(_wire(_spike()), "<q", 12, -1), Reason.FIELD, Kind.SPIKE_BLOCK)
    assert decode(_wire(_heartbeat(last_seq=-1))).last_seq == -1
    _rejects(_patch_header(_wire(_heartbeat()), "<q", 12, -2), Reason.FIELD, Kind.HEARTBEAT)
    _rejects(_patch_header(_wire(_heartbeat()), "<H", COMMON, 3), Reason.FIELD, Kind.HEARTBEAT)


def test_encode_refuses_what_decode_would_reject():
    with pytest.raises(ProtocolError):
        encode(_spike(height=41))  # packed shape does not match the geometry
    with pytest.raises(ProtocolError):
        encode(_spike(bit_order="middle"))
    with pytest.raises(ProtocolError):
        encode(_rgb(image=np.zeros((4, 4), np.uint8)))
    with pytest.raises(ProtocolError):
        encode(_sharp(k=7))
    with pytest.raises(ProtocolError):
        encode(_spike(seq=-1))
    with pytest.raises(TypeError):
        encode("hello")


def test_protocol_module_does_not_import_zmq():
    import subprocess
    import sys

    code = "import sys, spikereveal.stream.protocol, spikereveal.stream.sync; print('zmq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
