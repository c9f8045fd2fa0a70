"""ONNX export: checker, uint8 I/O at every precision, ORT == torch at fp32 (to 1 LSB), fp16/int8 within
measured tolerances, metadata, precision, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs torch: the [train] extra")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402

from engines_support import (  # noqa: E402
    IMAGE_H,
    IMAGE_W,
    assert_not_flat,
    assert_within_lsb,
    exposure_inputs,
    make_recording,
    psnr,
    random_ldn,
    save_random_checkpoint,
)
from spikereveal.engines.cache import file_sha256  # noqa: E402
from spikereveal.engines.export import (  # noqa: E402
    ExportConfig,
    WindowCalibrationReader,
    check_onnx_precision,
    export_checkpoint,
    export_ldn,
    onnx_graph_precision,
    read_onnx_metadata,
    resolve_model_path,
)
from spikereveal.engines.ldn import ExposureLDN  # noqa: E402
from spikereveal.engines.runners import InputShape  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from twins import reference_sharp8  # noqa: E402

K = 3
SHAPE = InputShape(K, IMAGE_H, IMAGE_W)
# Tolerances on the uint8 output, in LSB (1/255), against the fp32 torch graph (ExposureLDN); measured on
# this random net over 10 windows (two nets, two geometries), the bounds leave margin:
# fp32: another float summation order only flips values sitting on a rounding boundary (max 1 LSB, <= 4e-5
# of the values); fp16: max 1 LSB, <= 4.2% of the values; int8 Q/DQ: max 5 LSB, PSNR >= 50.2 dB.
FP32_MAX_LSB, FP32_MAX_FRACTION = 1, 1e-3
FP16_MAX_LSB, FP16_MAX_FRACTION = 2, 0.1
INT8_MAX_LSB, INT8_MIN_PSNR_DB = 8, 45.0


def random_windows(shape: InputShape, count: int, seed: int = 1):
    """``count`` (image, spikes) uint8 windows of ``shape``, as the pipeline feeds the deployed graph."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield exposure_inputs(shape, int(rng.integers(1 << 31)))


def torch_reference(model, image, spikes):
    """The fp32 deployed graph in torch eager: (K, H, W, 3) uint8."""
    with torch.no_grad():
        return ExposureLDN(model).eval()(torch.from_numpy(image), torch.from_numpy(spikes)).numpy()


def ort_run(path, image, spikes):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["sharp"], {"image": image, "spikes": spikes})[0]


@pytest.fixture(scope="module")
def model():
    return random_ldn(seed=3)


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("exports")
    paths = {}
    for precision in ("fp32", "fp16", "int8"):
        config = ExportConfig(precision=precision, k=K, height=IMAGE_H, width=IMAGE_W, calibration_windows=4)
        calibration = random_windows(SHAPE, 6, seed=7) if precision == "int8" else None
        paths[precision] = export_ldn(model, directory / f"{precision}.onnx", config, source_sha256="ab" * 32,
                                      calibration=calibration)
    return paths


def test_fp32_export_passes_checker_and_matches_torch(model, exports):
    proto = onnx.load(str(exports["fp32"]))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image", "spikes"]
    assert [o.name for o in proto.graph.output] == ["sharp"]
    for seed in (11, 14):
        image, spikes = next(random_windows(SHAPE, 1, seed=seed))
        out = ort_run(exports["fp32"], image, spikes)
        assert out.shape == SHAPE.sharp and out.dtype == np.uint8
        expected = torch_reference(model, image, spikes)
        assert_not_flat(expected)
        assert_within_lsb(out, expected, FP32_MAX_LSB, FP32_MAX_FRACTION)
        # and the deployed graph is the float network's output, clipped and rounded (kernels.convert.planar_to_bgr8)
        assert_within_lsb(out, reference_sharp8(model, image, spikes), FP32_MAX_LSB, FP32_MAX_FRACTION)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_io_is_uint8_and_graph_has_the_asked_precision(exports, precision):
    proto = onnx.load(str(exports[precision]))
    shapes = {}
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.UINT8, value.name
        shapes[value.name] = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
    assert shapes == {"image": SHAPE.image, "spikes": SHAPE.spikes, "sharp": SHAPE.sharp}
    assert onnx_graph_precision(proto) == precision
    onnx.checker.check_model(proto, full_check=True)


def test_fp16_within_tolerance_of_torch(model, exports):
    image, spikes = next(random_windows(SHAPE, 1, seed=12))
    reference = torch_reference(model, image, spikes)
    assert_not_flat(reference)
    out = ort_run(exports["fp16"], image, spikes)
    assert out.dtype == np.uint8
    assert_within_lsb(out, reference, FP16_MAX_LSB, FP16_MAX_FRACTION)
    assert not np.array_equal(out, ort_run(exports["fp32"], image, spikes))  # really a different graph


def test_int8_within_tolerance_of_fp32(model, exports):
    image, spikes = next(random_windows(SHAPE, 1, seed=13))
    reference = torch_reference(model, image, spikes)
    assert_not_flat(reference)
    out = ort_run(exports["int8"], image, spikes)
    assert out.dtype == np.uint8
    assert_within_lsb(out, reference, INT8_MAX_LSB)
    assert psnr(out, reference, peak=255.0) >= INT8_MIN_PSNR_DB
    assert not np.array_equal(out, reference)


@pytest.mark.parametrize("name", ["default", "lite"])
def test_int8_of_a_firing_gain_student_holds_on_a_sensor_it_was_not_calibrated_on(name, tmp_path):
    """The shipped students scale their spikes by 1 / (the exposure's firing gain) before the first spike conv.
    Calibrated at one gain, the int8 graph must not clip at another (threshold x4: a quarter of the spikes, four
    times the scale): the scale is applied after that conv's weights and stays float, as does the output
    conversion. Measured (random windows): before 10.4 (default) / 11.1 dB (lite) against fp32 at the x4
    sensor, 41.3 / 41.8 dB at the calibration sensor; now 35.5 / 33.8 and 45.8 / 46.7 dB."""
    from spikereveal.engines.checkpoint import load_checkpoint
    from spikereveal.engines.ldn import firing_gain

    model, _ = load_checkpoint(resolve_model_path(name), expected_kind="ldn")
    assert model.config.spike_norm == "firing-gain"
    model.eval()
    config = ExportConfig(precision="int8", k=K, height=IMAGE_H, width=IMAGE_W, calibration_windows=4)
    rng = np.random.default_rng(2)
    calibration = [exposure_inputs(SHAPE, int(rng.integers(1 << 31)), spike_rate=0.25) for _ in range(4)]
    path = export_ldn(model, tmp_path / "int8.onnx", config, calibration=calibration)
    image, spikes = exposure_inputs(SHAPE, 21, spike_rate=0.25)
    moved = torch_reference(model, image, np.roll(spikes, 7, axis=-1))
    for rate, min_psnr_db in ((0.25, 42.0), (0.0625, 30.0)):  # the calibration sensor, then 4 x its threshold
        image, spikes = exposure_inputs(SHAPE, 21, spike_rate=rate)
        with torch.no_grad():  # the two inputs really are two sensors for the student
            gain = float(firing_gain(torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255.0,
                                     torch.from_numpy(spikes).float() / 255.0))
        assert gain == pytest.approx(2 * rate, rel=0.05)
        reference = torch_reference(model, image, spikes)
        if rate == 0.25:  # and the output depends on the spikes (other spikes: ~19.5 dB apart)
            assert psnr(moved, reference, peak=255.0) < 25.0
        assert psnr(ort_run(path, image, spikes), reference, peak=255.0) >= min_psnr_db, rate


def test_metadata_round_trip(model, exports):
    meta = read_onnx_metadata(exports["int8"])
    assert meta["precision"] == "int8"
    assert meta["color_order"] == "bgr"
    assert meta["io"].startswith("uint8") and int(meta["spike_level"]) == 255
    assert meta["inputs"] == "image,spikes" and meta["outputs"] == "sharp"
    assert int(meta["spike_window"]) == model.config.spike_frames
    assert json.loads(meta["network_config"]) == model.config.to_dict()
    assert meta["source_sha256"] == "ab" * 32
    assert (int(meta["batch"]), int(meta["height"]), int(meta["width"])) == (K, IMAGE_H, IMAGE_W)
    assert int(meta["calibration_windows"]) == 4
    from spikereveal import __version__

    assert meta["version"] == __version__


def test_dynamic_export_runs_other_shapes(model, tmp_path):
    path = export_ldn(model, tmp_path / "dyn.onnx", ExportConfig(dynamic=True))
    assert read_onnx_metadata(path)["height"] == "dynamic"
    proto = onnx.load(str(path))
    dims = {v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
            for v in list(proto.graph.input) + list(proto.graph.output)}
    assert dims == {"image": (1, "height", "width", 3), "spikes": ("batch", 21, "spike_height", "spike_width"),
                    "sharp": ("batch", "height", "width", 3)}
    for shape in (InputShape(2, 32, 48), InputShape(1, 64, 128)):
        image, spikes = next(random_windows(shape, 1))
        out = ort_run(path, image, spikes)
        assert out.shape == shape.sharp and out.dtype == np.uint8
        expected = torch_reference(model, image, spikes)
        assert_not_flat(expected)
        assert_within_lsb(out, expected, FP32_MAX_LSB, FP32_MAX_FRACTION)


def test_export_checkpoint_hashes_source_and_calibrates_on_recordings(tmp_path):
    checkpoint = save_random_checkpoint(tmp_path / "ldn.pt", seed=5)
    recording = make_recording(tmp_path / "rec", exposures=2)
    config = ExportConfig(precision="int8", k=K, height=IMAGE_H, width=IMAGE_W, calibration_windows=8)
    path = export_checkpoint(checkpoint, tmp_path / "int8.onnx", config, calib_recordings=[recording])
    meta = read_onnx_metadata(path)
    assert meta["source_sha256"] == file_sha256(checkpoint)
    assert int(meta["calibration_windows"]) == 2  # every complete exposure window of the recording
    assert onnx_graph_precision(onnx.load(str(path))) == "int8"


def test_calibration_refuses_other_geometry(tmp_path):
    checkpoint = save_random_checkpoint(tmp_path / "ldn.pt")
    recording = make_recording(tmp_path / "rec", exposures=1)
    config = ExportConfig(precision="int8", k=K, height=IMAGE_H * 2, width=IMAGE_W, calibration_windows=2)
    with pytest.raises(ConfigError, match="geometry"):
        export_checkpoint(checkpoint, tmp_path / "x.onnx", config, calib_recordings=[recording])


def test_config_errors(model, tmp_path):
    with pytest.raises(ConfigError, match="--image-height"):
        ExportConfig()
    with pytest.raises(ConfigError, match="not both"):
        ExportConfig(height=64, width=96, dynamic=True)
    with pytest.raises(ConfigError, match="multiples of 4"):
        ExportConfig(height=66, width=96)
    with pytest.raises(ConfigError, match="precision"):
        ExportConfig(precision="fp8", height=64, width=96)
    with pytest.raises(ConfigError, match="--calib"):
        export_ldn(model, tmp_path / "x.onnx", ExportConfig(precision="int8", height=64, width=96))
    with pytest.raises(ConfigError, match="--model"):
        resolve_model_path(tmp_path / "missing.pt")


def test_default_model_missing_says_pass_model(monkeypatch):
    import spikereveal.engines.export as export

    monkeypatch.setattr(export, "default_model_path", lambda: None)

    monkeypatch.setattr(export, "default_onnx_path", lambda: None)
    with pytest.raises(ConfigError, match="--model"):
        export.resolve_model_path(None)


def test_precision_metadata_check():
    check_onnx_precision({"precision": "fp16"}, "fp16", "m.onnx")
    with pytest.raises(ConfigError, match="fp16 export but int8"):
        check_onnx_precision({"precision": "fp16"}, "int8", "m.onnx")


def test_calibration_reader_limits_and_ends():
    reader = WindowCalibrationReader(random_windows(InputShape(1, 8, 8), 5), limit=3)
    items = list(reader)
    assert len(items) == 3 and reader.count == 3 and reader.get_next() is None
    assert set(items[0]) == {"image", "spikes"}
    assert items[0]["image"].dtype == items[0]["spikes"].dtype == np.uint8
    assert items[0]["image"].shape == (1, 8, 8, 3) and items[0]["spikes"].shape == (1, 21, 2, 2)


def test_calibration_reader_refuses_float_windows(model, tmp_path):
    """Windows of the old float interface (0..1 image, 0/1 spikes) would calibrate the wrong ranges: refused."""
    shape = InputShape(1, 8, 8)
    image, spikes = next(random_windows(shape, 1))
    float_image = image.astype(np.float32) / 255
    float_spikes = (spikes > 0).astype(np.float32)
    for window in [(float_image, spikes), (image, float_spikes), {"image": float_image, "spikes": float_spikes}]:
        for reader_shape in (None, shape):
            reader = WindowCalibrationReader(iter([window]), shape=reader_shape)
            with pytest.raises(ConfigError, match="must be uint8"):
                reader.get_next()
            assert reader.count == 0
    # an export stops on them too, before quantizing anything
    with pytest.raises(ConfigError, match="must be uint8"):
        export_ldn(model, tmp_path / "x.onnx",
                   ExportConfig(precision="int8", k=1, height=8, width=8, calibration_windows=1),
                   calibration=[(float_image, float_spikes)])


def test_cli_export(tmp_path, monkeypatch, capsys):
    from spikereveal import cli

    checkpoint = save_random_checkpoint(tmp_path / "ldn.pt")
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("export",))
    out = tmp_path / "m.onnx"
    rc = cli.main(["export", "--model", str(checkpoint), "--out", str(out), "--precision", "fp16",
                   "--batch", "2", "--height", "32", "--width", "48"])
    assert rc == 0 and "fp16" in capsys.readouterr().out
    assert read_onnx_metadata(out)["batch"] == "2"
    assert cli.main(["export", "--model", str(checkpoint), "--out", str(out)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_cli_int8_export_takes_grid_from_calibration_recording(tmp_path, monkeypatch, capsys):
    from spikereveal import cli

    checkpoint = save_random_checkpoint(tmp_path / "ldn.pt")
    recording = make_recording(tmp_path / "rec", exposures=2)
    cache = tmp_path / "calib.npz"
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("export",))
    out = tmp_path / "int8.onnx"
    rc = cli.main(["export", "--model", str(checkpoint), "--out", str(out), "--precision", "int8",
                   "--calib", str(recording), "--calib-cache", str(cache), "--batch", str(K)])
    assert rc == 0, capsys.readouterr().err
    assert "calibrated on 2 windows" in capsys.readouterr().out
    meta = read_onnx_metadata(out)
    assert (int(meta["height"]), int(meta["width"])) == (IMAGE_H, IMAGE_W)
    assert cache.is_file()


def test_calibration_reader_refuses_other_shapes():
    reader = WindowCalibrationReader(random_windows(InputShape(1, 8, 8), 1), shape=InputShape(1, 16, 16))
    with pytest.raises(ConfigError, match="geometry"):
        reader.get_next()
    reader = WindowCalibrationReader(random_windows(InputShape(2, 8, 8), 1), shape=InputShape(1, 8, 8))
    with pytest.raises(ConfigError, match="geometry"):  # same image, another K
        reader.get_next()
    planar = ((image.transpose(0, 3, 1, 2), spikes) for image, spikes in random_windows(InputShape(1, 8, 8), 1))
    with pytest.raises(ConfigError, match="geometry"):  # the old (K, 3, H, W) layout
        WindowCalibrationReader(planar, shape=InputShape(1, 8, 8)).get_next()
    dicts = ({"image": b, "spikes": s} for b, s in random_windows(InputShape(1, 8, 8), 2))
    assert WindowCalibrationReader(dicts, shape=InputShape(1, 8, 8)).get_next()["image"].shape == (1, 8, 8, 3)


@pytest.mark.parametrize("kernel, padding, output_padding", [(5, 2, 1), (4, 1, 0), (3, 1, 1), (2, 0, 0)])
def test_subpixel_rewrite_equals_transposed_conv(kernel, padding, output_padding):
    from spikereveal.engines.subpixel import SubPixelConvTranspose2d, can_rewrite

    torch.manual_seed(kernel)
    deconv = torch.nn.ConvTranspose2d(6, 5, kernel, stride=2, padding=padding, output_padding=output_padding)
    assert can_rewrite(deconv)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        expected, got = deconv(x), SubPixelConvTranspose2d(deconv)(x)
    assert got.shape == expected.shape == (2, 5, 14, 18)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_subpixel_rewrite_leaves_other_layers_and_the_original_alone(model):
    from spikereveal.engines.subpixel import can_rewrite, rewrite_transposed_convs

    assert not can_rewrite(torch.nn.ConvTranspose2d(4, 4, 3, stride=3))
    assert not can_rewrite(torch.nn.ConvTranspose2d(4, 4, 5, stride=2, padding=2))  # output 2x - 1
    assert not can_rewrite(torch.nn.Conv2d(4, 4, 3))
    rewritten, count = rewrite_transposed_convs(model)
    assert count == 2 and isinstance(model.decoder1[0], torch.nn.ConvTranspose2d)
    blur = torch.rand(K, 3, IMAGE_H, IMAGE_W, generator=torch.Generator().manual_seed(21))
    spikes = (torch.rand(K, 21, IMAGE_H // 4, IMAGE_W // 4, generator=torch.Generator().manual_seed(22)) < 0.25).float()
    with torch.no_grad():  # the float network, before any rounding to uint8
        torch.testing.assert_close(rewritten(blur, spikes), model(blur, spikes), atol=1e-5, rtol=0)


def test_exported_graph_has_no_transposed_convs_unless_asked(model, exports, tmp_path):
    ops = {node.op_type for node in onnx.load(str(exports["fp32"])).graph.node}
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops
    assert read_onnx_metadata(exports["fp32"])["subpixel_decoder_layers"] == "2"
    kept = export_ldn(model, tmp_path / "deconv.onnx",
                      ExportConfig(k=K, height=IMAGE_H, width=IMAGE_W, subpixel_decoder=False))
    assert "ConvTranspose" in {node.op_type for node in onnx.load(str(kept)).graph.node}
    image, spikes = next(random_windows(SHAPE, 1, seed=22))
    expected = ort_run(exports["fp32"], image, spikes)
    assert_not_flat(expected)
    assert_within_lsb(ort_run(kept, image, spikes), expected, FP32_MAX_LSB, FP32_MAX_FRACTION)
