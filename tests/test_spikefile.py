"""`.dat` spike files: layout against an independent numpy writer, memory-mapped range reads, USB rows."""

import numpy as np
import pytest

from spikereveal.errors import ConfigError, FormatError
from spikereveal.kernels.packing import pack_frames, unpack_frames
from spikereveal.spikefile import SpikeFile, SpikeFileWriter, read_dat, write_dat
from twins import reference_dat_bytes

LAYOUTS = [(flip, order) for flip in (False, True) for order in ("little", "big")]
# (H, W): W a multiple of 8; W not a multiple of 8 (H*W still is); tall and thin; the rsb sensor
GEOMETRIES = [(5, 8), (4, 6), (8, 3), (250, 400)]


def random_frames(rng, n, height, width, density=0.3):
    return (rng.random((n, height, width)) < density).astype(np.uint8)


@pytest.mark.parametrize("height,width", GEOMETRIES)
@pytest.mark.parametrize("flip_rows,bit_order", LAYOUTS)
def test_write_matches_spec_layout_and_reads_back(tmp_path, height, width, flip_rows, bit_order):
    rng = np.random.default_rng(height * 1000 + width)
    frames = random_frames(rng, 3 if height > 100 else 9, height, width)
    path = tmp_path / "spikes.dat"

    write_dat(path, pack_frames(frames), height, width, flip_rows, bit_order)

    assert path.read_bytes() == reference_dat_bytes(frames, flip_rows, bit_order)
    packed = read_dat(path, height, width, flip_rows, bit_order)
    np.testing.assert_array_equal(unpack_frames(packed, height, width), frames)
    with SpikeFile(path, height, width, flip_rows, bit_order) as spike_file:
        assert len(spike_file) == spike_file.frame_count == len(frames)
        assert spike_file.truncated_bytes == 0
        np.testing.assert_array_equal(spike_file.read(2, 3), pack_frames(frames[2:3]))


@pytest.mark.parametrize("flip_rows,bit_order", LAYOUTS)
def test_reads_a_file_from_the_reference_writer(tmp_path, flip_rows, bit_order):
    rng = np.random.default_rng(1)
    frames = random_frames(rng, 6, 6, 12)
    path = tmp_path / "ref.dat"
    path.write_bytes(reference_dat_bytes(frames, flip_rows, bit_order))
    np.testing.assert_array_equal(read_dat(path, 6, 12, flip_rows, bit_order), pack_frames(frames))


def test_the_wrong_orientation_or_bit_order_reads_different_frames(tmp_path):
    frames = random_frames(np.random.default_rng(2), 4, 6, 16)
    path = tmp_path / "s.dat"
    write_dat(path, pack_frames(frames), 6, 16, flip_rows=True, bit_order="big")
    right = read_dat(path, 6, 16, True, "big")
    assert not np.array_equal(read_dat(path, 6, 16, False, "big"), right)
    assert not np.array_equal(read_dat(path, 6, 16, True, "little"), right)


@pytest.mark.parametrize("flip_rows,bit_order", [(False, "little"), (True, "big")])
def test_memory_mapped_range_reads_of_a_large_file(tmp_path, flip_rows, bit_order):
    height, width, count = 40, 64, 3000  # ~1 MB
    rng = np.random.default_rng(3)
    frames = random_frames(rng, count, height, width)
    packed = pack_frames(frames)
    path = tmp_path / "large.dat"
    path.write_bytes(reference_dat_bytes(frames, flip_rows, bit_order))

    spike_file = SpikeFile(path, height, width, flip_rows, bit_order)
    assert spike_file._memmap is None  # nothing mapped, let alone read, before the first request
    for _ in range(20):
        start = int(rng.integers(0, count))
        stop = int(rng.integers(start, min(count, start + 300) + 1))
        block = spike_file.read(start, stop)
        assert type(block) is np.ndarray and block.flags.writeable and block.flags.c_contiguous
        np.testing.assert_array_equal(block, packed[start:stop])
    assert isinstance(spike_file._memmap, np.memmap)
    np.testing.assert_array_equal(spike_file[count - 1], packed[-1])
    np.testing.assert_array_equal(spike_file[-2], packed[-2])
    np.testing.assert_array_equal(spike_file[10:25], packed[10:25])
    out = np.empty((5, spike_file.frame_bytes), dtype=np.uint8)
    assert spike_file.read(100, 105, out=out) is out
    np.testing.assert_array_equal(out, packed[100:105])
    blocks = list(spike_file.blocks(128, start=7, stop=1000))
    assert [first for first, _ in blocks] == list(range(7, 1000, 128))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), packed[7:1000])
    spike_file.close()
    with pytest.raises(ConfigError, match="closed"):
        spike_file.read(0, 1)


@pytest.mark.parametrize("height,width,row_bits", [(6, 400, 416), (8, 10, 13), (4, 12, 16)])
@pytest.mark.parametrize("flip_rows,bit_order", LAYOUTS)
def test_usb_rows_drop_their_padding_columns(tmp_path, height, width, row_bits, flip_rows, bit_order):
    rng = np.random.default_rng(row_bits)
    frames = random_frames(rng, 5, height, width)
    junk = random_frames(rng, 5, height, row_bits - width, density=0.5)  # must never leak into pixels
    path = tmp_path / "usb.dat"
    path.write_bytes(reference_dat_bytes(frames, flip_rows, bit_order, row_bits, junk))

    with SpikeFile(path, height, width, flip_rows, bit_order, row_bits=row_bits) as spike_file:
        assert spike_file.frame_count == 5 and spike_file.truncated_bytes == 0
        assert spike_file.stored_frame_bytes == height * row_bits // 8
        np.testing.assert_array_equal(spike_file.read(0, 5), pack_frames(frames))
        np.testing.assert_array_equal(spike_file.read(3, 4), pack_frames(frames[3:4]))
    whole = read_dat(path, height, width, flip_rows, bit_order, row_bits)
    np.testing.assert_array_equal(whole, pack_frames(frames))


@pytest.mark.parametrize("row_bits", [399, 0, 2.5, True])
def test_usb_row_bits_must_hold_the_row(tmp_path, row_bits):
    path = tmp_path / "usb.dat"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="row_bits"):
        SpikeFile(path, 8, 400, True, "little", row_bits=row_bits)


def test_row_bits_must_make_whole_bytes(tmp_path):
    path = tmp_path / "usb.dat"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="whole number of bytes"):
        SpikeFile(path, 3, 8, False, row_bits=9)


def test_one_frame_file(tmp_path):
    frames = random_frames(np.random.default_rng(4), 1, 4, 6)
    path = tmp_path / "one.dat"
    write_dat(path, pack_frames(frames)[0], 4, 6, True)  # a single frame may be given 1-D
    assert path.stat().st_size == 3
    with SpikeFile(path, 4, 6, True) as spike_file:
        assert spike_file.frame_count == 1
        np.testing.assert_array_equal(spike_file.read(0, 1), pack_frames(frames))
        with pytest.raises(ConfigError, match=r"\[1, 2\).*\[0, 1\)"):
            spike_file.read(1, 2)


def test_empty_file_has_no_frames(tmp_path):
    path = tmp_path / "empty.dat"
    write_dat(path, np.empty((0, 12), dtype=np.uint8), 8, 12, False)
    assert path.stat().st_size == 0
    with SpikeFile(path, 8, 12, False) as spike_file:
        assert spike_file.frame_count == 0 and spike_file.truncated_bytes == 0
        assert spike_file.read(0, 0).shape == (0, 12)
        assert list(spike_file.blocks(4)) == []
        with pytest.raises(ConfigError, match=str(path)):
            spike_file.read(0, 1)
    assert read_dat(path, 8, 12, False).shape == (0, 12)


def test_file_smaller_than_one_frame(tmp_path):
    path = tmp_path / "tiny.dat"
    path.write_bytes(b"\x01\x02\x03")
    with SpikeFile(path, 8, 8, False) as spike_file:
        assert spike_file.frame_count == 0 and spike_file.truncated_bytes == 3


def test_truncated_trailing_frame_is_reported_and_never_served(tmp_path):
    frames = random_frames(np.random.default_rng(5), 4, 8, 8)
    path = tmp_path / "cut.dat"
    path.write_bytes(reference_dat_bytes(frames, True, "little") + b"\xff\xff\xff")
    with SpikeFile(path, 8, 8, True) as spike_file:
        assert spike_file.frame_count == 4 and spike_file.truncated_bytes == 3
        np.testing.assert_array_equal(spike_file.read(0, 4), pack_frames(frames))
        with pytest.raises(ConfigError):
            spike_file.read(0, 5)
    with pytest.raises(FormatError, match=r"cut\.dat.*partial frame \(3 of 8 bytes\)"):
        read_dat(path, 8, 8, True)
    np.testing.assert_array_equal(read_dat(path, 8, 8, True, allow_truncated=True), pack_frames(frames))


def test_writer_appends_blocks_in_file_layout(tmp_path):
    frames = random_frames(np.random.default_rng(6), 50, 6, 20)
    packed = pack_frames(frames)
    path = tmp_path / "blocks.dat"
    with SpikeFileWriter(path, 6, 20, flip_rows=True, bit_order="big") as writer:
        for start in range(0, 50, 16):
            writer.append(packed[start : start + 16])
        assert writer.frames_written == 50
        with pytest.raises(ConfigError, match=r"shape \(N, 15\)"):
            writer.append(packed[:, :10])
        with pytest.raises(ConfigError, match="uint8"):
            writer.append(packed.astype(np.int16))
    assert writer.closed
    assert path.read_bytes() == reference_dat_bytes(frames, True, "big")
    with pytest.raises(ConfigError, match="closed"):
        writer.append(packed[:1])


@pytest.mark.parametrize("flip_rows", [None, "yes", 1, 0])
def test_orientation_is_never_implied(tmp_path, flip_rows):
    path = tmp_path / "s.dat"
    path.write_bytes(bytes(8))
    with pytest.raises(ConfigError, match="flip_rows"):
        SpikeFile(path, 8, 8, flip_rows)
    with pytest.raises(ConfigError, match="flip_rows"):
        SpikeFileWriter(tmp_path / "w.dat", 8, 8, flip_rows)


def test_bad_arguments_are_clear_errors(tmp_path):
    path = tmp_path / "s.dat"
    path.write_bytes(bytes(16))
    with pytest.raises(FormatError, match="does not exist"):
        SpikeFile(tmp_path / "missing.dat", 8, 8, False)
    with pytest.raises(FormatError, match="not a regular file"):
        SpikeFile(tmp_path, 8, 8, False)
    with pytest.raises(ConfigError, match="bit_order"):
        SpikeFile(path, 8, 8, False, bit_order="msb")
    with pytest.raises(ConfigError, match="multiple of 8"):
        SpikeFile(path, 3, 5, False)
    with SpikeFile(path, 8, 8, False) as spike_file:
        with pytest.raises(ConfigError, match=r"\[1, 0\)"):
            spike_file.read(1, 0)
        with pytest.raises(ConfigError, match="integer"):
            spike_file.read(0.0, 1)
        with pytest.raises(ConfigError, match="step"):
            spike_file[::2]
        with pytest.raises(ConfigError, match="shape"):
            spike_file.read(0, 2, out=np.empty((1, 8), dtype=np.uint8))
