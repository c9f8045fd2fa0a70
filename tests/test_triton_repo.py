"""The Triton model repository (``spikereveal export --triton-repo``): written, then parsed back as Triton's own
ModelConfig message (tritonclient's model_config.proto) and its fields checked."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from cli_support import assert_user_error, run_cli  # noqa: E402
from spikereveal.commands._types import ENGINE_CHOICES  # noqa: E402
from spikereveal.engines.export import default_onnx_path  # noqa: E402
from spikereveal.engines.runners import RUNNERS  # noqa: E402
from spikereveal.engines.triton_repo import (  # noqa: E402
    TritonRepoConfig,
    parse_config_pbtxt,
    write_triton_repository,
)
from spikereveal.errors import ConfigError, FormatError  # noqa: E402

MC = model_config_pb2.ModelConfig


def _shipped_onnx() -> Path:
    path = default_onnx_path()
    if path is None:
        pytest.skip("no shipped ONNX export installed")
    return path


def test_every_runner_is_an_engine_choice_of_the_cli():
    assert set(ENGINE_CHOICES) == set(RUNNERS)


def test_written_config_parses_back_with_its_fields(tmp_path):
    config = TritonRepoConfig(model="ldn_a", version=3, gpus=(), instances_per_gpu=2, max_queue_size=5,
                              queue_timeout_us=250_000)
    written = write_triton_repository(_shipped_onnx(), tmp_path / "repo", config)
    assert written["onnx"] == tmp_path / "repo" / "ldn_a" / "3" / "model.onnx" and written["onnx"].is_file()
    parsed = parse_config_pbtxt(written["config"])
    assert parsed.name == "ldn_a" and parsed.backend == "onnxruntime" and parsed.platform == ""
    assert parsed.max_batch_size == 0 and parsed.default_model_filename == "model.onnx"
    assert parsed.version_policy.latest.num_versions == 1
    tensors = {t.name: (t.data_type, list(t.dims)) for t in list(parsed.input) + list(parsed.output)}
    uint8 = model_config_pb2.TYPE_UINT8
    # the shipped export is dynamic: -1 where the ONNX axis is
    assert tensors == {"image": (uint8, [1, -1, -1, 3]), "spikes": (uint8, [-1, 21, -1, -1]),
                       "sharp": (uint8, [-1, -1, -1, 3])}
    assert [o.name for o in parsed.output] == ["sharp"]
    (group,) = parsed.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 2 and not group.gpus
    policy = parsed.dynamic_batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.default_timeout_microseconds == 250_000 and policy.max_queue_size == 5
    assert not policy.allow_timeout_override
    assert not parsed.dynamic_batching.preferred_batch_size and parsed.dynamic_batching.max_queue_delay_microseconds == 0
    params = {key: value.string_value for key, value in parsed.parameters.items()}
    assert params["spikereveal.precision"] == "fp32" and params["spikereveal.batch"] == "dynamic"
    assert len(params["spikereveal.source_sha256"]) == 64


def test_instances_per_gpu_and_tensorrt_plan(tmp_path):
    onnx = _shipped_onnx()
    every = parse_config_pbtxt(write_triton_repository(onnx, tmp_path / "a", TritonRepoConfig())["config"])
    (group,) = every.instance_group  # no list: Triton puts `count` instances on every GPU it sees
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and not group.gpus and group.count == 1
    listed = write_triton_repository(onnx, tmp_path / "b", TritonRepoConfig(backend="tensorrt_plan", gpus=(0, 2)))
    parsed = parse_config_pbtxt(listed["config"])
    assert [list(g.gpus) for g in parsed.instance_group] == [[0], [2]]
    assert parsed.platform == "tensorrt_plan" and parsed.default_model_filename == "model.plan"
    assert listed["plan"] == tmp_path / "b" / "spikereveal_ldn" / "1" / "model.plan" and not listed["plan"].exists()
    assert listed["onnx"].is_file()  # what build-engine builds the plan from, on the target


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "tensorflow"}, "backend must be one of"),
    ({"model": "a b"}, "model name"),
    ({"version": 0}, "version"),
    ({"gpus": (0, 0)}, "distinct"),
    ({"backend": "tensorrt_plan", "gpus": ()}, "GPUs only"),
])
def test_bad_repository_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TritonRepoConfig(**kwargs)


def test_an_existing_version_is_not_overwritten(tmp_path):
    onnx = _shipped_onnx()
    write_triton_repository(onnx, tmp_path, TritonRepoConfig(gpus=()))
    with pytest.raises(ConfigError, match="another --triton-version"):
        write_triton_repository(onnx, tmp_path, TritonRepoConfig(gpus=()))
    write_triton_repository(onnx, tmp_path, TritonRepoConfig(gpus=(), version=2))  # a new version beside it
    assert sorted(p.name for p in (tmp_path / "spikereveal_ldn").iterdir()) == ["1", "2", "config.pbtxt"]


def test_a_corrupt_config_is_a_format_error(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_size: 0\nno_such_field: 3\n')
    with pytest.raises(FormatError, match="not a valid Triton model configuration"):
        parse_config_pbtxt(path)
    assert isinstance(parse_config_pbtxt('name: "x"'), MC)


@pytest.mark.slow
def test_cli_export_writes_a_static_repository(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from engines_support import save_random_checkpoint

    checkpoint = save_random_checkpoint(tmp_path / "ldn.pt", seed=1)
    result = run_cli("export", "--model", checkpoint, "--triton-repo", tmp_path / "repo", "--k", "3",
                     "--image-height", "64", "--image-width", "96", "--triton-gpus", "0,1", "--triton-queue", "4")
    assert result.returncode == 0, result.stderr
    parsed = parse_config_pbtxt(tmp_path / "repo" / "spikereveal_ldn" / "config.pbtxt")
    dims = {t.name: list(t.dims) for t in list(parsed.input) + list(parsed.output)}
    assert dims == {"image": [1, 64, 96, 3], "spikes": [3, 21, 16, 24], "sharp": [3, 64, 96, 3]}
    assert [list(g.gpus) for g in parsed.instance_group] == [[0], [1]]
    assert parsed.dynamic_batching.default_queue_policy.max_queue_size == 4
    assert "config.pbtxt" in result.stdout
    again = run_cli("export", "--model", checkpoint, "--triton-repo", tmp_path / "repo", "--k", "3",
                    "--image-height", "64", "--image-width", "96")
    assert_user_error(again, "exists", "--triton-version")
    bad = run_cli("export", "--model", checkpoint, "--triton-repo", tmp_path / "r2", "--k", "3",
                  "--image-height", "64", "--image-width", "96", "--triton-gpus", "zero")
    assert_user_error(bad, "--triton-gpus")
