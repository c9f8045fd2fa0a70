"""ONNX export: checker, ORT == torch at fp32, fp16/int8 within tolerance, metadata, precision, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402

from engines_support import IMAGE_H, IMAGE_W, make_recording, psnr, random_ldn, save_random_checkpoint  # noqa: E402
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
from spikereveal.engines.runners import InputShape  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402

K = 3
SHAPE = InputShape(K, IMAGE_H, IMAGE_W)
# fp16 carries ~3 decimal digits; int8 Q/DQ of a random net: these bound what we measured with margin
FP16_ATOL = 5e-3
INT8_MIN_PSNR_DB = 35.0


def random_windows(shape: InputShape, count: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield (rng.random(shape.blur, dtype=np.float32),
               (rng.random(shape.spikes) < 0.25).astype(np.float32))


def torch_reference(model, blur, spikes):
    with torch.no_grad():
        return model(torch.from_numpy(blur), torch.from_numpy(spikes)).numpy()


def ort_run(path, blur, spikes):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["sharp"], {"blur": blur, "spikes": spikes})[0]


@pytest.fixture(scope="module")
def model():
    return random_ldn(seed=3)


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("exports")
    paths = {}
    for precision in ("fp32", "fp16", "int8"):
        config = ExportConfig(precision=precision, batch=K, height=IMAGE_H, width=IMAGE_W, calibration_windows=4)
        calibration = random_windows(SHAPE, 6, seed=7) if precision == "int8" else None
        paths[precision] = export_ldn(model, directory / f"{precision}.onnx", config, source_sha256="ab" * 32,
                                      calibration=calibration)
    return paths


def test_fp32_export_passes_checker_and_matches_torch(model, exports):
    proto = onnx.load(str(exports["fp32"]))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["blur", "spikes"]
    assert [o.name for o in proto.graph.output] == ["sharp"]
    blur, spikes = next(random_windows(SHAPE, 1, seed=11))
    np.testing.assert_allclose(ort_run(exports["fp32"], blur, spikes), torch_reference(model, blur, spikes),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_io_is_float32_and_graph_has_the_asked_precision(exports, precision):
    proto = onnx.load(str(exports[precision]))
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name
    assert onnx_graph_precision(proto) == precision
    onnx.checker.check_model(proto, full_check=True)


def test_fp16_within_tolerance_of_torch(model, exports):
    blur, spikes = next(random_windows(SHAPE, 1, seed=12))
    reference = torch_reference(model, blur, spikes)
    out = ort_run(exports["fp16"], blur, spikes)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=FP16_ATOL, rtol=0)
    assert not np.array_equal(out, ort_run(exports["fp32"], blur, spikes))  # really a different graph


def test_int8_within_tolerance_of_fp32(model, exports):
    blur, spikes = next(random_windows(SHAPE, 1, seed=13))
    reference = np.clip(torch_reference(model, blur, spikes), 0, 1)
    out = np.clip(ort_run(exports["int8"], blur, spikes), 0, 1)
    assert psnr(out, reference) >= INT8_MIN_PSNR_DB
    assert not np.array_equal(out, reference)


def test_metadata_round_trip(model, exports):
    meta = read_onnx_metadata(exports["int8"])
    assert meta["precision"] == "int8"
    assert meta["color_order"] == "bgr"
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
    for shape in (InputShape(2, 32, 48), InputShape(1, 64, 128)):
        blur, spikes = next(random_windows(shape, 1))
        np.testing.assert_allclose(ort_run(path, blur, spikes), torch_reference(model, blur, spikes), atol=1e-4)


def test_export_checkpoint_hashes_source_and_calibrates_on_recordings(tmp_path):
    checkpoint = save_random_checkpoint(tmp_path / "ldn.pt", seed=5)
    recording = make_recording(tmp_path / "rec", exposures=2)
    config = ExportConfig(precision="int8", batch=K, height=IMAGE_H, width=IMAGE_W, calibration_windows=8)
    path = export_checkpoint(checkpoint, tmp_path / "int8.onnx", config, calib_recordings=[recording])
    meta = read_onnx_metadata(path)
    assert meta["source_sha256"] == file_sha256(checkpoint)
    assert int(meta["calibration_windows"]) == 2  # every complete exposure window of the recording
    assert onnx_graph_precision(onnx.load(str(path))) == "int8"


def test_calibration_refuses_other_geometry(tmp_path):
    checkpoint = save_random_checkpoint(tmp_path / "ldn.pt")
    recording = make_recording(tmp_path / "rec", exposures=1)
    config = ExportConfig(precision="int8", batch=K, height=IMAGE_H * 2, width=IMAGE_W, calibration_windows=2)
    with pytest.raises(ConfigError, match="geometry"):
        export_checkpoint(checkpoint, tmp_path / "x.onnx", config, calib_recordings=[recording])


def test_config_errors(model, tmp_path):
    with pytest.raises(ConfigError, match="--height"):
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
    assert set(items[0]) == {"blur", "spikes"} and items[0]["blur"].dtype == np.float32


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
    dicts = ({"blur": b, "spikes": s} for b, s in random_windows(InputShape(1, 8, 8), 2))
    assert WindowCalibrationReader(dicts, shape=InputShape(1, 8, 8)).get_next()["blur"].shape == (1, 3, 8, 8)


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
    blur, spikes = next(random_windows(SHAPE, 1, seed=21))
    torch.testing.assert_close(torch.from_numpy(torch_reference(rewritten, blur, spikes)),
                               torch.from_numpy(torch_reference(model, blur, spikes)), atol=1e-5, rtol=0)


def test_exported_graph_has_no_transposed_convs_unless_asked(model, exports, tmp_path):
    ops = {node.op_type for node in onnx.load(str(exports["fp32"])).graph.node}
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops
    assert read_onnx_metadata(exports["fp32"])["subpixel_decoder_layers"] == "2"
    kept = export_ldn(model, tmp_path / "deconv.onnx",
                      ExportConfig(batch=K, height=IMAGE_H, width=IMAGE_W, subpixel_decoder=False))
    assert "ConvTranspose" in {node.op_type for node in onnx.load(str(kept)).graph.node}
    blur, spikes = next(random_windows(SHAPE, 1, seed=22))
    np.testing.assert_allclose(ort_run(kept, blur, spikes), ort_run(exports["fp32"], blur, spikes), atol=1e-4)
