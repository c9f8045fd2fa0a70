"""The default model ships inside the package: student and teacher checkpoints load with no download."""

import importlib.resources

import pytest

torch = pytest.importorskip("torch")

from spikereveal.engines.checkpoint import load_checkpoint  # noqa: E402
from spikereveal.engines.export import default_model_path  # noqa: E402
from spikereveal.engines.ldn import count_parameters  # noqa: E402


def test_default_student_is_installed_and_is_the_spec_network():
    path = default_model_path()
    assert path is not None, "spikereveal/models/ldn_default.pt is missing from the package"
    model, meta = load_checkpoint(path, expected_kind="ldn")
    assert meta["kind"] == "ldn"
    assert count_parameters(model) == 234_158
    assert meta["training"], "the shipped student records how it was trained"


@pytest.mark.parametrize("kind", ["bsn", "sr"])
def test_default_teacher_nets_are_installed(kind):
    resource = importlib.resources.files("spikereveal").joinpath(f"models/{kind}_default.pt")
    model, meta = load_checkpoint(str(resource), expected_kind=kind)
    assert meta["kind"] == kind
    assert meta["training"]


def test_shipped_onnx_is_the_export_of_the_shipped_checkpoint():
    import numpy as np

    from spikereveal.engines.cache import file_sha256
    from spikereveal.engines.export import default_onnx_path, read_onnx_metadata
    from spikereveal.engines.runners import InputShape, create_runner

    onnx_path, checkpoint = default_onnx_path(), default_model_path()
    assert onnx_path is not None, "spikereveal/models/ldn_default.onnx is missing from the package"
    meta = read_onnx_metadata(onnx_path)
    assert meta["source_sha256"] == file_sha256(checkpoint)
    assert meta["precision"] == "fp32"

    rng = np.random.default_rng(0)
    shape = InputShape(batch=3, height=64, width=96)
    blur = rng.random(shape.blur, dtype=np.float32)
    spikes = (rng.random(shape.spikes) < 0.2).astype(np.float32)
    model, _ = load_checkpoint(checkpoint, expected_kind="ldn")
    with torch.no_grad():
        expected = model(torch.from_numpy(blur), torch.from_numpy(spikes)).numpy()
    with create_runner("ort", shape, onnx_path=onnx_path) as runner:
        np.testing.assert_allclose(runner.infer(blur, spikes), expected, atol=1e-4)
