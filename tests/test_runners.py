"""The runner interface contract, for every backend available here; the registry and its errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from spikereveal.engines.runners import (
    INPUT_NAMES,
    IO_DTYPE,
    RUNNERS,
    SPIKE_LEVEL,
    InputShape,
    Runner,
    RunnerError,
    RunnerOptions,
    _import_backend,
    available_runners,
    create_runner,
    runner_class,
    runner_unavailable_reason,
)
from spikereveal.errors import ConfigError, MissingDependencyError

SHAPE = InputShape(2, 32, 48)


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("torch")
    from engines_support import random_ldn

    return random_ldn(seed=2)


@pytest.fixture(scope="module")
def onnx_paths(model, tmp_path_factory):
    pytest.importorskip("onnx")
    from spikereveal.engines.export import ExportConfig, export_ldn

    directory = tmp_path_factory.mktemp("runner-onnx")
    config = ExportConfig(k=SHAPE.k, height=SHAPE.height, width=SHAPE.width)
    return {"fp32": export_ldn(model, directory / "fp32.onnx", config)}


@pytest.fixture(scope="module")
def triton_url(onnx_paths, tmp_path_factory):
    """A loopback Triton (the bundled tritonserver) serving the fp32 export, as ``export --triton-repo``
    writes it: the triton runner's contract is checked against a real server."""
    from spikereveal.engines.triton_local import LocalTritonServer, loopback_repository, loopback_unavailable_reason
    from spikereveal.engines.triton_repo import TritonRepoConfig, write_triton_repository

    reason = loopback_unavailable_reason()
    if reason is not None:
        pytest.skip(f"triton runner: no loopback Triton here: {reason}")
    root = tmp_path_factory.mktemp("triton")
    write_triton_repository(onnx_paths["fp32"], root / "repo", TritonRepoConfig(gpus=()))
    with LocalTritonServer(loopback_repository(root / "repo", root / "loopback", threads=1)) as server:
        yield server.url


def make(name, model, onnx_paths, request=None, **options):
    reason = runner_unavailable_reason(name)
    if reason is not None:
        pytest.skip(f"{name} runner unavailable here: {reason}")
    if name == "triton":
        from spikereveal.engines.runners import TritonOptions

        options["triton"] = TritonOptions(url=request.getfixturevalue("triton_url"))
    return create_runner(name, SHAPE, model=model, onnx_path=onnx_paths["fp32"],
                         options=RunnerOptions(threads=1, **options))


def window(seed=0):
    from engines_support import exposure_inputs

    return exposure_inputs(SHAPE, seed, spike_rate=0.3)


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_runner_contract(name, model, onnx_paths, request):
    from engines_support import assert_not_flat

    runner = make(name, model, onnx_paths, request)
    assert isinstance(runner, Runner) and runner.name == name and runner.precision == "fp32"
    image, spikes = window()
    with pytest.raises(RunnerError, match="load"):
        runner.infer(image, spikes)
    with runner as loaded:
        assert loaded is runner and runner.loaded
        first = runner.infer(image, spikes)
        assert first.shape == SHAPE.sharp == (2, 32, 48, 3) and first.dtype == np.uint8
        assert_not_flat(first)
        kept = first.copy()
        other = runner.infer(*window(seed=1))
        assert other is first  # the preallocated output buffer, overwritten in place
        assert not np.array_equal(other, kept)
        np.testing.assert_array_equal(runner.infer(image, spikes), kept)  # deterministic
        # non-contiguous uint8 inputs are accepted (made contiguous), wrong shapes are refused
        np.testing.assert_array_equal(runner.infer(np.asfortranarray(image), np.asfortranarray(spikes)), kept)
        with pytest.raises(ConfigError, match="shape"):
            runner.infer(image, spikes[:1])
        with pytest.raises(ConfigError, match="shape"):
            runner.infer(image[:, :16], spikes)
        description = runner.describe()
        assert description["runner"] == name and description["precision"] == "fp32"
        assert description["shape"] == {"image": (1, 32, 48, 3), "spikes": (2, 21, 8, 12)}
    assert not runner.loaded
    runner.close()  # closing twice is harmless


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_infer_refuses_float_inputs(name, model, onnx_paths, request):
    """The deployed graph takes uint8 only: a float image or 0/1 float spikes (the old interface) is an error,
    never a silent conversion (0/1 float spikes cast to uint8 would read as almost no spike at all)."""
    image, spikes = window()
    with make(name, model, onnx_paths, request) as runner:
        with pytest.raises(ConfigError, match=r"image must be uint8.*got float32"):
            runner.infer(image.astype(np.float32) / 255, spikes)
        with pytest.raises(ConfigError, match=r"spikes must be uint8.*255 = one spike.*got float32"):
            runner.infer(image, (spikes > 0).astype(np.float32))
        with pytest.raises(ConfigError, match=r"image must be uint8.*got float64"):
            runner.infer(image.astype(np.float64), spikes)
        with pytest.raises(ConfigError, match="numpy array"):
            runner.infer(image.tolist(), spikes)


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_infer_writes_into_out(name, model, onnx_paths, request):
    first_inputs, second_inputs = window(seed=5), window(seed=6)
    with make(name, model, onnx_paths, request) as runner:
        expected_first = runner.infer(*first_inputs).copy()
        expected_second = runner.infer(*second_inputs).copy()
        assert not np.array_equal(expected_first, expected_second)
        out = np.full(SHAPE.sharp, 7, np.uint8)
        assert runner.infer(*first_inputs, out=out) is out
        np.testing.assert_array_equal(out, expected_first)
        # back to the runner's own buffer, then another caller buffer: each call writes where it was asked to
        own = runner.infer(*second_inputs)
        assert own is not out
        np.testing.assert_array_equal(own, expected_second)
        np.testing.assert_array_equal(out, expected_first)  # untouched by a call without out=
        other = np.zeros(SHAPE.sharp, np.uint8)
        assert runner.infer(*second_inputs, out=other) is other
        np.testing.assert_array_equal(other, expected_second)
        assert runner.infer(*first_inputs, out=out) is out
        np.testing.assert_array_equal(out, expected_first)
        np.testing.assert_array_equal(other, expected_second)
        bad_outs = {
            "float32": np.zeros(SHAPE.sharp, np.float32),
            "planar": np.zeros((2, 3, 32, 48), np.uint8),
            "one frame short": np.zeros((1, 32, 48, 3), np.uint8),
            "non-contiguous": np.zeros((2, 32, 48, 6), np.uint8)[..., ::2],
            "read-only": np.zeros(SHAPE.sharp, np.uint8),
            "a list": np.zeros(SHAPE.sharp, np.uint8).tolist(),
        }
        bad_outs["read-only"].flags.writeable = False
        for what, bad in bad_outs.items():
            with pytest.raises(ConfigError, match="out must be a writeable C-contiguous uint8"):
                runner.infer(*first_inputs, out=bad)
                pytest.fail(f"{what} out accepted")


def test_torch_runner_is_the_float_reference_rounded(model, onnx_paths):
    """The torch runner (ExposureLDN) is planar_to_bgr8(LDN.forward_exposure) of the same inputs as floats; the blur
    half of the head conv is summed apart, so a value on a rounding boundary may land 1 LSB off."""
    from engines_support import assert_not_flat, assert_within_lsb
    from twins import reference_sharp8

    with make("torch", model, onnx_paths) as runner:
        for seed in range(3):
            image, spikes = window(seed=20 + seed)
            expected = reference_sharp8(model, image, spikes)
            assert_not_flat(expected)
            assert_within_lsb(runner.infer(image, spikes), expected, max_lsb=1, max_fraction=1e-3)


def test_ort_matches_torch(model, onnx_paths):
    """fp32 ORT vs torch eager: the same uint8 graph with different kernels; float sums in another order can
    flip a value sitting on a rounding boundary by 1 LSB (measured: at most 1 value in 10^4)."""
    from engines_support import assert_not_flat, assert_within_lsb

    for name in ("ort", "torch"):
        if runner_unavailable_reason(name):
            pytest.skip(f"{name} unavailable")
    with make("ort", model, onnx_paths) as ort_runner, make("torch", model, onnx_paths) as torch_runner:
        for seed in (4, 7, 8):
            image, spikes = window(seed=seed)
            expected = torch_runner.infer(image, spikes)
            assert_not_flat(expected)
            assert_within_lsb(ort_runner.infer(image, spikes), expected, max_lsb=1, max_fraction=1e-3)


def test_triton_matches_ort_exactly(model, onnx_paths, request):
    """The same ONNX behind Triton (loopback: ONNX Runtime in its Python backend, the ort runner's session
    options): the hop must not change a single value."""
    with make("ort", model, onnx_paths) as ort_runner, make("triton", model, onnx_paths, request) as triton_runner:
        for seed in (4, 7):
            image, spikes = window(seed=seed)
            np.testing.assert_array_equal(triton_runner.infer(image, spikes), ort_runner.infer(image, spikes))


def test_ort_refuses_a_float_interface_export(model, tmp_path):
    """An export of the old float interface (inputs blur/spikes) is refused with 're-export', not run."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    path = tmp_path / "float.onnx"
    blur = torch.rand(2, 3, 32, 48)
    spikes = (torch.rand(2, 21, 8, 12) < 0.3).float()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as engines.export uses it
        torch.onnx.export(model, (blur, spikes), str(path), input_names=["blur", "spikes"], output_names=["sharp"],
                          opset_version=17, dynamo=False)
    runner = create_runner("ort", SHAPE, onnx_path=path, options=RunnerOptions(threads=1))
    with pytest.raises(RunnerError, match="re-export"):
        runner.load()


def test_ort_refuses_wrong_precision(onnx_paths):
    runner = create_runner("ort", SHAPE, onnx_path=onnx_paths["fp32"], precision="fp16")
    with pytest.raises(ConfigError, match="fp32 export but fp16"):
        runner.load()


def test_ort_runner_wrong_shape_for_static_export(onnx_paths):
    runner = create_runner("ort", InputShape(1, 32, 48), onnx_path=onnx_paths["fp32"],
                           options=RunnerOptions(warmup_runs=1))
    with pytest.raises(ConfigError, match="static export"):
        runner.load()


def test_registry_and_errors(tmp_path):
    assert set(RUNNERS) == {"ort", "torch", "trt", "triton"}
    assert runner_class("ort").name == "ort"
    with pytest.raises(ConfigError, match="unknown engine"):
        runner_class("tflite")
    with pytest.raises(ConfigError, match="does not exist"):
        create_runner("ort", SHAPE, onnx_path=tmp_path / "missing.onnx")
    with pytest.raises(MissingDependencyError, match="pip install"):
        _import_backend("spikereveal_no_such_backend", "a test feature", "trt")
    assert set(available_runners()) <= set(RUNNERS)
    assert "ort" in available_runners()


def test_torch_runner_is_fp32_only(model):
    with pytest.raises(ConfigError, match="fp32"):
        create_runner("torch", SHAPE, model=model, precision="int8")


def test_input_shape_and_options_validation():
    assert INPUT_NAMES == ("image", "spikes") and IO_DTYPE == np.uint8 and SPIKE_LEVEL == 255
    assert SHAPE.image == (1, 32, 48, 3)  # one camera frame per exposure, interleaved BGR
    assert SHAPE.spikes == (2, 21, 8, 12)
    assert SHAPE.sharp == (2, 32, 48, 3)
    assert SHAPE.as_dict() == {"image": (1, 32, 48, 3), "spikes": (2, 21, 8, 12)}
    assert not hasattr(SHAPE, "blur")
    with pytest.raises(ConfigError, match="multiples of 4"):
        InputShape(1, 30, 48)
    with pytest.raises(ConfigError):
        InputShape(0, 32, 48)
    with pytest.raises(ConfigError):
        RunnerOptions(threads=0)
    assert RunnerOptions(threads=3).resolved_threads() == 3
    assert RunnerOptions().resolved_threads() >= 1


def test_light_imports():
    """The CLI verbs and the runner registry import no heavy backend until a handler runs."""
    import subprocess
    import sys

    code = ("import sys, spikereveal.engines.runners, spikereveal.engines.choice, spikereveal.engines.inputs, spikereveal.engines.cache, "
            "spikereveal.commands.export, spikereveal.commands.deblur, spikereveal.commands.build_engine, "
            "spikereveal.bench.engines; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_failed_warm_up_closes_what_load_opened():
    """Runner.load: when a warm-up inference fails, the backend is closed again (nothing left loaded) and the
    error reaches the caller."""

    class FailingWarmUp(Runner):
        name = "failing"

        def __init__(self):
            super().__init__(InputShape(1, 8, 8), options=RunnerOptions(warmup_runs=2))
            self.opened = self.closed = 0

        def _load(self):
            self.opened += 1

        def _infer(self, image, spikes, out):
            raise RuntimeError("warm-up failed")

        def _close(self):
            self.closed += 1

    runner = FailingWarmUp()
    with pytest.raises(RuntimeError, match="warm-up failed"):
        runner.load()
    assert (runner.opened, runner.closed, runner.loaded) == (1, 1, False)
