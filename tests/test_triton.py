"""``--engine triton`` against a real Triton Inference Server: the tritonserver binary that the nvidia-pytriton
wheel bundles, started on loopback over the repository ``export --triton-repo`` writes (its Python backend runs
the same ONNX through ONNX Runtime, ``engines.triton_local``). Frames must be identical to ``--engine ort``;
an absent or restarted server is a counted, recovered condition."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient.grpc")
cv2 = pytest.importorskip("cv2")

from cli_support import assert_user_error, run_cli  # noqa: E402
from engines_support import SPIKE_H, SPIKE_W, make_recording, save_random_checkpoint  # noqa: E402
from spikereveal.engines.choice import EngineChoice  # noqa: E402
from spikereveal.engines.runners import InputShape, RunnerError, RunnerOptions, TritonOptions, create_runner  # noqa: E402
from spikereveal.engines.triton import TritonInferenceError, TritonRunner, classify_error  # noqa: E402
from spikereveal.engines.triton_local import (  # noqa: E402
    LocalTritonServer,
    free_port,
    loopback_repository,
    loopback_unavailable_reason,
)
from spikereveal.engines.triton_repo import TritonRepoConfig, write_triton_repository  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.stream.offline import DeblurConfig, deblur  # noqa: E402

K = 3
EXPOSURES = 4
SHAPE = InputShape(K, 4 * SPIKE_H, 4 * SPIKE_W)


# -- no server needed -------------------------------------------------------------------------------------------
class _FakeError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self._status, self._message = status, message

    def status(self):
        return self._status

    def message(self):
        return self._message


@pytest.mark.parametrize("status, message, kind", [
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", "unavailable"),
    ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", "rejected"),
    ("StatusCode.UNAVAILABLE", "Request timeout expired", "rejected"),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", "timeout"),
    ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'image'", "invalid"),
    ("StatusCode.NOT_FOUND", "Request for unknown model", "unavailable"),
])
def test_failures_are_classified(status, message, kind):
    assert classify_error(_FakeError(status, message)) == kind


class _Result:
    def __init__(self, array):
        self.array = array

    def as_numpy(self, name):
        if isinstance(self.array, Exception):
            raise self.array
        return self.array


def test_a_response_of_the_wrong_shape_is_refused_and_counted():
    runner = TritonRunner(SHAPE, options=RunnerOptions(triton=TritonOptions(url="127.0.0.1:1")))
    out = np.zeros(SHAPE.sharp, np.uint8)
    # a short answer makes tritonclient's own reshape raise (seen with a server whose Python backend
    # stub does not match the numpy it runs with: empty tensors)
    short = ValueError(f"cannot reshape array of size 0 into shape {SHAPE.sharp}")
    for bad in (None, np.zeros((K - 1, *SHAPE.sharp[1:]), np.uint8), np.zeros(SHAPE.sharp, np.float32), short):
        with pytest.raises(TritonInferenceError, match="frame refused"):
            runner._take(_Result(bad), out)
    assert runner.stats["bad_responses"] == runner.stats["failed"] == 4 and not out.any()


def test_triton_choices_are_checked():
    triton = RunnerOptions(triton=TritonOptions(url="h:8001"))
    with pytest.raises(ConfigError, match="--model/--onnx"):
        EngineChoice(engine="triton", model="x.pt", options=triton)
    with pytest.raises(ConfigError, match="--triton-url"):
        EngineChoice(engine="triton")
    with pytest.raises(ConfigError, match="for --engine triton"):
        EngineChoice(engine="ort", options=triton)
    with pytest.raises(ConfigError, match="without a scheme"):
        TritonOptions(url="grpc://h:8001")


def test_cli_triton_without_a_url_is_a_clear_error(tmp_path):
    result = run_cli("deblur", "--recording", tmp_path, "--out", tmp_path / "o", "--engine", "triton")
    assert_user_error(result, "--triton-url")


def test_an_unreachable_server_fails_load_with_a_clear_message():
    options = RunnerOptions(triton=TritonOptions(url=f"127.0.0.1:{free_port()}", connect_timeout_s=0.5))
    with pytest.raises(RunnerError, match="no ready model 'spikereveal_ldn'.*--triton-url"):
        create_runner("triton", SHAPE, options=options).load()


# -- a real server ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "ldn.pt", seed=7)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return make_recording(tmp_path_factory.mktemp("rec") / "rec", exposures=EXPOSURES, seed=3)


@pytest.fixture(scope="module")
def deblurred(recording, checkpoint, tmp_path_factory):
    """``deblur --engine ort`` of the recording, and its ONNX export (the model Triton will hold)."""
    out = tmp_path_factory.mktemp("deblur_ort")
    deblur(recording, out, EngineChoice(engine="ort", model=str(checkpoint), options=RunnerOptions(threads=1)),
           DeblurConfig(k=K, write_video=False))
    return out, next((out / "onnx").glob("*.onnx"))


@pytest.fixture(scope="module")
def loopback(deblurred, tmp_path_factory):
    """The repository ``export --triton-repo`` writes for the ONNX, as the bundled server runs it."""
    reason = loopback_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no loopback Triton here: {reason}")
    root = tmp_path_factory.mktemp("triton")
    write_triton_repository(deblurred[1], root / "repo", TritonRepoConfig(gpus=()))
    return loopback_repository(root / "repo", root / "loopback", threads=1)


@pytest.fixture(scope="module")
def server(loopback):
    with LocalTritonServer(loopback) as running:
        yield running


def _options(url, **kwargs):
    kwargs.setdefault("request_timeout_s", 30.0)  # a shared CI machine can stall a request for seconds
    return RunnerOptions(threads=1, triton=TritonOptions(url=url, **kwargs))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, SHAPE.image, dtype=np.uint8)
    spikes = (rng.random(SHAPE.spikes) < 0.25).astype(np.uint8) * 255
    return image, spikes


def test_runner_frames_are_identical_to_ort(server, deblurred):
    with create_runner("triton", SHAPE, options=_options(server.url)) as triton, \
            create_runner("ort", SHAPE, onnx_path=deblurred[1], options=RunnerOptions(threads=1)) as ort:
        assert triton.firing_gain_range == ort.firing_gain_range  # read from the model's parameters
        for seed in range(3):
            image, spikes = _inputs(seed)
            expected = ort.infer(image, spikes).copy()
            out = np.empty(SHAPE.sharp, np.uint8)
            assert triton.infer(image, spikes, out=out) is out
            np.testing.assert_array_equal(out, expected)
        tickets = [triton.submit(*_inputs(seed)) for seed in range(2)]  # two in flight
        results = [triton.wait(ticket).copy() for ticket in tickets]
        np.testing.assert_array_equal(results[1], ort.infer(*_inputs(1)))
        assert triton.stats["ok"] == 2 + 3 + 1 and triton.stats["failed"] == 0  # + the warm-up


def test_a_geometry_or_precision_the_server_does_not_hold_is_refused(server):
    with pytest.raises(ConfigError, match="this geometry needs"):
        create_runner("triton", InputShape(K, 64, 64), options=_options(server.url)).load()
    with pytest.raises(ConfigError, match="holds a fp32 export"):
        create_runner("triton", SHAPE, precision="fp16", options=_options(server.url)).load()


def _frames(folder):
    return {path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted((folder / "frames").glob("*.png"))}


def test_cli_deblur_engine_triton_is_identical_to_ort(server, recording, deblurred, tmp_path):
    result = run_cli("deblur", "--recording", recording, "--out", tmp_path / "t", "--engine", "triton",
                     "--triton-url", server.url, "--k", K, "--no-video")
    assert result.returncode == 0, result.stderr
    expected, got = _frames(deblurred[0]), _frames(tmp_path / "t")
    assert sorted(got) == sorted(expected) and len(got) == K * EXPOSURES
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    assert (tmp_path / "t" / "frames.csv").read_text() == (deblurred[0] / "frames.csv").read_text()


def test_serve_engine_triton_is_identical_to_deblur_ort(server, recording, deblurred, tmp_path):
    from test_serve import replay_into_serve

    from spikereveal.stream.config import load_serve_config

    spike, rgb, output = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    config = load_serve_config(
        None, spike_endpoint=spike, rgb_endpoint=rgb, output_endpoint=output, spike_height=SPIKE_H,
        spike_width=SPIKE_W, idle_timeout_s=1.0, sync={"k": K},
        engine={"engine": "triton", "triton_url": server.url, "threads": 1},
        worker={"save_dir": str(tmp_path / "serve"), "queue_capacity_jobs": 8})
    counters, _ = replay_into_serve(recording, config, speed=5.0)
    assert counters["exposures_done"] == EXPOSURES and counters["exposures_failed"] == 0
    assert counters["engine"] == "triton"
    assert counters["engine_stats"]["ok"] == EXPOSURES + 1 and counters["engine_stats"]["failed"] == 0  # + warm-up
    expected, got = _frames(deblurred[0]), _frames(tmp_path / "serve")
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.slow
def test_a_restarted_server_costs_the_exposures_in_between_and_nothing_else(loopback, deblurred, tmp_path):
    port = free_port()
    image, spikes = _inputs(5)
    with create_runner("ort", SHAPE, onnx_path=deblurred[1], options=RunnerOptions(threads=1)) as ort:
        expected = ort.infer(image, spikes).copy()
    first = LocalTritonServer(loopback, grpc_port=port).start()
    options = _options(f"127.0.0.1:{port}", request_timeout_s=2.0, retries=3, backoff_s=0.1, max_backoff_s=0.4)
    runner = create_runner("triton", SHAPE, options=options).load()
    try:
        np.testing.assert_array_equal(runner.infer(image, spikes), expected)
        first.close()  # Triton goes away
        out = np.zeros(SHAPE.sharp, np.uint8)
        with pytest.raises(TritonInferenceError, match="after 4 attempt"):
            runner.infer(image, spikes, out=out)
        assert not out.any()  # no partial or stale frame
        assert runner.stats["failed"] == 1 and runner.stats["retries"] == 3
        assert runner.stats["unavailable"] + runner.stats["timeouts"] == 4
        with LocalTritonServer(loopback, grpc_port=port):  # back on the same address
            np.testing.assert_array_equal(runner.infer(image, spikes), expected)  # recovered, same channel
        assert runner.stats["failed"] == 1
    finally:
        runner.close()
        first.close()


def test_serve_prints_the_engines_failures():
    from spikereveal.commands.serve import format_counters
    from spikereveal.stream.graph import COUNTER_KEYS

    counters = {key: 0 for key in COUNTER_KEYS}
    counters.update(engine="triton", exposures_failed=2,
                    engine_stats={"requests": 9, "ok": 7, "retries": 4, "timeouts": 0, "unavailable": 6,
                                  "rejected": 0, "failed": 2})
    assert "triton engine: requests=9, ok=7, retries=4" in format_counters(counters)
    counters["engine_stats"] = {"requests": 9, "ok": 9, "retries": 0, "failed": 0}
    assert "triton engine" not in format_counters(counters)
