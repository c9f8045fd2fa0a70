"""Recording directories (SPEC §5): writer round trip; every contract violation named by file and line."""

import json
import logging

import cv2
import numpy as np
import pytest

from spikereveal.errors import ConfigError, RecordingError
from spikereveal.kernels.packing import from_canonical, pack_frames
from spikereveal.recording import (
    Exposure,
    GroundTruthFrame,
    RecordingMeta,
    RecordingWriter,
    RgbMeta,
    SpikeMeta,
    open_recording,
)

# 1 kHz spike clock (1 ms per frame), t0 at 5 us; exposures of 10 frames every 25 frames from frame 15.
RATE_HZ, T0_NS, FRAME_NS = 1000, 5_000, 1_000_000
SPIKE_H, SPIKE_W, RGB_H, RGB_W = 8, 16, 24, 40
EXPOSURE_FRAMES, FIRST_FRAME, EXPOSURE_STEP, N_EXPOSURES = 10, 15, 25, 3


def exposure_start(j):
    return T0_NS + (FIRST_FRAME + EXPOSURE_STEP * j) * FRAME_NS


def build_recording(
    path, frame_count=100, flip_rows=True, bit_order="little", seed=0, gt_shape=(RGB_H, RGB_W)
):
    """A valid recording; returns what was written so tests can compare."""
    rng = np.random.default_rng(seed)
    frames = pack_frames(rng.random((frame_count, SPIKE_H, SPIKE_W)) < 0.3)
    images, gt_images = [], []
    spike = SpikeMeta(SPIKE_H, SPIKE_W, RATE_HZ, T0_NS, flip_rows, bit_order)
    with RecordingWriter(path, spike, RgbMeta(RGB_H, RGB_W), preset="tiny", notes="unit test") as writer:
        writer.append_spikes(frames[:37])
        writer.append_spikes(frames[37:])
        for j in range(N_EXPOSURES):
            image = rng.integers(0, 256, (RGB_H, RGB_W, 3), dtype=np.uint8)
            index = writer.add_exposure(exposure_start(j), EXPOSURE_FRAMES * FRAME_NS, image)
            images.append(image)
            for t_ns in (exposure_start(j), exposure_start(j) + EXPOSURE_FRAMES * FRAME_NS):
                sharp = rng.random((3,) + gt_shape).astype(np.float32)  # float input, rounded on write
                writer.add_ground_truth(index, t_ns, sharp)
                gt_images.append(sharp)
    return frames, images, gt_images


@pytest.fixture
def recording_dir(tmp_path):
    path = tmp_path / "rec"
    build_recording(path)
    return path


def line_of(path, needle):
    """1-based number of the first line of ``path`` containing ``needle``."""
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if needle in text:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def expect_error(recording_dir, file_name, line, match=None, **open_kwargs):
    with pytest.raises(RecordingError, match=match) as info:
        with open_recording(recording_dir, **open_kwargs) as recording:
            recording.ground_truth  # noqa: B018 (gt.csv is read on first use)
    error = info.value
    assert error.path == str(recording_dir / file_name)
    assert error.line == line
    assert str(error).startswith(f"{recording_dir / file_name}" + (f", line {line}:" if line else ":"))
    return error


def edit_meta(recording_dir, change):
    meta_path = recording_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta_path


def replace_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


# -- round trip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flip_rows,bit_order", [(False, "little"), (True, "little"), (True, "big")])
def test_writer_round_trips_exactly(tmp_path, flip_rows, bit_order):
    path = tmp_path / "rec"
    frames, images, gt_images = build_recording(path, flip_rows=flip_rows, bit_order=bit_order)

    with open_recording(path) as recording:
        spike = SpikeMeta(SPIKE_H, SPIKE_W, RATE_HZ, T0_NS, flip_rows, bit_order)
        assert recording.meta == RecordingMeta(spike, RgbMeta(RGB_H, RGB_W), "tiny", "unit test")
        assert recording.exposures == tuple(
            Exposure(j, exposure_start(j), EXPOSURE_FRAMES * FRAME_NS, f"exposures/{j:06d}.png")
            for j in range(N_EXPOSURES)
        )
        assert recording.has_ground_truth and len(recording.ground_truth) == 2 * N_EXPOSURES
        end_of_1 = exposure_start(1) + EXPOSURE_FRAMES * FRAME_NS
        assert recording.ground_truth[3] == GroundTruthFrame(1, end_of_1, "gt/000001_01.png")
        assert recording.spikes.frame_count == len(frames)
        np.testing.assert_array_equal(recording.spikes.read(0, len(frames)), frames)
        for j, image in enumerate(images):
            blurry = recording.read_exposure(j)
            assert blurry.dtype == np.float32 and blurry.shape == (3, RGB_H, RGB_W)
            np.testing.assert_array_equal(np.rint(blurry * 255).astype(np.uint8), image.transpose(2, 0, 1))
        for position, sharp in enumerate(gt_images):
            read = recording.read_ground_truth(recording.ground_truth[position])
            np.testing.assert_array_equal(read, recording.read_ground_truth(position))
            assert np.abs(read - sharp).max() <= 0.5 / 255 + 1e-6  # float input rounded to 8 bits
            np.testing.assert_array_equal(np.rint(read * 255), np.rint(sharp * 255))
        times = [frame.t_ns for frame in recording.ground_truth_for(2)]
        assert times == [exposure_start(2), exposure_start(2) + EXPOSURE_FRAMES * FRAME_NS]
        assert recording.calibration_path is None
        assert recording.incomplete_exposures() == []
    stored = (path / "spikes.dat").read_bytes()
    assert stored == from_canonical(frames, SPIKE_H, SPIKE_W, bit_order, flip_rows).tobytes()
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "spikereveal-recording" and meta["version"] == 1
    assert (path / "exposures.csv").read_text().splitlines()[0] == "index,start_ns,duration_ns,image"
    assert (path / "gt.csv").read_text().splitlines()[0] == "exposure_index,t_ns,image"


def test_exposure_windows_follow_the_spike_clock(recording_dir):
    with open_recording(recording_dir) as recording:
        window = recording.exposure_window(1)
        first = FIRST_FRAME + EXPOSURE_STEP
        assert (window.exposure_first, window.exposure_stop) == (first, first + EXPOSURE_FRAMES + 1)
        assert (window.window_first, window.window_stop) == (first - 10, first + EXPOSURE_FRAMES + 11)
        assert len(window.centers) == 7 and recording.exposure_window(1, k=3).centers.tolist() == [40, 45, 50]
        expected = recording.spikes.read(first - 10, first + EXPOSURE_FRAMES + 11)
        np.testing.assert_array_equal(recording.window_spikes(1), expected)
        assert recording.window_complete(1)
        with pytest.raises(ConfigError, match="no exposure with index 7"):
            recording.read_exposure(7)


def test_recording_without_ground_truth_or_exposures(tmp_path):
    spike = SpikeMeta(SPIKE_H, SPIKE_W, RATE_HZ, 0, False, "little")
    with RecordingWriter(tmp_path / "dark", spike, RgbMeta(RGB_H, RGB_W)) as writer:
        writer.append_spikes(np.zeros((3, SPIKE_H * SPIKE_W // 8), dtype=np.uint8))
    assert not (tmp_path / "dark" / "gt.csv").exists()
    with open_recording(tmp_path / "dark") as recording:
        assert recording.exposures == () and recording.ground_truth == () and not recording.has_ground_truth
        assert recording.meta.preset is None and recording.meta.notes == ""


def test_ground_truth_may_be_on_the_canonical_grid(tmp_path):
    build_recording(tmp_path / "rec", gt_shape=(4 * SPIKE_H, 4 * SPIKE_W))
    with open_recording(tmp_path / "rec") as recording:
        assert recording.ground_truth_shape == (32, 64)
        assert recording.read_ground_truth(0).shape == (3, 32, 64)


def test_unknown_keys_and_columns_are_ignored(recording_dir):
    edit_meta(recording_dir, lambda m: (m.update(camera={"model": "x"}), m["spike"].update(serial="123")))
    csv_path = recording_dir / "exposures.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0] + ",comment"] + [line + ",ok" for line in lines[1:]]) + "\n")
    with open_recording(recording_dir) as recording:
        assert len(recording.exposures) == N_EXPOSURES


def test_calibration_path_is_exposed(recording_dir):
    (recording_dir / "calibration.json").write_text("{}")
    with open_recording(recording_dir) as recording:
        assert recording.calibration_path == recording_dir / "calibration.json"


# -- missing files and meta.json -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["meta.json", "spikes.dat", "exposures.csv"])
def test_missing_file(recording_dir, name):
    (recording_dir / name).unlink()
    expect_error(recording_dir, name, None, match="missing")


def test_missing_directory(tmp_path):
    with pytest.raises(RecordingError, match="not a recording directory"):
        open_recording(tmp_path / "nothing")


def test_bad_json_names_the_line(recording_dir):
    meta_path = recording_dir / "meta.json"
    line = line_of(meta_path, '"width": 16')
    replace_line(meta_path, line, '    "width": 16')  # comma dropped: the next key is unexpected
    expect_error(recording_dir, "meta.json", line + 1, match="not valid JSON")


@pytest.mark.parametrize(
    "change,needle,match",
    [
        (lambda m: m.update(format="something-else"), '"format"', "not a spikereveal recording"),
        (lambda m: m.update(version=2), '"version"', "version 2 is not supported"),
        (lambda m: m.update(version="1"), '"version"', "must be an integer"),
        (lambda m: m["spike"].pop("bit_order"), '"spike"', "'bit_order' is missing"),
        (lambda m: m["spike"].pop("flip_rows"), '"spike"', "'flip_rows' is missing"),
        (lambda m: m.pop("rgb"), "{", "'rgb' is missing"),
        (lambda m: m["spike"].update(height="8"), '"height": "8"', "must be an integer"),
        (lambda m: m["spike"].update(flip_rows="true"), '"flip_rows"', "true or false"),
        (lambda m: m["spike"].update(rate_hz=True), '"rate_hz"', "must be a number"),
        (lambda m: m["spike"].update(rate_hz=-5), '"rate_hz"', "positive"),
        (lambda m: m["spike"].update(t0_ns=1.5), '"t0_ns"', "integer number of nanoseconds"),
        (lambda m: m["spike"].update(t0_ns=2**63), '"t0_ns"', "int64"),
        (lambda m: m["spike"].update(bit_order="middle"), '"bit_order"', "bit_order must be one of"),
        (lambda m: m["spike"].update(height=3, width=5), '"spike"', "not a multiple of 8"),
        (lambda m: m["rgb"].update(width=0), '"width": 0', "positive integer"),
        (lambda m: m["rgb"].update(pixel_format="rgb16"), '"pixel_format"', "pixel_format"),
        (lambda m: m.update(spike=[1]), '"spike"', "must be a JSON object"),
        (lambda m: m.update(notes=5), '"notes"', "text"),
    ],
)
def test_meta_errors_name_the_line(recording_dir, change, needle, match):
    meta_path = edit_meta(recording_dir, change)
    expect_error(recording_dir, "meta.json", line_of(meta_path, needle), match=match)


def test_meta_must_be_an_object(recording_dir):
    (recording_dir / "meta.json").write_text("[1, 2]\n")
    expect_error(recording_dir, "meta.json", 1, match="JSON object")


# -- exposures.csv ------------------------------------------------------------------------------------
def exposure_row(index, start, duration=EXPOSURE_FRAMES * FRAME_NS, image=None):
    return f"{index},{start},{duration},{image or f'exposures/{index:06d}.png'}"


@pytest.mark.parametrize(
    "line,row,match",
    [
        (1, "index,start,duration_ns,image", r"lacks column\(s\) \['start_ns'\]"),
        (3, exposure_row(1, "40005000.0"), "start_ns must be an integer"),
        (3, exposure_row(1, "4e7"), "start_ns must be an integer"),
        (3, exposure_row(1, exposure_start(1), duration="ten"), "duration_ns must be an integer"),
        (3, exposure_row(1, exposure_start(1), duration=0), "duration_ns must be positive"),
        (3, exposure_row(1, exposure_start(1)) + ",extra", "has 5 fields, the header has 4"),
        (3, exposure_row(0, exposure_start(1), image="exposures/000001.png"), "duplicate exposure index 0"),
        (3, exposure_row(1, exposure_start(0) - FRAME_NS), "not in time order"),
        (3, exposure_row(1, exposure_start(0) + 5 * FRAME_NS), "before exposure 0 ends"),
        (3, exposure_row(1, exposure_start(1), image="exposures/nope.png"), "does not exist"),
        (3, exposure_row(1, exposure_start(1), image="/tmp/abs.png"), "relative"),
        # valid: any RGB-sized PNG, and a blank line is skipped
        (3, exposure_row(1, exposure_start(1), image="gt/000000_00.png") + "\n", None),
    ],
)
def test_exposure_errors_name_the_line(recording_dir, line, row, match):
    replace_line(recording_dir / "exposures.csv", line, row)
    if match is None:
        open_recording(recording_dir).close()
    else:
        expect_error(recording_dir, "exposures.csv", line, match=match)


def test_exposure_indices_must_increase(recording_dir):
    csv_path = recording_dir / "exposures.csv"
    replace_line(csv_path, 3, exposure_row(5, exposure_start(1), image="exposures/000001.png"))
    replace_line(csv_path, 4, exposure_row(2, exposure_start(2)))
    expect_error(recording_dir, "exposures.csv", 4, match="indices must increase")


def test_empty_exposures_file(recording_dir):
    (recording_dir / "exposures.csv").write_text("")
    expect_error(recording_dir, "exposures.csv", 1, match="empty")


def test_exposure_image_of_the_wrong_size(recording_dir):
    cv2.imwrite(str(recording_dir / "exposures" / "000002.png"), np.zeros((RGB_H, RGB_W + 1, 3), np.uint8))
    match = r"000002\.png' is 41x24 \(width x height\), expected 40x24"
    expect_error(recording_dir, "exposures.csv", 4, match=match)


@pytest.mark.parametrize(
    "content,match",
    [
        (lambda p: p.write_bytes(b"not an image at all"), "not a PNG"),
        (lambda p: cv2.imwrite(str(p), np.zeros((RGB_H, RGB_W), np.uint8)), "8-bit gray PNG"),
        (lambda p: cv2.imwrite(str(p), np.zeros((RGB_H, RGB_W, 3), np.uint16)), "16-bit RGB PNG"),
    ],
)
def test_exposure_image_of_the_wrong_kind(recording_dir, content, match):
    content(recording_dir / "exposures" / "000001.png")
    expect_error(recording_dir, "exposures.csv", 3, match=match)


def test_image_broken_after_opening_is_caught_on_read(recording_dir):
    with open_recording(recording_dir) as recording:
        cv2.imwrite(str(recording_dir / "exposures" / "000001.png"), np.zeros((5, 5, 3), np.uint8))
        with pytest.raises(RecordingError, match="is 5x5") as info:
            recording.read_exposure(1)
        assert (info.value.path, info.value.line) == (str(recording_dir / "exposures.csv"), 3)
        (recording_dir / "gt" / "000000_01.png").unlink()
        with pytest.raises(RecordingError, match="does not exist") as info:
            recording.read_ground_truth(1)
        assert (info.value.path, info.value.line) == (str(recording_dir / "gt.csv"), 3)


# -- gt.csv ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "row,match",
    [
        (f"3,{exposure_start(1)},gt/000001_00.png", "exposure_index 3 is not an exposure"),
        (f"1,{exposure_start(1) - 1},gt/000001_00.png", "outside exposure 1"),
        (f"1,{exposure_start(1) + 10 * FRAME_NS + 1},gt/000001_00.png", "outside exposure 1"),
        (f"1,{exposure_start(1)}.5,gt/000001_00.png", "t_ns must be an integer"),
        (f"0,{exposure_start(0)},gt/000000_00.png", "duplicate ground truth for exposure 0"),
        (f"1,{exposure_start(1)},gt/missing.png", "does not exist"),
    ],
)
def test_ground_truth_errors_name_the_line(recording_dir, row, match):
    replace_line(recording_dir / "gt.csv", 4, row)
    with open_recording(recording_dir) as recording:  # gt.csv is only read when the ground truth is used
        assert len(recording.exposures) == N_EXPOSURES
    expect_error(recording_dir, "gt.csv", 4, match=match)


def test_ground_truth_images_share_one_size(recording_dir):
    # the canonical size is allowed, but not mixed with the RGB size
    canonical = np.zeros((4 * SPIKE_H, 4 * SPIKE_W, 3), np.uint8)
    cv2.imwrite(str(recording_dir / "gt" / "000001_01.png"), canonical)
    expect_error(recording_dir, "gt.csv", 5, match="all ground-truth images must have one size")


# -- spike data: truncation and windows, strict vs lenient ----------------------------------------------
def test_truncated_spikes_strict_and_lenient(recording_dir, caplog):
    with open(recording_dir / "spikes.dat", "ab") as handle:
        handle.write(b"\x00\x01\x02")
    match = "truncated: 3 trailing bytes after 100 whole frames"
    error = expect_error(recording_dir, "spikes.dat", None, match=match)
    assert "strict=False" in str(error)
    with caplog.at_level(logging.WARNING, logger="spikereveal.recording"):
        with open_recording(recording_dir, strict=False) as recording:
            assert recording.spikes.frame_count == 100 and recording.spikes.truncated_bytes == 3
            assert recording.incomplete_exposures() == []
    assert "truncated" in caplog.text


def test_truncated_spikes_cut_into_the_last_window(tmp_path):
    path = tmp_path / "rec"
    frames, _, _ = build_recording(path)
    data = (path / "spikes.dat").read_bytes()
    # the last exposure needs frames up to 76 + 10 margin: keep 80 whole frames and half a frame
    (path / "spikes.dat").write_bytes(data[: 80 * 16 + 8])
    expect_error(path, "spikes.dat", None, match="truncated")
    with open_recording(path, strict=False) as recording:
        assert recording.incomplete_exposures() == [2]
        assert recording.window_complete(1) and not recording.window_complete(2)
        with pytest.raises(ConfigError, match=r"exposure 2 needs spike frames \[55, 86\)"):
            recording.window_spikes(2)
        np.testing.assert_array_equal(recording.window_spikes(1), frames[30:61])


def test_exposure_window_past_the_spike_data(tmp_path):
    build_recording(tmp_path / "rec", frame_count=80)
    expect_error(tmp_path / "rec", "exposures.csv", 4, match=r"exposure 2, needs \[55, 86\).*strict=False")
    with open_recording(tmp_path / "rec", strict=False) as recording:
        assert recording.incomplete_exposures() == [2]


def test_exposure_window_before_the_spike_data(recording_dir):
    # margin 20: exposure 0 (frames 15..25) needs frame -5
    expect_error(recording_dir, "exposures.csv", 2, match=r"needs \[-5, 46\)", margin_frames=20)
    with open_recording(recording_dir, strict=False, margin_frames=20) as recording:
        assert recording.incomplete_exposures() == [0]
        assert recording.incomplete_exposures(margin_frames=10) == []


def test_margin_must_cover_the_ldn_window(recording_dir):
    with pytest.raises(ConfigError, match="at least half the LDN spike window"):
        open_recording(recording_dir, margin_frames=9)


def test_lenient_mode_still_rejects_everything_else(recording_dir):
    replace_line(recording_dir / "exposures.csv", 3, exposure_row(1, exposure_start(0)))
    expect_error(recording_dir, "exposures.csv", 3, match="not in time order", strict=False)


# -- writer --------------------------------------------------------------------------------------------
def test_writer_refuses_a_non_empty_directory(recording_dir):
    spike, rgb = SpikeMeta(8, 16, 1000, 0, False, "little"), RgbMeta(24, 40)
    with pytest.raises(ConfigError, match="not empty"):
        RecordingWriter(recording_dir, spike, rgb)
    (recording_dir / "calibration.json").write_text("{}")
    (recording_dir / "keep.txt").write_text("unrelated")
    with RecordingWriter(recording_dir, spike, rgb, overwrite=True) as writer:
        writer.append_spikes(np.zeros((1, 16), np.uint8))
    names = sorted(p.name for p in recording_dir.iterdir())
    assert names == ["exposures", "exposures.csv", "keep.txt", "meta.json", "spikes.dat"]
    with pytest.raises(ConfigError, match="not a directory"):
        RecordingWriter(recording_dir / "keep.txt", spike, rgb)


def test_writer_accepts_an_existing_empty_directory(tmp_path):
    with RecordingWriter(tmp_path, SpikeMeta(8, 16, 1000, 0, False, "little"), RgbMeta(24, 40)):
        pass
    assert open_recording(tmp_path).spikes.frame_count == 0


def test_unfinished_writer_leaves_no_meta(tmp_path):
    with pytest.raises(RuntimeError):
        spike = SpikeMeta(8, 16, 1000, 0, False, "little")
        with RecordingWriter(tmp_path / "rec", spike, RgbMeta(24, 40)) as writer:
            writer.append_spikes(np.zeros((5, 16), np.uint8))
            raise RuntimeError("simulated crash")
    expect_error(tmp_path / "rec", "meta.json", None, match="missing")


def test_writer_validates_what_it_is_given(tmp_path):
    spike = SpikeMeta(8, 16, 1000, 0, False, "little")
    image = np.zeros((24, 40, 3), np.uint8)
    with RecordingWriter(tmp_path / "rec", spike, RgbMeta(24, 40)) as writer:
        with pytest.raises(ConfigError, match=r"uint8 \(24, 40, 3\)"):
            writer.add_exposure(0, 10, np.zeros((40, 24, 3), np.uint8))
        with pytest.raises(ConfigError, match="integer"):
            writer.add_exposure(0.5, 10, image)
        assert writer.add_exposure(100, 10, image) == 0
        with pytest.raises(ConfigError, match="before exposure 0 ends"):
            writer.add_exposure(105, 10, image)
        with pytest.raises(ConfigError, match="has not been added"):
            writer.add_ground_truth(1, 100, image)
        with pytest.raises(ConfigError, match="outside exposure 0"):
            writer.add_ground_truth(0, 111, image)
        with pytest.raises(ConfigError, match="H x W = 24x40 or 32x64"):
            writer.add_ground_truth(0, 100, np.zeros((10, 10, 3), np.uint8))
        with pytest.raises(ConfigError, match=r"shape \(N, 16\)"):
            writer.append_spikes(np.zeros((2, 15), np.uint8))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SpikeMeta(0, 16, 1000, 0, False, "little"),
        lambda: SpikeMeta(3, 5, 1000, 0, False, "little"),
        lambda: SpikeMeta(8, 16, float("nan"), 0, False, "little"),
        lambda: SpikeMeta(8, 16, 1000, 0.5, False, "little"),
        lambda: SpikeMeta(8, 16, 1000, 0, "no", "little"),
        lambda: SpikeMeta(8, 16, 1000, 0, False, "lsb"),
        lambda: RgbMeta(-1, 40),
        lambda: RgbMeta(24, 40, "rgb8"),
        lambda: Exposure(-1, 0, 10, "a.png"),
        lambda: Exposure(0, 0, 0, "a.png"),
        lambda: GroundTruthFrame(0, 1.0, "a.png"),
    ],
)
def test_configs_validate_on_construction(make):
    with pytest.raises(ConfigError):
        make()


def test_numpy_scalars_become_python_values():
    meta = SpikeMeta(np.int64(8), np.int32(16), np.float64(20000.0), np.int64(7), np.bool_(True), "little")
    assert type(meta.height) is int and type(meta.flip_rows) is bool and type(meta.rate_hz) is float
    json.dumps(RecordingMeta(meta, RgbMeta(24, 40)).to_json())
