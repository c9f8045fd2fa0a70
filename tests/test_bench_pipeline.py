"""bench pipeline: simulator -> replay -> serve on loopback, traced; report schema, independent measure, plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("zmq")
pytest.importorskip("cv2")

from spikereveal.bench.pipeline import PassThroughRunner, bench_pipeline  # noqa: E402
from spikereveal.bench.report import validate_report  # noqa: E402
from spikereveal.bench.trace import load_trace  # noqa: E402
from spikereveal.engines.runners import InputShape  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402

K = 3


@pytest.fixture(scope="module")
def pass_through_run(tmp_path_factory):
    """One short pass-through run on the tiny preset, shared by the tests that only read its report."""
    folder = tmp_path_factory.mktemp("pipeline")
    report = bench_pipeline("tiny", pass_through=True, exposures=8, warmup=2, k=K, trace_path=folder / "trace.npz",
                            plot_dir=folder / "plots")
    return report, folder


def test_pass_through_report_follows_the_schema(pass_through_run):
    report, _ = pass_through_run
    validate_report(report)
    validate_report(json.loads(json.dumps(report)))  # and survives JSON
    assert report["exposures"] == {"traced": 8, "warmup_excluded": 2, "measured": 6, "published": 6}
    assert report["end_to_end"]["count"] == 6 and report["stages"]["inference"]["count"] == 6
    assert report["drops"]["exposures_done"] == 8 and report["drops"]["traced_not_published"] == 0
    env = report["environment"]
    assert env["engine"] == "pass-through" and env["pass_through"] is True and env["random_weights"] is False
    pipeline = report["pipeline"]
    assert pipeline["engine"] == "pass-through" and pipeline["speed"] == 1.0 and pipeline["warmup"] == 2
    # no network: the inference span is the runner's bookkeeping only, far below the publish of K frames
    assert report["stages"]["inference"]["max_ms"] < report["end_to_end"]["p50_ms"]


def test_independent_measure_agrees_with_the_trace(pass_through_run):
    report, _ = pass_through_run
    independent = report["independent"]
    assert independent["exposures_sent"] == 8 and independent["frames_received"] == 8 * K
    assert independent["exposures_received_complete"] == 8
    assert independent["end_to_end"]["count"] == report["end_to_end"]["count"]
    # the publish stamp is taken once the send call returned: the frame may already be at the subscriber
    slack_ms = 1.0
    assert independent["wall_clock_s"] * 1e3 >= independent["trace_span_s"] * 1e3 - slack_ms > 0
    # real-time replay: the report starts at the exposure's scheduled end, the monitor at its actual send,
    # later by at most the replay's worst lag; both end at the last frame (published / received)
    assert report["end_to_end"]["origin"] == "exposure_end" and "exposure_delivery" in report["stages"]
    assert report["pipeline"]["clock"]["rig_to_host_offset_ns"] is not None
    lag_ms = report["pipeline"]["replay"]["max_lag_ns"] / 1e6
    difference_ms = report["end_to_end"]["mean_ms"] - independent["end_to_end"]["mean_ms"]
    assert -5.0 <= difference_ms <= lag_ms + slack_ms
    ratios = independent["agreement"]["ratios"]
    assert 0 < ratios["trace_span_over_wall_clock"] < 1.01
    for name, value in ratios.items():
        within = independent["agreement"]["within_target"][name]
        assert within == (abs(value - 1) <= independent["agreement"]["target"])


def test_trace_and_plots_are_written(pass_through_run):
    report, folder = pass_through_run
    trace = load_trace(folder / "trace.npz")
    assert trace.metadata["rig_to_host_offset_ns"] == report["pipeline"]["clock"]["rig_to_host_offset_ns"]
    assert sorted(trace.exposure_id.tolist()) == list(range(8)) and set(trace.outputs.tolist()) == {K}
    assert set(report["plots"]) == {"latency_cdf", "timeline", "throughput"}
    for path in report["plots"].values():
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_pass_through_runner_returns_the_blurry_frame_k_times():
    shape = InputShape(2, 8, 12)
    image = np.random.default_rng(0).integers(0, 256, shape.image, dtype=np.uint8)
    with PassThroughRunner(shape) as runner:
        sharp = runner.infer(image, np.zeros(shape.spikes, np.uint8))
        assert sharp.shape == (2, 8, 12, 3) and np.array_equal(sharp[0], image[0]) and np.array_equal(sharp[1], image[0])
        assert runner.describe()["runner"] == "pass-through"


@pytest.mark.parametrize("kwargs", [
    {"pass_through": True, "random_weights": True},
    {"model": "x.pt", "random_weights": True},
    {"pass_through": True, "exposures": 1},
    {"pass_through": True, "exposures": 4, "warmup": 4},
    {"pass_through": True, "speed": 0.0},
    {"preset": "huge", "pass_through": True},
    {"engine": "tensorflow", "pass_through": True},
])
def test_bad_settings_are_refused(kwargs, tmp_path):
    with pytest.raises(ConfigError):
        bench_pipeline(**{"preset": "tiny", **kwargs})


def test_without_a_model_it_says_to_pass_one(monkeypatch):
    import spikereveal.engines.export as export

    monkeypatch.setattr(export, "default_model_path", lambda: None)

    monkeypatch.setattr(export, "default_onnx_path", lambda: None)
    with pytest.raises(ConfigError, match="--model"):
        bench_pipeline("tiny", exposures=3)


@pytest.mark.slow
def test_random_weights_network_run_is_paced_to_inference(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    report = bench_pipeline("tiny", engine="ort", random_weights=True, exposures=4, warmup=1, k=K, threads=1)
    validate_report(report)
    pipeline = report["pipeline"]
    assert pipeline["inference_probe_ms"] > 0 and 0 < pipeline["speed"] <= 1
    expected = min(1.0, pipeline["exposure_period_ms"] / (1.5 * pipeline["inference_probe_ms"]))
    assert math.isclose(pipeline["speed"], expected)
    assert report["environment"]["random_weights"] is True and "random" in report["environment"]["model"]
    assert report["stages"]["inference"]["count"] == 3 and report["stages"]["inference"]["p50_ms"] > 0
    assert report["drops"]["exposures_done"] == 4


@pytest.mark.slow
def test_trace_overhead_runs_tracing_off_and_on():
    report = bench_pipeline("tiny", pass_through=True, exposures=6, warmup=1, k=K, trace_overhead=True)
    overhead = report["trace_overhead"]
    assert overhead["off"]["completions"] == overhead["on"]["completions"] == 5
    assert overhead["off"]["output_frames_per_s"] > 0 and overhead["on"]["output_frames_per_s"] > 0
    assert math.isclose(overhead["throughput_ratio_on_over_off"],
                        overhead["on"]["output_frames_per_s"] / overhead["off"]["output_frames_per_s"])
    assert overhead["recorder_micro_benchmark"]["per_exposure_on_us"] > 0
    assert 0 <= overhead["estimated_cost_fraction"] < 1


def test_cli_bench_pipeline(tmp_path, monkeypatch, capsys):
    from spikereveal import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bench",))
    out = tmp_path / "pipe.json"
    rc = cli.main(["bench", "pipeline", "--preset", "tiny", "--pass-through", "--exposures", "4", "--warmup", "1",
                   "--k", str(K), "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    validate_report(report)
    printed = capsys.readouterr().out
    assert "non-inference" in printed and "independent: wall clock" in printed
