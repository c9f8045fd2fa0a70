"""demo: simulator -> replay -> serve on loopback in one call, on the tiny preset with a seeded random LDN."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("torch", reason="needs torch: the [train] extra")
pytest.importorskip("onnxruntime")
pytest.importorskip("zmq")
cv2 = pytest.importorskip("cv2")

from engines_support import save_random_checkpoint  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.demo import DEMO_FILE, DemoConfig, run_demo  # noqa: E402


@pytest.mark.slow
def test_demo_writes_video_frames_and_latency(tmp_path):
    checkpoint = save_random_checkpoint(tmp_path / "ldn.pt", seed=1)
    exposures = 4
    summary = run_demo(tmp_path / "demo", DemoConfig(preset="tiny", exposures=exposures, model=str(checkpoint), k=3, threads=1))
    out = tmp_path / "demo"
    serve = summary["serve"]
    assert serve["exposures_done"] == exposures and serve["exposures_dropped"] == 0 and serve["gaps"] == 0
    with open(out / "frames.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["exposure_index", "t_ns", "image"] and len(rows) == 1 + 3 * exposures
    first = cv2.imread(str(out / rows[1][2]))
    assert first is not None and first.shape == (160, 256, 3)  # the tiny preset's network grid
    if summary["video"] is not None:
        video = cv2.VideoCapture(str(out / summary["video"]))
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 * exposures
        assert int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 2 * 256
        video.release()
    written = json.loads((out / DEMO_FILE).read_text())
    latency = written["serve"]["latency"]
    for name in ("end_to_end_ms", "non_inference_work_ms", "inference_ms"):
        assert latency[name]["count"] == exposures and latency[name]["p99_ms"] >= latency[name]["p50_ms"] > 0
    assert summary["seconds"]["total"] < 60
    from spikereveal.stream.trace import load_trace

    trace = load_trace(out / summary["trace"])
    assert sorted(trace.exposure_id.tolist()) == list(range(exposures)) and set(trace.outputs.tolist()) == {3}
    for name in summary["plots"].values():
        assert (out / name).stat().st_size > 0


def test_demo_without_a_model_says_what_to_pass(tmp_path, monkeypatch):
    import spikereveal.engines.export as export

    monkeypatch.setattr(export, "default_model_path", lambda: None)

    monkeypatch.setattr(export, "default_onnx_path", lambda: None)
    with pytest.raises(ConfigError, match="--model"):
        run_demo(tmp_path / "demo", DemoConfig())
    assert not (tmp_path / "demo").exists()  # fails before simulating anything


@pytest.mark.parametrize("kwargs", [{"exposures": 1}, {"speed": 0}, {"engine": "tensorflow"}])
def test_demo_config_is_validated(kwargs):
    with pytest.raises(ConfigError):
        DemoConfig(**kwargs)


@pytest.mark.slow
def test_cli_demo_shows_streaming_progress_and_lists_the_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from cli_support import run_cli

    out = tmp_path / "demo"
    result = run_cli("demo", "--preset", "tiny", "--exposures", "2", "--threads", "1", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "demo: sharp exposures published" in result.stderr and "2/2" in result.stderr  # the bar, on stderr
    wrote = [line for line in result.stdout.splitlines() if line.startswith("demo: wrote")]
    assert len(wrote) == 1
    for name in ("latency_cdf.png", "timeline.png", "throughput.png"):
        assert f"{out}/{name}" in wrote[0] and (out / name).is_file()
