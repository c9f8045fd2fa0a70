"""The runner interface contract, for every backend available here; the registry and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from spikereveal.engines.runners import (
    RUNNERS,
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
    config = ExportConfig(batch=SHAPE.batch, height=SHAPE.height, width=SHAPE.width)
    return {"fp32": export_ldn(model, directory / "fp32.onnx", config)}


def make(name, model, onnx_paths, **options):
    reason = runner_unavailable_reason(name)
    if reason is not None:
        pytest.skip(f"{name} runner unavailable here: {reason}")
    return create_runner(name, SHAPE, model=model, onnx_path=onnx_paths["fp32"],
                         options=RunnerOptions(threads=1, **options))


def window(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(SHAPE.blur, dtype=np.float32), (rng.random(SHAPE.spikes) < 0.3).astype(np.float32))


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_runner_contract(name, model, onnx_paths):
    runner = make(name, model, onnx_paths)
    assert isinstance(runner, Runner) and runner.name == name and runner.precision == "fp32"
    blur, spikes = window()
    with pytest.raises(RunnerError, match="load"):
        runner.infer(blur, spikes)
    with runner as loaded:
        assert loaded is runner and runner.loaded
        first = runner.infer(blur, spikes)
        assert first.shape == SHAPE.sharp and first.dtype == np.float32
        kept = first.copy()
        other = runner.infer(*window(seed=1))
        assert other is first  # the preallocated output buffer, overwritten in place
        assert not np.array_equal(other, kept)
        np.testing.assert_array_equal(runner.infer(blur, spikes), kept)  # deterministic
        # non-contiguous / float64 inputs are accepted (converted), wrong shapes are refused
        np.testing.assert_allclose(runner.infer(blur.astype(np.float64), spikes), kept, atol=1e-6)
        with pytest.raises(ConfigError, match="shape"):
            runner.infer(blur[:1], spikes[:1])
        description = runner.describe()
        assert description["runner"] == name and description["precision"] == "fp32"
    assert not runner.loaded
    runner.close()  # closing twice is harmless


def test_ort_matches_torch(model, onnx_paths):
    for name in ("ort", "torch"):
        if runner_unavailable_reason(name):
            pytest.skip(f"{name} unavailable")
    blur, spikes = window(seed=4)
    with make("ort", model, onnx_paths) as ort_runner, make("torch", model, onnx_paths) as torch_runner:
        np.testing.assert_allclose(ort_runner.infer(blur, spikes), torch_runner.infer(blur, spikes), atol=1e-4)


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
    assert set(RUNNERS) == {"ort", "torch", "trt"}
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
    assert SHAPE.spikes == (2, 21, 8, 12)
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

    code = ("import sys, spikereveal.engines.runners, spikereveal.engines.deblur, spikereveal.engines.cache, "
            "spikereveal.commands.export, spikereveal.commands.deblur, spikereveal.commands.build_engine, "
            "spikereveal.bench.engines; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
