"""The default model ships inside the package: student and teacher checkpoints load with no download."""

import importlib.resources

import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

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
    importlib.import_module(f"spikereveal.training.{kind}")  # registers the teacher's checkpoint kind (run alone too)
    resource = importlib.resources.files("spikereveal").joinpath(f"models/{kind}_default.pt")
    model, meta = load_checkpoint(str(resource), expected_kind=kind)
    assert meta["kind"] == kind
    assert meta["training"]


def test_shipped_onnx_is_the_export_of_the_shipped_checkpoint():
    """The shipped ONNX is the deployed graph (uint8 image/spikes -> uint8 sharp) of the shipped checkpoint.

    When it is stale, re-export it from the checkpoint:
    ``spikereveal export --model core/models/ldn_default.pt --out core/models/ldn_default.onnx --dynamic --force``
    """
    import numpy as np

    from engines_support import assert_not_flat, assert_within_lsb, exposure_inputs
    from twins import reference_sharp8
    from spikereveal.engines.cache import file_sha256
    from spikereveal.engines.export import default_onnx_path
    from spikereveal.engines.onnx_metadata import read_onnx_metadata
    from spikereveal.engines.runners import InputShape, RunnerOptions, create_runner

    onnx_path, checkpoint = default_onnx_path(), default_model_path()
    assert onnx_path is not None, "spikereveal/models/ldn_default.onnx is missing from the package"
    meta = read_onnx_metadata(onnx_path)
    assert meta["source_sha256"] == file_sha256(checkpoint)
    assert meta["precision"] == "fp32"
    assert meta.get("inputs") == "image,spikes" and meta.get("io", "").startswith("uint8"), (
        f"{onnx_path} is an export of the old float interface (inputs {meta.get('inputs')}); re-export it")
    assert int(meta["spike_level"]) == 255
    assert (meta["batch"], meta["height"], meta["width"]) == ("dynamic",) * 3  # runs every rig's geometry

    model, _ = load_checkpoint(checkpoint, expected_kind="ldn")
    for shape, seed in ((InputShape(k=3, height=64, width=96), 0), (InputShape(k=2, height=96, width=64), 1)):
        image, spikes = exposure_inputs(shape, seed, spike_rate=0.2)
        expected = reference_sharp8(model, image, spikes)
        assert_not_flat(expected)
        with create_runner("ort", shape, onnx_path=onnx_path, options=RunnerOptions(threads=1)) as runner:
            out = runner.infer(image, spikes)
            assert out.dtype == np.uint8 and out.shape == shape.sharp
            # fp32 in both; another summation order may flip a value on a rounding boundary by 1 LSB
            assert_within_lsb(out, expected, max_lsb=1, max_fraction=1e-3)


def test_default_student_records_its_interpolation_provenance():
    """The shipped default is 0.25 x the official weights + 0.75 x the student fine-tuned from them
    (``spikereveal interpolate-weights``, training/README.md): both ends are named by sha256 and source."""
    _, meta = load_checkpoint(default_model_path(), expected_kind="ldn")
    blend = meta["training"]["interpolation"]
    assert blend["alpha"] == 0.75
    assert blend["start"]["source"].startswith("official S-SDM LDN weights imported from")
    assert blend["end"]["source"] == "spikereveal train ldn" and len(blend["end"]["sha256"]) == 64
    assert meta["config"]["spike_norm"] == "firing-gain" and meta["training"]["firing_gain_range"]
    assert meta["config"]["colour_anchor"] == "exposure-mean"  # chosen on the validation families (training/README.md)
